import dataclasses

import pytest

from prm.data import make_data_source
from tests.helpers.worlds import SMALL_VOCAB, SMALL_WORLD_KNOBS

WORLD = dict(SMALL_WORLD_KNOBS, rl_fraction=0.5)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("worlds"))


def make(cache_dir, split="train", **kwargs):
    data = dict(name="world_questions", batch_size=4, world=WORLD, cache_dir=cache_dir,
                vocab_size=SMALL_VOCAB, seed=3)  # fmt: skip
    return make_data_source({**data, **kwargs}, split=split)


def test_train_batches_come_from_the_rl_split_and_cover_it_each_epoch(cache_dir):
    source = make(cache_dir)
    rl = source.assets.world.split("rl")
    per_epoch = len(rl) // 4
    seen = [q.text for _ in range(per_epoch) for q in next(source)]
    # One epoch visits distinct questions, all from "rl" (never the SFT ones of "train").
    assert len(set(seen)) == len(seen) == per_epoch * 4
    assert set(seen) <= {q.text for q in rl}


def test_resume_from_state_gives_the_same_batches(cache_dir):
    source = make(cache_dir)
    for _ in range(5):
        next(source)
    state = source.state()
    expected = [[q.id for q in next(source)] for _ in range(3)]
    resumed = make(cache_dir)
    resumed.restore(state)
    assert [[q.id for q in next(resumed)] for _ in range(3)] == expected


def test_train_split_option_and_clear_error_without_rl_questions(cache_dir):
    sft_questions = {q.text for q in make(cache_dir, train_split="train").questions}
    assert sft_questions == {q.text for q in make(cache_dir).assets.world.split("train")}
    with pytest.raises(ValueError, match="rl_fraction"):
        make(cache_dir, world=dict(WORLD, rl_fraction=0.0))
    assert dataclasses.is_dataclass(make(cache_dir, split="test").questions[0])
