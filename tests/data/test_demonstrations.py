"""Expert demonstrations as SFT rows: exact masks on a hand-built example, exact resume."""

import numpy as np
import pytest

from prm.data.demonstrations import DemonstrationSource, tokenize_demonstrations
from prm.envs import protocol as P
from prm.envs.expert import Demonstration
from prm.registry import DATASETS
from tests.helpers.worlds import SMALL_WORLD_KNOBS as SMALL_WORLD


def make_source(cache_dir, **kwargs):
    args = dict(batch_size=4, world=SMALL_WORLD, cache_dir=cache_dir, vocab_size=400, seed=1)
    return DemonstrationSource(**{**args, **kwargs})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # One world directory per session, shared with the other modules that use this world.
    return str(tmp_path_factory.getbasetemp() / "worlds")


@pytest.fixture(scope="module")
def source(cache_dir):
    return make_source(cache_dir)


def test_masks_of_a_hand_built_demonstration(source):
    tokenizer = source.assets.tokenizer
    prompt, step0, obs, step1 = (
        "Question: q?\n",
        "<search> a b </search>",
        "\n\n<information>x",
        ("<answer> c </answer>"),
    )
    demo = Demonstration(
        question=source.questions[0],
        segments=[
            P.Segment(prompt, False),
            P.Segment(step0, True, 0),
            P.Segment(obs, False),
            P.Segment(step1, True, 1),
        ],
        answer="c",
        em=0.0,
        f1=0.0,
    )
    lengths = [
        len(tokenizer.encode(t, add_special_tokens=False)) for t in (prompt, step0, obs, step1)
    ]
    rows = tokenize_demonstrations([demo], tokenizer, 64)
    n = sum(lengths)
    expected_mask = np.repeat([0.0, 1.0, 0.0, 1.0], lengths)
    expected_step = np.repeat([-1, 0, -1, 1], lengths)
    np.testing.assert_array_equal(rows["loss_mask"][0, :n], expected_mask)
    np.testing.assert_array_equal(rows["step_id"][0, :n], expected_step)
    assert rows["input_mask"][0].sum() == n and rows["loss_mask"][0, n:].sum() == 0
    assert (rows["tokens"][0, n:] == tokenizer.pad_token_id).all()
    assert tokenizer.decode(rows["tokens"][0, :n]) == prompt + step0 + obs + step1
    # The batched encoding equals the protocol's per-segment tokenization.
    reference = P.tokenize_segments(tokenizer, demo.segments)
    np.testing.assert_array_equal(rows["tokens"][0, :n], reference.tokens)
    # A demonstration longer than seq_len is left out, not cut.
    with pytest.raises(ValueError, match="seq_len"):
        tokenize_demonstrations([demo], tokenizer, n - 1)


def test_batches_hold_the_expert_steps_as_targets(source, cache_dir):
    batch = next(make_source(cache_dir))
    assert batch["tokens"].shape == (4, 256) and batch["tokens"].dtype == np.int32
    tokenizer = source.assets.tokenizer
    for b in range(4):
        targets = tokenizer.decode(batch["tokens"][b][batch["loss_mask"][b] > 0])
        context = tokenizer.decode(batch["tokens"][b][(batch["loss_mask"][b] == 0)])
        assert targets.rstrip().endswith("</answer>") and "<information>" not in targets
        assert "Question:" in context


def test_resume_is_exact_across_an_epoch_boundary(source, cache_dir):
    per_epoch = len(source.epoch_rows(0)["tokens"]) // source.batch_size
    first = make_source(cache_dir)
    for _ in range(per_epoch - 1):
        next(first)
    saved = first.state()
    expected = [next(first) for _ in range(3)]  # crosses into epoch 1
    assert first.state()["epoch"] == 1
    resumed = make_source(cache_dir)
    resumed.restore(saved)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    # A new epoch draws new expert noise and a new order.
    assert not np.array_equal(source.epoch_rows(0)["tokens"], source.epoch_rows(1)["tokens"])


def test_hosts_split_the_global_batch(cache_dir):
    whole = next(make_source(cache_dir))
    halves = [next(make_source(cache_dir, process_index=i, process_count=2)) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in halves]), whole["tokens"])


def test_eval_split_plays_dev_questions_with_fixed_noise(source, cache_dir):
    a = make_source(cache_dir, split="eval", batch_size=2, seq_len=512)
    assert a.questions == source.assets.world.split("dev")
    # Later epochs reorder the same demonstrations (the noise seed stays at epoch 0's).
    rows = [sorted(map(tuple, a.epoch_rows(e)["tokens"].tolist())) for e in (0, 3)]
    assert rows[0] == rows[1]
    with pytest.raises(ValueError, match="split"):
        make_source(cache_dir, split="test")


def test_registered_by_name():
    assert DATASETS.get("synthetic_demos") is DemonstrationSource
