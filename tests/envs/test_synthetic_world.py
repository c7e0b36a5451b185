import collections
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.envs.synthetic_world import RELATIONS, SPLITS, World, WorldConfig
from tests.helpers.worlds import SMALL_WORLD_KNOBS


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(seed=7))


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = World(WorldConfig(seed=3)), World(WorldConfig(seed=3)), World(WorldConfig(seed=4))
    assert a.corpus_rows() == b.corpus_rows()
    assert a.question_rows("test") == b.question_rows("test")
    assert a.corpus_rows() != c.corpus_rows()


def test_every_question_is_answerable_from_its_gold_passages(world):
    for q in world.questions:
        for hop in q.hops:
            title, text = world.passages[hop.doc_id]
            subject = world.entities[hop.subject]
            assert title == subject.name
            # The passage states the fact: it names the object (entity name or year).
            assert world.name(hop.object) in text, (q.text, text)
            assert subject.facts[hop.relation] == hop.object
        assert set(q.gold_doc_ids) == {h.doc_id for h in q.hops}


def test_chains_are_consistent_with_question_types(world):
    hop_counts = {"single": {1}, "bridge": {2}, "comparison": {2}, "compositional": {3, 4}}
    for q in world.questions:
        assert len(q.hops) in hop_counts[q.qtype], q
        if q.qtype == "comparison":
            a, b = q.hops
            assert a.relation == b.relation and a.subject != b.subject
            earlier = a if a.object < b.object else b
            assert q.answers[0] == world.entities[earlier.subject].name
            assert q.bridge_entities == ()
        else:
            for hop, nxt in zip(q.hops, q.hops[1:]):
                assert hop.object == nxt.subject  # the bridge entity starts the next hop
                assert RELATIONS[hop.relation][1] == RELATIONS[nxt.relation][0]
            assert q.answers[0] == world.name(q.hops[-1].object)
            assert q.bridge_entities == tuple(h.object for h in q.hops[:-1])
            # The question names only the start entity; bridges must be found by search.
            assert world.entities[q.hops[0].subject].name in q.text


def test_splits_are_disjoint_and_cover_all_questions(world):
    texts = {s: {q.text for q in world.split(s)} for s in ("train", "dev", "test")}
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    assert sum(len(t) for t in texts.values()) == len(world.questions)
    assert len({q.id for q in world.questions}) == len(world.questions)
    n = len(world.questions)
    # 0.8 / 0.1 / 0.1 fractions, rounded.
    assert len(world.split("train")) == round(0.8 * n)
    assert {q.qtype for q in world.split("test")} == {
        "single",
        "bridge",
        "comparison",
        "compositional",
    }


def test_distractors_with_confusable_names_exist(world):
    persons = [e for e in world.entities.values() if e.kind == "person"]
    families = collections.Counter(p.name.split(" ")[1] for p in persons)
    assert max(families.values()) >= 3  # several people share a family name
    names = [e.name for e in world.entities.values()]

    def one_letter_apart(a: str, b: str) -> bool:
        return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1

    twins = sum(one_letter_apart(a, b) for i, a in enumerate(names) for b in names[i + 1 :])
    assert twins >= 10
    no_twins = World(WorldConfig(seed=7, confusable_rate=0.0))
    # Without twins, only chance collisions of random syllables remain.
    other = [e.name for e in no_twins.entities.values()]
    assert sum(one_letter_apart(a, b) for i, a in enumerate(other) for b in other[i + 1 :]) < twins


def test_aliases_never_point_to_two_entities(world):
    owners = collections.defaultdict(set)
    for e in world.entities.values():
        for alias in e.aliases:
            owners[alias].add(e.id)
    assert all(len(ids) == 1 for ids in owners.values())


def test_exported_rows_follow_search_r1_schemas(world):
    rows = world.corpus_rows()
    assert len({r["id"] for r in rows}) == len(rows) == len(world.entities)
    for row in rows:
        title, text = world.passages[row["id"]]
        assert row["contents"] == f'"{title}"\n{text}'
    for row in world.question_rows("dev"):
        assert row["golden_answers"] and row["question"].endswith("?")
        assert row["data_source"].startswith("synthetic_")
        assert row["metadata"]["gold_doc_ids"]


def test_rl_fraction_moves_a_share_of_train_to_rl_and_keeps_the_other_splits():
    config = WorldConfig(**SMALL_WORLD_KNOBS)
    base = World(config)
    held_back = World(dataclasses.replace(config, rl_fraction=0.25))
    texts = {s: [q.text for q in held_back.split(s)] for s in SPLITS}
    base_train = [q.text for q in base.split("train")]
    # The first 3/4 of the shuffled train questions stay "train", the rest become "rl".
    n_rl = round(0.25 * len(base_train))
    assert texts["rl"] == base_train[len(base_train) - n_rl :]
    assert texts["train"] == base_train[: len(base_train) - n_rl]
    for split in ("dev", "test"):
        assert texts[split] == [q.text for q in base.split(split)]
    assert base.split("rl") == []


def test_bad_config_raises_with_the_field_name():
    with pytest.raises(ValueError, match="rl_fraction"):
        WorldConfig(rl_fraction=1.0)
    with pytest.raises(ValueError, match="confusable_rate"):
        WorldConfig(confusable_rate=1.5)
    with pytest.raises(ValueError, match="split_fractions"):
        WorldConfig(split_fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="Unknown question types"):
        WorldConfig(questions_per_type=(("trivia", 3),))
    with pytest.raises(ValueError, match="num_films"):
        World(WorldConfig(num_films=100))
    with pytest.raises(ValueError, match="lower num_companies"):
        World(WorldConfig(num_companies=30_000))  # > 6400 stems x 4 suffixes
    with pytest.raises(ValueError, match="split must be"):
        World(dataclasses.replace(WorldConfig(), num_persons=10)).split("validation")


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    confusable_rate=st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
    max_hops=st.sampled_from([3, 4]),
)
def test_invariants_hold_for_any_seed_and_knobs(seed, confusable_rate, max_hops):
    config = WorldConfig(
        seed=seed,
        num_persons=20,
        num_cities=6,
        num_countries=2,
        num_companies=5,
        num_films=6,
        num_family_names=5,
        confusable_rate=confusable_rate,
        max_hops=max_hops,
        questions_per_type=(
            ("single", 20),
            ("bridge", 20),
            ("comparison", 10),
            ("compositional", 20),
        ),
    )
    world = World(config)
    assert len({e.name for e in world.entities.values()}) == len(world.entities)
    for q in world.questions:
        assert 1 <= len(q.hops) <= max_hops
        for hop in q.hops:
            assert world.name(hop.object) in world.passages[hop.doc_id][1]
    texts = [q.text for q in world.questions]
    assert len(set(texts)) == len(texts)
