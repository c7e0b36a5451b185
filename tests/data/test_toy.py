import numpy as np
import pytest

from prm.data import RepeatSource, host_rows, make_data_source


def test_rows_repeat_their_pattern_and_mask_skips_the_first_period():
    batch = next(RepeatSource(batch_size=4, seq_len=7, vocab_size=11, period=3))
    tokens = batch["tokens"]
    assert tokens.dtype == np.int32 and tokens.shape == (4, 7)
    np.testing.assert_array_equal(tokens[:, 3:6], tokens[:, :3])
    np.testing.assert_array_equal(tokens[:, 6], tokens[:, 0])
    assert tokens.min() >= 0 and tokens.max() < 11
    np.testing.assert_array_equal(batch["loss_mask"][:, :3], 0.0)
    np.testing.assert_array_equal(batch["loss_mask"][:, 3:], 1.0)
    with pytest.raises(ValueError, match="period"):
        RepeatSource(batch_size=4, seq_len=3, vocab_size=11, period=3)


def test_state_restore_replays_exactly():
    source = RepeatSource(batch_size=4, seq_len=5, vocab_size=9, seed=3)
    next(source)
    saved = source.state()
    expected = [next(source)["tokens"] for _ in range(3)]
    fresh = RepeatSource(batch_size=4, seq_len=5, vocab_size=9, seed=3)
    fresh.restore(saved)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], want)


def test_hosts_split_the_global_batch():
    kwargs = dict(batch_size=6, seq_len=5, vocab_size=9, seed=1)
    whole = next(RepeatSource(**kwargs))["tokens"]
    parts = [next(RepeatSource(**kwargs, process_index=i, process_count=3))["tokens"]
             for i in range(3)]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="not divisible"):
        host_rows(7, 0, 3)


def test_eval_split_differs_and_registry_builds_sources():
    cfg = {"name": "toy_repeat", "batch_size": 4, "seq_len": 5, "vocab_size": 97}
    train = next(make_data_source(cfg, split="train"))["tokens"]
    held_out = next(make_data_source(cfg, split="eval"))["tokens"]
    assert not np.array_equal(train, held_out)
    with pytest.raises(KeyError, match="toy_repeat"):
        make_data_source({"name": "nope"})
