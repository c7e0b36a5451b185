"""The reference judge's rules, by hand on a five-entity world with a scripted retriever, then
on a generated world with its BM25 index."""

import types

import pytest

from prm.envs.expert import gold_steps
from prm.envs.protocol import parse_step
from prm.envs.synthetic_world import Entity, Hop, Question
from prm.judges import JudgeRequest, ReferenceJudge, make_judge, think_text
from tests.helpers.worlds import SMALL_VOCAB, SMALL_WORLD_KNOBS


def entity(eid, kind, name, *aliases, **facts):
    return Entity(eid, kind, name, (name, *aliases), facts)


ENTITIES = {
    e.id: e
    for e in [
        entity("person_000", "person", "Varo Kelin", "V. Kelin", born_in="city_000"),
        entity("person_001", "person", "Vara Kelin"),
        entity("city_000", "city", "Tamsby", country="country_000"),
        entity("country_000", "country", "Rovia"),
        entity("company_000", "company", "Gusto Labs", "Gusto", founder="person_000"),
    ]
}
BRIDGE = Question(
    "q-bridge",
    "What is the birthplace of the founder of Gusto Labs?",
    ("Tamsby",),
    "bridge",
    (
        Hop("company_000", "founder", "person_000", "company_000"),
        Hop("person_000", "born_in", "city_000", "person_000"),
    ),
    "train",
)
COMPARISON = Question(
    "q-comparison",
    "Who was born first, Varo Kelin or Vara Kelin?",
    ("Varo Kelin", "V. Kelin"),
    "comparison",
    (
        Hop("person_000", "birth_year", 1950, "person_000"),
        Hop("person_001", "birth_year", 1962, "person_001"),
    ),
    "train",
)
WORLD = types.SimpleNamespace(entities=ENTITIES, questions=[BRIDGE, COMPARISON])

# The scripted retriever's top results; any other query finds only the Rovia passage.
TOP = {
    "founder of Gusto Labs": ["company_000", "country_000"],
    "birthplace of Varo Kelin": ["person_000", "person_001"],
    "birthplace of Kelin": ["person_001", "country_000"],  # the twin, not the gold passage
    "birth year of Varo Kelin": ["person_000"],
    "birth year of Vara Kelin": ["person_001"],
}


class ScriptedRetriever:
    def __init__(self):
        self.calls = []

    def retrieve(self, queries, topk):
        self.calls.append(list(queries))
        return [
            [{"id": i, "contents": "", "score": 1.0} for i in TOP.get(q, ["country_000"])[:topk]]
            for q in queries
        ]


@pytest.fixture
def judge():
    return ReferenceJudge(WORLD, ScriptedRetriever())


def search(think, query, step=0, previous=(), question=BRIDGE):
    return JudgeRequest(
        context="",
        think=think,
        kind="search",
        content=query,
        step_index=step,
        golden_answers=question.answers,
        question_id=question.id,
        previous_queries=tuple(previous),
    )


def answer(think, text, step, previous=(), question=BRIDGE):
    return JudgeRequest(
        context="",
        think=think,
        kind="answer",
        content=text,
        step_index=step,
        golden_answers=question.answers,
        question_id=question.id,
        previous_queries=tuple(previous),
    )


AFTER_HOP_1 = ["founder of Gusto Labs"]
AFTER_BOTH = ["founder of Gusto Labs", "birthplace of Varo Kelin"]

# (request, reasoning score, query or answer score), each worked out from the rules by hand.
CASES = [
    # Step 0 of the bridge question: hop 1 (Gusto Labs, founder) is next.
    (search("I need the founder of Gusto Labs.", "founder of Gusto Labs"), 1, 1),
    # Names hop 2 before hop 1: a chain entity but not the next hop. The query is useless.
    (search("I need the birthplace of Varo Kelin.", "weather today"), 0, -1),
    # The answer entity as a query retrieves no gold passage and names no needed subject.
    (search("Let me look up the weather.", "Tamsby"), -1, -1),
    # Step 1, hop 1 retrieved: hop 2 (Varo Kelin, birthplace) is next; the alias counts.
    (search("I need the birthplace of V. Kelin.", "birthplace of Varo Kelin", 1, AFTER_HOP_1), 1, 1),
    # Hop 1's query again: its gold passage is already retrieved (redundant).
    (search("I need the founder of Gusto Labs.", "founder of Gusto Labs", 1, AFTER_HOP_1), 0, 0),
    # The twin's name: the next relation without the next entity; a vague query sharing "Kelin".
    (search("I need the birthplace of Vara Kelin.", "birthplace of Kelin", 1, AFTER_HOP_1), 0, 0),
    # Whole words only: "Kelinsson" does not name Varo Kelin.
    (search("Who is Varo Kelinsson?", "weather today", 1, AFTER_HOP_1), -1, -1),
    # Everything retrieved: the right next thing is the answer.
    (search("I need the birthplace of Varo Kelin.", "birthplace of Varo Kelin", 2, AFTER_BOTH), 0, 0),
    (answer("Varo Kelin was born in Tamsby.", "Tamsby", 2, AFTER_BOTH), 1, 1),
    (answer("Varo Kelin was born in Tamsby.", "Tamsby city", 2, AFTER_BOTH), 1, 0),  # F1 2/3
    (answer("", "Rovia", 2, AFTER_BOTH), -1, -1),
    # A premature answer: hop 2 still needed; the think names the answer, a chain entity.
    (answer("It is Tamsby.", "Tamsby", 1, AFTER_HOP_1), 0, 1),
    # Comparison: both hops are next until retrieved, in either order.
    (search("I need the birth year of Vara Kelin.", "x", 0, (), COMPARISON), 1, -1),
    (
        search(
            "Varo Kelin: 1950. I need the birth year of Vara Kelin.",
            "birth year of Vara Kelin",
            1,
            ["birth year of Varo Kelin"],
            COMPARISON,
        ),
        1,
        1,
    ),
    # The year 1950 is a hop object, so "vaguely relevant"; the query repeats a retrieved hop.
    (
        search("It was 1950.", "birth year of Varo Kelin", 1, ["birth year of Varo Kelin"], COMPARISON),
        0,
        0,
    ),
    (answer("So Varo Kelin.", "V. Kelin", 2, ["birth year of Varo Kelin", "birth year of Vara Kelin"], COMPARISON), 1, 1),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(CASES)))
def test_rules_by_hand(judge, case):
    request, reasoning, action = CASES[case]
    (judgement,) = judge.judge([request])
    assert (judgement.reasoning, judgement.action) == (reasoning, action)
    assert not judgement.reasoning_invalid and not judgement.action_invalid


def test_a_batch_scores_each_request_as_alone_with_one_retrieval_call(judge):
    judgements = judge.judge([c[0] for c in CASES])
    assert [(j.reasoning, j.action) for j in judgements] == [(c[1], c[2]) for c in CASES]
    assert len(judge.retriever.calls) == 1
    assert len(judge.retriever.calls[0]) == len(set(judge.retriever.calls[0]))
    assert judge.stats["judgements"] == 2 * len(CASES)


def test_bad_requests_raise(judge):
    with pytest.raises(ValueError, match="question_id"):
        judge.judge([JudgeRequest("", "t", "search", "q", 0)])
    with pytest.raises(KeyError, match="not in the judge's world"):
        judge.judge([JudgeRequest("", "t", "search", "q", 0, question_id="q-elsewhere")])
    with pytest.raises(ValueError, match="error_rate"):
        ReferenceJudge(WORLD, ScriptedRetriever(), error_rate=1.5)


def many_requests(n=500):
    return [search(f"thought {i}", f"query {i % 7}", i % 4) for i in range(n)]


def test_judge_error_rate_and_determinism():
    requests = many_requests()
    clean = ReferenceJudge(WORLD, ScriptedRetriever()).judge(requests)
    noisy_judge = ReferenceJudge(WORLD, ScriptedRetriever(), error_rate=0.3, seed=7)
    noisy = noisy_judge.judge(requests)
    changed = sum(
        (c.reasoning != n.reasoning) + (c.action != n.action) for c, n in zip(clean, noisy)
    )
    assert changed == noisy_judge.stats["corrupted"]
    # 1000 scores, p = 0.3: mean 300, std 14.5; 5 std either side.
    assert 227 <= changed <= 373
    # Same seed: the same scores in another judge, in another batch order, one at a time.
    again = ReferenceJudge(WORLD, ScriptedRetriever(), error_rate=0.3, seed=7)
    assert again.judge(requests[::-1])[::-1] == noisy
    assert again.judge(requests[3:4]) == noisy[3:4]
    other_seed = ReferenceJudge(WORLD, ScriptedRetriever(), error_rate=0.3, seed=8)
    assert other_seed.judge(requests) != noisy


def test_error_rate_one_always_picks_one_of_the_two_wrong_values():
    requests = many_requests(200)
    clean = ReferenceJudge(WORLD, ScriptedRetriever()).judge(requests)
    flipped = ReferenceJudge(WORLD, ScriptedRetriever(), error_rate=1.0).judge(requests)
    replacements = {(c.reasoning, f.reasoning) for c, f in zip(clean, flipped)}
    assert all(old != new for old, new in replacements)
    # The clean reasoning scores are all -1 ("thought i"); both other values are drawn.
    assert {new for _, new in replacements} == {0, 1}


@pytest.fixture(scope="module")
def small_world_judge(tmp_path_factory):
    cache = tmp_path_factory.mktemp("worlds")
    return make_judge(
        {"name": "reference", "world": SMALL_WORLD_KNOBS, "cache_dir": str(cache)},
        vocab_size=SMALL_VOCAB,
    )


def test_the_noise_free_expert_scores_top_marks_where_its_steps_are_needed(small_world_judge):
    """With BM25: each question's first expert step names its next hop and retrieves it, and the
    expert's answer is exact."""
    judge = small_world_judge
    requests = []
    for question in judge.world.questions:
        steps = gold_steps(judge.world, question, think=True)
        first, last = parse_step(steps[0]), parse_step(steps[-1])
        queries = tuple(parse_step(s).content for s in steps[:-1])
        requests.append(search(think_text(steps[0]), first.content, 0, (), question))
        requests.append(answer(think_text(steps[-1]), last.content, 0, queries, question))
    judgements = judge.judge(requests)
    firsts, answers = judgements[0::2], judgements[1::2]
    assert all((j.reasoning, j.action) == (1, 1) for j in firsts)
    assert all(j.action == 1 for j in answers)
    # A chain's final think states the last fact, which names the answer (a comparison's states
    # the later year, not the answer).
    chains = [q.qtype != "comparison" for q in judge.world.questions]
    assert all(j.reasoning == 1 for j, chain in zip(answers, chains) if chain)
    assert sum(chains) > 20
