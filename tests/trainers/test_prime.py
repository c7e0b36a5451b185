"""PRIME trainer: the accuracy filter and what it never lets through, group guards, the public
code's reward norm and whitened advantages (the notes' test vectors), the batch's advantages
and PRM loss, exact resume with the PRM in the state, and the config run as typed."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs.prime import get_config
from configs.prime_rloo import get_config as rloo_config
from prm.advantages import prime_advantages, rloo_advantages
from prm.models import Transformer
from prm.registry import TRAINERS
from prm.rollouts import TrajectoryBatch
from prm.trainers.implicit_prm import implicit_token_rewards
from prm.trainers.prime import (
    PrimeTrainer,
    accuracy_filter,
    batch_norm_rewards,
    check_groups,
    prime_token_advantages,
    rewards_at_step_ends,
)
from prm.training.state import model_config_from

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = jax.make_mesh((1,), ("data",))


def test_registered():
    assert TRAINERS.get("prime") is PrimeTrainer


def test_accuracy_filter_keeps_the_inclusive_band():
    accuracy = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1]], np.float32)  # fmt: skip
    np.testing.assert_array_equal(accuracy_filter(accuracy, 0.2, 0.8), [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(accuracy_filter(accuracy, 0.0, 1.0), [1] * 5)


def test_group_guards():
    check_groups(np.array([0, 0, 1, 1, 7, 7]), 2)
    with pytest.raises(ValueError, match="not contiguous"):
        check_groups(np.array([0, 1, 0, 1]), 2)
    with pytest.raises(ValueError, match="share an id"):
        check_groups(np.array([3, 3, 3, 3]), 2)
    with pytest.raises(ValueError, match="do not form groups"):
        check_groups(np.array([0, 0, 0]), 2)


def test_step_granularity_puts_each_turns_sum_on_its_last_token():
    rewards = jnp.array([[9.0, 1.0, 2.0, 9.0, -4.0, 0.5, 9.0]])
    step_id = jnp.array([[-1, 0, 0, -1, 1, 1, -1]])
    np.testing.assert_allclose(rewards_at_step_ends(rewards, step_id), [[0, 0, 3, 0, 0, -3.5, 0]])


# The notes' §4.4 vectors: one prompt, K = 4, valid lengths [5, 3, 4, 2], acc [1, 0, 1, 0].
Q = np.array([[0.127, -0.749, 0.653, -0.124, -0.72], [0.134, 1.024, 0.935, 0, 0],
              [0.193, 0.126, -1.083, -0.379, 0], [-0.544, 0.055, 0, 0, 0]])  # fmt: skip
MASK = np.arange(5) < np.array([5, 3, 4, 2])[:, None]
ACC = np.array([1.0, 0.0, 1.0, 0.0])


def test_public_code_reward_norm_and_whitened_advantages_match_the_notes_vectors():
    with jax.enable_x64(True):
        normed = batch_norm_rewards(jnp.asarray(Q), jnp.asarray(MASK))
        np.testing.assert_allclose(
            normed[0], [0.060678, -0.357859, 0.311992, -0.059245, -0.344004], atol=1e-6
        )
        np.testing.assert_allclose(normed[3], [-0.259914, 0.026278, 0, 0, 0], atol=1e-6)
        advantages = prime_token_advantages(
            normed, jnp.asarray(ACC), jnp.asarray(MASK), 4, gamma=1.0, baseline="public_code",
            whiten=True,
        )  # fmt: skip
    expected = [[0.227373, 0.054373, 1.086088, 0.189708, 0.361895], [1.348759, 1.166132, -0.240464],
                [-0.224802, -0.488569, -0.660194, 0.830854], [-2.200471, -1.450681]]  # fmt: skip
    for row, values in enumerate(expected):
        np.testing.assert_allclose(advantages[row, : len(values)], values, atol=1e-5)
    assert np.all(np.asarray(advantages)[~MASK] == 0)


# --- the trainer, with rollouts replaced by hand-made ones --------------------------------------


def fake_rollout(em: list[float], length: int = 12, tag: int = 0) -> TrajectoryBatch:
    """Rows of 3 prompt tokens and a 2-turn response (an observation between); the row's first
    token is `tag + row`, so tests can tell which rows reached the batch."""
    rows = len(em)
    tokens = (np.arange(rows)[:, None] * 7 + np.arange(length) * 3 + 5) % 200
    tokens[:, 0] = tag + np.arange(rows)
    step_id = np.full((rows, length), -1, np.int32)
    step_id[:, 3:6], step_id[:, 7:10] = 0, 1
    return TrajectoryBatch(
        tokens=tokens.astype(np.int32), input_mask=np.arange(length) < 10 + np.zeros((rows, 1)),
        loss_mask=(step_id >= 0).astype(np.float32), step_id=step_id,
        logprobs=np.where(step_id >= 0, -1.5, 0.0).astype(np.float32),
        group_id=np.arange(rows, dtype=np.int32) // 2, finish_reason=np.zeros(rows, np.int32),
        num_turns=np.full(rows, 2, np.int32),
        outcome={"em": np.asarray(em, np.float32), "reward": np.asarray(em, np.float32)},
        steps=[[] for _ in range(rows)],
    )  # fmt: skip


@pytest.fixture(scope="module")
def models():
    config = model_config_from(get_config("smoke").model)
    policy = Transformer(config, rngs=nnx.Rngs(0))
    return {"policy": policy, "prm": Transformer(config, rngs=nnx.Rngs(1)), "reference": policy}


def make_trainer(tmp_path, monkeypatch, rounds, config=None, **rollout):
    """A trainer (2 questions × K = 2) whose round r of rollouts is `fake_rollout(rounds[r])`."""
    config = config or get_config("smoke")
    config.rollout.update(accuracy_band=(0.2, 0.8), max_rounds=len(rounds), **rollout)
    trainer = PrimeTrainer(config, MESH, str(tmp_path))
    played = iter(rounds)
    monkeypatch.setattr(
        trainer,
        "play",
        lambda models, questions, key: fake_rollout(next(played), tag=100 * len(questions)),
    )
    return trainer


def test_failing_groups_never_fill_the_batch(tmp_path, monkeypatch, models):
    # Round 1: groups (0, 0) fail, (1, 0) passes; round 2: (1, 1) fails, (0, 1) passes.
    trainer = make_trainer(tmp_path, monkeypatch, [[0, 0, 1, 0], [1, 1, 0, 1]])
    batch, metrics = trainer.next_batch(models, 1, jax.random.PRNGKey(0))
    assert metrics["filter/kept_groups"] == 2 and metrics["filter/rounds"] == 2
    assert metrics["filter/kept_fraction"] == 0.5
    # 6 policy tokens per row: 2 rounds × 4 rows sampled, 4 rows kept.
    assert metrics["sampled_tokens"] == 48 and metrics["trained_tokens"] == 24
    np.testing.assert_array_equal(batch["outcome"], [1, 0, 0, 1])
    # The kept rows are the second group of each round, in order (row tags 2, 3 then 2, 3).
    np.testing.assert_array_equal(batch["tokens"][:, 0], [202, 203, 202, 203])


def test_too_few_kept_groups_are_padded_with_empty_rows(tmp_path, monkeypatch, models):
    trainer = make_trainer(tmp_path, monkeypatch, [[0, 0, 1, 1], [1, 0, 1, 1]])
    batch, metrics = trainer.next_batch(models, 1, jax.random.PRNGKey(0))
    assert metrics["filter/kept_groups"] == 1 and metrics["filter/sampled_groups"] == 4
    assert batch["loss_mask"][:2].any() and not batch["loss_mask"][2:].any()
    assert not batch["advantages"][2:].any() and not batch["input_mask"][2:].any()


def test_no_kept_group_is_a_clear_error(tmp_path, monkeypatch, models):
    trainer = make_trainer(tmp_path, monkeypatch, [[0, 0, 1, 1], [0, 0, 0, 0]])
    with pytest.raises(
        RuntimeError, match=r"kept no group in 2 round\(s\).*Widen rollout.accuracy_band"
    ):
        trainer.next_batch(models, 1, jax.random.PRNGKey(0))


def test_batch_advantages_are_eq5_of_the_prms_token_rewards(tmp_path, monkeypatch, models):
    trainer = make_trainer(tmp_path, monkeypatch, [[1, 0, 0, 1]])
    batch, metrics = trainer.next_batch(models, 1, jax.random.PRNGKey(0))
    played = fake_rollout([1, 0, 0, 1], tag=200)  # as `play` made it: 2 questions per round
    np.testing.assert_array_equal(batch["tokens"], played.tokens)
    mask = played.loss_mask > 0
    rewards, logp_ref = implicit_token_rewards(
        models["prm"], models["reference"], played.tokens, played.input_mask, mask, 0.05
    )
    expected = prime_advantages(
        rewards.reshape(2, 2, -1), jnp.asarray([[1.0, 0.0], [0.0, 1.0]]), mask.reshape(2, 2, -1)
    ).reshape(4, -1)
    np.testing.assert_allclose(batch["advantages"], expected, atol=1e-6)
    np.testing.assert_allclose(batch["prm_ref_logprobs"], logp_ref, atol=1e-6)
    np.testing.assert_array_equal(batch["old_logprobs"], played.logprobs)  # π_old = the sampler's
    assert 0.0 <= metrics["prm/pairwise_accuracy_before"] <= 1.0


def test_outcome_only_rloo_baseline(tmp_path, monkeypatch, models):
    trainer = make_trainer(tmp_path, monkeypatch, [[1, 0, 0, 1]], config=rloo_config("smoke"))
    batch, metrics = trainer.next_batch(models, 1, jax.random.PRNGKey(0))
    assert "prm_ref_logprobs" not in batch and "prm/ce_before" not in metrics
    per_row = np.asarray(rloo_advantages(jnp.asarray([[1.0, 0.0], [0.0, 1.0]]))).reshape(-1)
    np.testing.assert_allclose(batch["advantages"], per_row[:, None] * batch["loss_mask"])


def test_loss_trains_both_parts_and_the_first_prm_ce_is_ln2(tmp_path, monkeypatch, models):
    trainer = make_trainer(tmp_path, monkeypatch, [[1, 0, 0, 1]])
    same = {**models, "prm": models["policy"]}  # the PRM starts as the reference
    batch, metrics = trainer.next_batch(same, 1, jax.random.PRNGKey(0))
    assert metrics["prm/ce_before"] == pytest.approx(math.log(2), rel=1e-6)
    prm = Transformer(model_config_from(get_config("smoke").model), rngs=nnx.Rngs(0))
    parts = {"policy": models["policy"], "prm": prm}
    split = {name: nnx.split(part, nnx.Param, ...) for name, part in parts.items()}
    params = {name: state for name, (_, state, _) in split.items()}

    def loss_of(params):
        merged = {n: nnx.merge(g, params[n], rest) for n, (g, _, rest) in split.items()}
        return trainer.loss({**merged, "reference": models["reference"]}, batch, None)

    (loss, loss_metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    assert float(loss_metrics["prm/ce_loss"]) == pytest.approx(math.log(2), rel=1e-6)
    for name in parts:
        assert float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads[name])))) > 0


def test_bad_settings_say_what_to_change(tmp_path):
    config = get_config("smoke")
    config.parts = {}
    with pytest.raises(ValueError, match="need parts.prm"):
        PrimeTrainer(config, MESH, str(tmp_path))
    config = get_config("smoke")
    config.rollout.accuracy_band = (0.9, 0.1)
    with pytest.raises(ValueError, match="accuracy_band"):
        PrimeTrainer(config, MESH, str(tmp_path))


# --- the real loop --------------------------------------------------------------------------


def _tiny_run_config():
    config = get_config("smoke")
    config.warm_start = {}  # random start: what matters is the state, not the policy's quality
    config.export_hf = False
    config.eval_every = 0
    config.eval_at_start = False
    config.total_steps = 4
    config.checkpoint_every = 2
    config.rollout.max_step_tokens = 8
    return config


def _records(workdir):
    from prm.training.metrics_writer import TIMING_METRICS

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS}
                for line in f]  # fmt: skip


@pytest.mark.slow  # a few minutes on 2 shared cores: real rollouts, PRM and policy updates
def test_crash_and_resume_with_the_prm_in_the_state_is_bitwise_identical(tmp_path, monkeypatch):
    from prm.training.loop import config_from_workdir, train

    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train(_tiny_run_config(), straight)
    original = PrimeTrainer.next_batch

    def crash_at_step_3(self, models, step, rng):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, models, step, rng)

    monkeypatch.setattr(PrimeTrainer, "next_batch", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_run_config(), split)  # checkpoint at step 2
    monkeypatch.setattr(PrimeTrainer, "next_batch", original)
    stored = config_from_workdir(split)
    stored.lock()
    train(stored, split)

    records = _records(straight)
    assert _records(split) == records
    assert all(r["prm/grad_norm"] > 0 for r in records)
    assert records[0]["prm/ce_before"] == pytest.approx(math.log(2), rel=1e-6)
    read = lambda w: ocp.StandardCheckpointer().restore(
        os.path.join(w, "checkpoints", "4", "state")
    )
    final_a, final_b = read(straight), read(split)
    assert {n.split(".")[1] for n in final_a if n.startswith("params.")} == {"policy", "prm"}
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        np.testing.assert_array_equal(final_a[name], final_b[name], err_msg=name)


@pytest.mark.slow  # ~4 min on 2 shared cores
def test_smoke_config_runs_as_typed(tmp_path):
    workdir = tmp_path / "prime_smoke"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/prime.py:smoke",
         f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("held-out EM: ")
    with open(workdir / "metrics.jsonl") as f:
        train_records = [r for r in map(json.loads, f) if "filter/kept_groups" in r]
    assert len(train_records) == 3
    assert train_records[0]["prm/ce_before"] == pytest.approx(math.log(2), rel=1e-6)


def test_paper_scale_config_trains_policy_and_prm_in_full_and_fits_on_8xh200():
    from prm.training.memory_plan import memory_plan  # noqa: PLC0415

    config = get_config("model=qwen2.5-7b,init_from=/models/qwen2.5-7b")
    assert config.trainer == "prime" and config.lora.rank == 0 and config.reference == "copy"
    assert config.optim.lr == 5e-7 and config.parts.prm.lr == 1e-6  # notes §3.5
    assert (config.data.batch_size, config.rollout.group_size) == (256, 4)
    assert config.rollout.accuracy_band == (0.2, 0.8) and config.updates.num_mini_batches == 4
    assert config.policy_loss.kl_coef == 0.0 and "judge" not in config
    assert not rloo_config("model=qwen2.5-7b").parts  # the baseline has no PRM
    plan = memory_plan(config)
    # Qwen2.5-7B has 7,615,616,512 parameters (V·d embedding and untied head, 28 layers of q/k/v
    # with biases, o, gate/up/down, two norms; a final norm). Policy and PRM are trained, the
    # reference is frozen, all bf16 and sharded over fsdp = 8 (a few bias/norm vectors are
    # replicated, hence the tolerance).
    n = 152064 * 3584 * 2 + 28 * (3584 * 3584 * 2 + 3584 + 2 * (3584 * 512 + 512)
                                  + 3 * 3584 * 18944 + 2 * 3584) + 3584  # fmt: skip
    assert n == 7_615_616_512
    assert plan.trainable == pytest.approx(2 * n * 2 / 8, rel=1e-3)
    assert plan.frozen == pytest.approx(n * 2 / 8, rel=1e-3)
    assert plan.rollout_rows == 256 * 4 // 8 and plan.fits  # rows of the rollout per device
