import collections

import numpy as np
import pytest

from prm.envs import expert as X
from prm.envs import protocol as P
from prm.envs.retrieval.bm25 import BM25Retriever
from prm.envs.synthetic_world import World, WorldConfig

NO_NOISE = X.ExpertConfig(0.0, 0.0, 0.0, 0.0)


class OracleRetriever:
    """Ranks first the passage whose title is the longest entity name inside the query."""

    def __init__(self, world: World):
        self.rows = world.corpus_rows()
        self.titles = [world.passages[r["id"]][0] for r in self.rows]

    def retrieve(self, queries, topk):
        out = []
        for query in queries:
            named = [i for i, t in enumerate(self.titles) if t in query]
            best = max(named, key=lambda i: len(self.titles[i]), default=None)
            order = ([best] if best is not None else []) + [
                i for i in range(len(self.rows)) if i != best
            ]
            out.append(
                [{**self.rows[i], "score": float(topk - r)} for r, i in enumerate(order[:topk])]
            )
        return out


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=5))


def _by_type(demos):
    groups = collections.defaultdict(list)
    for d in demos:
        groups[d.question.qtype].append(d)
    return groups


def _queries(demo):
    return [P.parse_step(s.text).content for s in demo.segments if s.trainable][:-1]


def test_noise_free_expert_is_perfect_with_an_oracle_retriever(world):
    questions = world.split("dev")
    demos = X.generate_demonstrations(world, questions, OracleRetriever(world), NO_NOISE)
    assert {d.question.qtype for d in demos} == {"single", "bridge", "comparison", "compositional"}
    for demo in demos:
        assert demo.em == 1.0 and demo.f1 == 1.0, demo.question
        # One precise search per hop, then the answer.
        assert len(_queries(demo)) == len(demo.question.hops)
        text = "".join(s.text for s in demo.segments)
        for hop in demo.question.hops:
            title, passage = world.passages[hop.doc_id]
            assert f'(Title: "{title}") {passage}' in text


def test_noise_free_expert_with_bm25_finds_every_gold_passage(world):
    questions = [q for q in world.split("test") if q.qtype in ("single", "bridge", "comparison")]
    demos = X.generate_demonstrations(
        world, questions, BM25Retriever(world.corpus_rows()), NO_NOISE
    )
    for demo in demos:
        # Precise queries retrieve each hop's passage at the first try with BM25.
        assert len(_queries(demo)) == len(demo.question.hops)
        observations = "".join(s.text for s in demo.segments if not s.trainable)
        for hop in demo.question.hops:
            assert world.passages[hop.doc_id][1] in observations
        assert demo.em == 1.0


def test_demonstrations_tokenize_into_masked_steps(world):
    (demo,) = X.generate_demonstrations(
        world, world.split("dev")[:1], OracleRetriever(world), NO_NOISE
    )
    assert not demo.segments[0].trainable
    assert demo.segments[0].text.startswith(P.COMPACT_TEMPLATE.split("{")[0])
    steps = [s.step_index for s in demo.segments if s.trainable]
    assert steps == list(range(len(steps)))
    assert all(not s.trainable for s in demo.segments if "<information>" in s.text)


def test_premature_answers_hurt(world):
    questions = [q for q in world.split("dev") if q.qtype == "bridge"]
    always_early = X.ExpertConfig(0.0, 0.0, 0.0, premature_answer_rate=1.0)
    demos = X.generate_demonstrations(world, questions, OracleRetriever(world), always_early)
    # It answers at once with the question's own entity: never the bridge's attribute.
    assert all(len(d.segments) == 2 for d in demos)
    assert np.mean([d.em for d in demos]) < 0.05


def test_redundant_and_vague_searches_add_turns_but_recover(world):
    questions = [q for q in world.split("dev") if q.qtype == "bridge"]
    noisy = X.ExpertConfig(
        vague_query_rate=1.0,
        wrong_query_rate=0.0,
        redundant_search_rate=1.0,
        premature_answer_rate=0.0,
    )
    oracle = OracleRetriever(world)
    demos = X.generate_demonstrations(world, questions, oracle, noisy)
    for demo in demos:
        queries = _queries(demo)
        first_subject = world.entities[demo.question.hops[0].subject].name
        assert first_subject not in queries[0]  # vague: the entity is only partly named
        assert len(queries) > len(demo.question.hops)
        assert any(a == b for a, b in zip(queries, queries[1:]))  # a repeated query
    clean = X.generate_demonstrations(world, questions, oracle, NO_NOISE)
    assert np.mean([d.em for d in demos]) <= np.mean([d.em for d in clean]) == 1.0


def test_demonstrations_are_deterministic_and_batch_independent(world):
    questions = world.split("dev")[:20]
    oracle = OracleRetriever(world)
    config = X.ExpertConfig(0.3, 0.3, 0.3, 0.1, seed=4)
    a = X.generate_demonstrations(world, questions, oracle, config)
    b = X.generate_demonstrations(world, questions[5:8], oracle, config)
    assert [d.segments for d in a[5:8]] == [d.segments for d in b]
    c = X.generate_demonstrations(
        world, questions, oracle, X.ExpertConfig(0.3, 0.3, 0.3, 0.1, seed=5)
    )
    assert [d.segments for d in a] != [d.segments for d in c]


def test_turn_budget_forces_an_answer(world):
    question = next(q for q in world.split("dev") if len(q.hops) == 4)
    (demo,) = X.generate_demonstrations(
        world,
        [question],
        OracleRetriever(world),
        NO_NOISE,
        P.EnvConfig(max_turns=2, max_obs_tokens=None),
    )
    actions = [P.parse_step(s.text).kind for s in demo.segments if s.trainable]
    assert actions == ["search", "search", "answer"]
    assert demo.em == 0.0


def test_gold_steps(world):
    question = next(q for q in world.questions if q.qtype == "bridge")
    steps = X.gold_steps(world, question, think=True)
    assert len(steps) == 3
    assert steps[-1].endswith(f"<answer> {question.answers[0]} </answer>")
    assert steps[0].startswith("<think> I need ")
    assert all(P.parse_step(s).kind == "search" for s in steps[:2])


def test_bad_noise_rate_raises():
    with pytest.raises(ValueError, match="vague_query_rate"):
        X.ExpertConfig(vague_query_rate=-0.1)
