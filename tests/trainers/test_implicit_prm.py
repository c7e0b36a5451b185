"""Implicit PRM trainer: rewards from one forward pair against a token-by-token computation,
delimiter steps, loss layouts, the file source, the first CE at ln 2, and the config run as typed."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.implicit_prm import get_config
from prm.models import Transformer
from prm.rewards.implicit import dpo_loss, kto_loss, nca_loss
from prm.trainers.implicit_prm import (
    ImplicitPRMTrainer,
    delimiter_step_ids,
    implicit_prm_loss,
    implicit_step_rewards,
    implicit_token_rewards,
    kto_rows,
    loss_rows,
    max_pairs,
    pair_rows,
)
from tests.helpers.tiny_models import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = jax.make_mesh((1,), ("data",))
BETA = 0.05


@pytest.fixture(scope="module")
def tiny_pair():
    """Two differently initialised tiny models: a PRM and a reference."""
    config = tiny_config("qwen3")
    return Transformer(config, rngs=nnx.Rngs(0)), Transformer(config, rngs=nnx.Rngs(1))


def _numpy_logprob(model, tokens, t):
    """log p(tokens[:, t] | tokens[:, :t]) from the model run on the prefix alone (float64)."""
    logits, _ = model(jnp.asarray(tokens[:, :t]))
    last = np.asarray(logits[:, -1], np.float64)
    log_z = np.log(np.exp(last - last.max(-1, keepdims=True)).sum(-1)) + last.max(-1)
    return last[np.arange(len(tokens)), tokens[:, t]] - log_z


def test_rewards_from_one_forward_pair_equal_token_by_token_numpy(tiny_pair):
    prm, reference = tiny_pair
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 250, size=(2, 9)).astype(np.int32)
    input_mask = np.ones(tokens.shape, bool)
    input_mask[1, 7:] = False  # row 1 is padded after 7 tokens
    # Prompt = first 3 tokens; response steps 0, 1 (an "observation" at position 5 of row 0).
    step_id = np.array([[-1, -1, -1, 0, 0, -1, 1, 1, 1], [-1, -1, -1, 0, 1, 1, 1, -1, -1]])
    rewards, _ = implicit_token_rewards(prm, reference, tokens, input_mask, step_id >= 0, BETA)
    expected = np.zeros(tokens.shape)
    for t in range(1, tokens.shape[1]):
        diff = _numpy_logprob(prm, tokens, t) - _numpy_logprob(reference, tokens, t)
        expected[:, t] = np.where(step_id[:, t] >= 0, BETA * diff, 0.0)
    np.testing.assert_allclose(np.asarray(rewards), expected, atol=2e-6)
    assert np.all(np.asarray(rewards)[step_id < 0] == 0)

    values, present = implicit_step_rewards(prm, reference, tokens, input_mask, step_id, BETA)
    sums = np.array([[expected[b, step_id[b] == k].sum() for k in range(2)] for b in range(2)])
    np.testing.assert_allclose(np.asarray(values), sums, atol=5e-6)
    assert np.asarray(present).all()


def test_rewards_are_zero_when_prm_equals_reference(tiny_pair):
    prm, _ = tiny_pair
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
    rewards, _ = implicit_token_rewards(
        prm, prm, tokens, np.ones((2, 6), bool), np.ones((2, 6)), BETA
    )
    assert np.all(np.asarray(rewards) == 0)


# A decoder over a hand vocabulary: delimiter "\n\n" inside one token, across two, or in none.
VOCAB = {1: "a", 2: "\n", 3: "\n\n", 4: "b\n", 5: "c", 9: "OBS"}


def _decode(ids):
    return "".join(VOCAB[i] for i in ids)


def test_delimiter_steps_end_at_the_token_completing_each_delimiter():
    tokens = np.array([[9, 1, 3, 5, 4, 9, 2, 1, 5, 0]])
    mask = np.array([[0, 1, 1, 1, 1, 0, 1, 1, 1, 0]])
    # Response text (observation and padding skipped): "a" "\n\n" "c" "b\n" | "\n" "a" "c"
    # "\n\n" ends at token 2 (inside it) and at token 6 ("b\n" + "\n", across the observation);
    # the last response token (8) ends the last step.
    steps = delimiter_step_ids(tokens, mask, _decode, ["\n\n"])
    np.testing.assert_array_equal(steps, [[-1, 0, 0, 1, 1, -1, 1, 2, 2, -1]])
    # Two delimiters; "c" also ends steps.
    steps = delimiter_step_ids(tokens, mask, _decode, ["\n\n", "c"])
    np.testing.assert_array_equal(steps, [[-1, 0, 0, 1, 2, -1, 2, 3, 3, -1]])
    with pytest.raises(ValueError, match="non-empty strings"):
        delimiter_step_ids(tokens, mask, _decode, [""])


def _groups(labels, length=6):
    """Rows of 2 prompt tokens then a response (row i's tokens are 10·i + position)."""
    rows = len(labels)
    tokens = (10 * np.arange(rows)[:, None] + np.arange(length)).astype(np.int32)
    loss_mask = np.zeros((rows, length), np.float32)
    loss_mask[:, 2:5] = 1.0
    input_mask = np.zeros((rows, length), bool)
    input_mask[:, :5] = True
    return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask,
            "labels": np.asarray(labels, np.float32)}  # fmt: skip


def test_pairs_are_every_correct_incorrect_pair_within_each_group():
    groups = _groups([1, 0, 0, 1, 1, 1])  # groups of 3: (1, 0, 0) and (1, 1, 1)
    rows = pair_rows(groups, 3, pad_id=0)
    assert max_pairs(3) == 2
    assert rows["tokens"].shape == (2 * 2 * 2, 6)  # 2 groups × 2 pairs × (chosen, rejected)
    np.testing.assert_array_equal(rows["pair_mask"], [1, 1, 1, 1, 0, 0, 0, 0])
    firsts = rows["tokens"][:4, 0] // 10
    np.testing.assert_array_equal(firsts, [0, 1, 0, 2])  # (0 beats 1), (0 beats 2)
    assert not rows["loss_mask"][4:].any()  # the all-correct group gives no pair
    with pytest.raises(ValueError, match="binary labels"):
        pair_rows(_groups([0.5, 1, 0]), 3, pad_id=0)


def test_kto_rows_pair_each_response_with_a_mismatched_completion():
    groups = _groups([1, 0, 0, 1])  # 2 groups of 2
    rows = kto_rows(groups, 2, pad_id=0)
    np.testing.assert_array_equal(rows["kl_row"], [0, 1] * 4)
    np.testing.assert_array_equal(rows["tokens"][0], groups["tokens"][0])
    # Row 0's KL row: row 0's prompt, then the response of row 2 (same slot, next group).
    np.testing.assert_array_equal(rows["tokens"][1, :5], [0, 1, 22, 23, 24])
    np.testing.assert_array_equal(rows["loss_mask"][1], [0, 0, 1, 1, 1, 0])
    # The last group's KL rows wrap around to the first group.
    np.testing.assert_array_equal(rows["tokens"][7, :5], [30, 31, 12, 13, 14])
    with pytest.raises(ValueError, match="at least 2 prompts"):
        kto_rows(_groups([1, 0]), 2, pad_id=0)


@pytest.mark.parametrize("loss", ["ce", "dpo", "nca", "kto"])
def test_loss_on_laid_out_rows_equals_the_objective_on_sequence_rewards(tiny_pair, loss):
    prm, reference = tiny_pair
    groups = _groups([1, 0, 0, 1, 1, 0])
    rows = {k: jnp.asarray(v) for k, v in loss_rows(groups, loss, 3, pad_id=0).items()}
    rewards, logp_ref = implicit_token_rewards(
        prm, reference, rows["tokens"], rows["input_mask"], rows["loss_mask"], BETA
    )
    rows["ref_logprobs"] = logp_ref
    value, _ = implicit_prm_loss(prm, rows, loss, BETA)
    seq = np.asarray(rewards).sum(axis=1)
    labels = np.asarray(rows["labels"])
    if loss == "ce":
        expected = np.mean(np.logaddexp(0, -seq) * labels + np.logaddexp(0, seq) * (1 - labels))
    elif loss in ("dpo", "nca"):
        pairs = np.asarray(rows["pair_mask"]).reshape(-1, 2)[:, 0] > 0
        chosen, rejected = seq.reshape(-1, 2).T
        fn = dpo_loss if loss == "dpo" else nca_loss
        expected = fn(chosen[pairs], rejected[pairs])
    else:
        real, kl = seq.reshape(-1, 2).T
        good = labels.reshape(-1, 2)[:, 0] == 1
        expected = kto_loss(real[good], real[~good], kl)
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)


def test_initial_ce_is_ln2_when_prm_equals_reference(tiny_pair):
    prm, _ = tiny_pair
    rows = {k: jnp.asarray(v) for k, v in _groups([1, 0, 0, 1]).items()}
    rows["ref_logprobs"] = implicit_token_rewards(
        prm, prm, rows["tokens"], rows["input_mask"], rows["loss_mask"], BETA
    )[1]
    value, metrics = implicit_prm_loss(prm, rows, "ce", BETA)
    np.testing.assert_allclose(float(value), math.log(2), rtol=1e-6)


def _file_trainer(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = get_config(f"smoke,source=file,path={path},loss=dpo")
    config.data.batch_size = 2
    return ImplicitPRMTrainer(config, MESH, str(tmp_path))


def test_file_rows_become_groups_by_prompt_and_resume_their_position(tmp_path):
    rows = [
        {"prompt": "Question: who?\n", "response": "<answer> Ann </answer>", "label": 1},
        {"prompt": "Question: who?\n", "response": "<answer> Bob </answer>", "label": 0},
        {"prompt": "Question: where?\n", "response": "<answer> Rome </answer>", "label": 0},
        {"prompt": "Question: what?\n", "response": "<answer> tea </answer>", "label": 1},
    ]
    trainer = _file_trainer(tmp_path, rows)
    tokenizer = trainer.assets.tokenizer
    groups, metrics = trainer.labelled_batch({}, jax.random.PRNGKey(0))
    k = trainer.group_size
    assert groups["tokens"].shape == (2 * k, trainer.config.data.seq_len)
    expected = {r["prompt"] + r["response"]: (r["response"], r["label"]) for r in rows}
    seen = []
    for row in np.flatnonzero(groups["input_mask"].any(axis=1)):
        text = tokenizer.decode(groups["tokens"][row][groups["input_mask"][row]])
        response = tokenizer.decode(groups["tokens"][row][groups["loss_mask"][row] > 0])
        assert expected[text] == (response, groups["labels"][row])  # as the file says
        seen.append(text)
    # Two prompts with all their responses: "who?" (2) and one other, or "where?" and "what?".
    prompts = {text.split("\n")[0] for text in seen}
    assert len(prompts) == 2 and len(seen) == (3 if "Question: who?" in prompts else 2)
    assert metrics["truncated_rows"] == 0
    saved = trainer.data_state()
    following = trainer.labelled_batch({}, jax.random.PRNGKey(0))[0]
    resumed = _file_trainer(tmp_path, rows)
    resumed.restore_data_state(saved)
    np.testing.assert_array_equal(
        resumed.labelled_batch({}, None)[0]["tokens"], following["tokens"]
    )


def test_file_source_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no column"):
        _file_trainer(tmp_path, [{"prompt": "p", "text": "r", "label": 1}] * 2)


@pytest.mark.slow  # ~4 min on 2 shared cores (compiles the rollouts, update and evaluation)
def test_smoke_config_runs_as_typed_and_starts_at_ln2(tmp_path):
    workdir = tmp_path / "implicit_prm_smoke"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/implicit_prm.py:smoke",
         f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("best-of-2 EM: PRM (min) ")
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    first = next(r for r in records if "prm/ce_loss" in r)
    # PRM = reference = the SFT start: every reward 0, so CE = ln 2 exactly.
    np.testing.assert_allclose(first["prm/ce_loss"], math.log(2), rtol=1e-6)
    assert records[0]["eval/prm/heldout_ce"] == pytest.approx(math.log(2), rel=1e-6)
    assert (workdir / "best_of_n_step0.md").exists() and (workdir / "best_of_n_step3.md").exists()
