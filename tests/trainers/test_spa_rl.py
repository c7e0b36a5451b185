"""SPA-RL trainer: step rewards on step ends, GAE and the estimator's regression by hand, the
batch it builds, the smoke config as typed, and exact resume with the estimator in the state."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from configs.spa_rl import get_config
from prm.envs.protocol import Action, StepResult
from prm.trainers.spa_rl import SPARLTrainer, executed
from prm.training.loop import build_run, train
from prm.training.metrics_writer import TIMING_METRICS
from tests.helpers.train_runs import train_as_typed

CONTRIBUTION, VALUE = 0.25, 0.1  # the heads' biases (their kernels start at 0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = get_config("smoke")
    config.warm_start = {}  # a random policy is enough to check the arithmetic
    config.spa.update(lam=1.0, whiten_advantages=False)  # A_t = G_t − V_t by hand
    run = build_run(config, str(tmp_path_factory.mktemp("run")))
    run.checkpointer.close()
    return run


def _models(run):
    """The run's parts with the estimator outputting c = 0.25 and the critic V = 0.1 everywhere."""
    models = run.models()
    models["progress"].head.bias[...] = jnp.full((1,), CONTRIBUTION)
    models["value"].head.bias[...] = jnp.full((1,), VALUE)
    return models


def _batch(policy_update=1.0):
    # Row 0: prompt (2), step 0 (2 tokens, executed), observation (1), step 1 (3 tokens, not
    # executed), padding (2); outcome 1. Row 1: prompt (1), step 0 (2 tokens, executed),
    # padding; outcome 0.
    step_id = np.array(
        [[-1, -1, 0, 0, -1, 1, 1, 1, -1, -1], [-1, 0, 0, -1, -1, -1, -1, -1, -1, -1]], np.int32
    )
    input_mask = np.array([[1] * 8 + [0] * 2, [1] * 3 + [0] * 7], bool)
    grounding = np.array([[0, 0, 1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 1] + [0] * 7], np.float32)
    trained = (step_id >= 0).astype(np.float32)
    return {
        "tokens": np.arange(1, 21, dtype=np.int32).reshape(2, 10) * input_mask,
        "input_mask": input_mask,
        "loss_mask": trained,
        "advantages": np.zeros((2, 10), np.float32),
        "old_logprobs": -trained,
        "step_id": step_id,
        "grounding": grounding,
        "outcome": np.array([1.0, 0.0], np.float32),
        "policy_update": np.full(2, policy_update, np.float32),
        "loo_outcome": np.array([1.0, -1.0], np.float32),  # rows 0 and 1 as one group of 2
    }


def _prepare(run, batch):
    with jax.set_mesh(run.mesh):
        return jax.device_get(run.trainer.prepare(_models(run), batch))


def test_step_rewards_sit_on_step_ends_and_gae_by_hand(run):
    with jax.set_mesh(run.mesh):
        rewards = np.asarray(run.trainer.token_rewards(_models(run), _batch()))
    # r = c + 0.5·g on each step's last token: row 0 → 0.75 at 3, 0.25 at 7; row 1 → 0.75 at 2.
    expected = np.zeros((2, 10))
    expected[0, 3], expected[0, 7], expected[1, 2] = 0.75, 0.25, 0.75
    np.testing.assert_allclose(rewards, expected, atol=1e-6)

    prepared = _prepare(run, _batch())
    # γ = λ = 1 over trained tokens only (the observation is skipped): G_t = Σ_{s ≥ t} r_s,
    # A_t = G_t − V(s_t) with V = 0.1 before every trained token.
    returns = np.zeros((2, 10))
    returns[0, [2, 3]], returns[0, [5, 6, 7]], returns[1, [1, 2]] = 1.0, 0.25, 0.75
    trained = _batch()["loss_mask"] > 0
    np.testing.assert_allclose(prepared["returns"], returns, atol=1e-6)
    np.testing.assert_allclose(prepared["advantages"], (returns - VALUE) * trained, atol=1e-6)
    np.testing.assert_allclose(prepared["old_values"], VALUE * trained, atol=1e-6)


def test_leave_one_out_contributions_replace_the_estimator(run):
    spa = run.trainer.spa
    spa.unlock()
    spa.contributions = "leave_one_out"
    try:
        with jax.set_mesh(run.mesh):
            rewards = np.asarray(run.trainer.token_rewards(_models(run), _batch()))
    finally:
        spa.contributions = "estimator"
    # R_i − mean of the others on every step: row 0 → 1 (+0.5 at step 0), row 1 → −1 + 0.5.
    expected = np.zeros((2, 10))
    expected[0, 3], expected[0, 7], expected[1, 2] = 1.5, 1.0, -0.5
    np.testing.assert_allclose(rewards, expected, atol=1e-6)


def test_estimator_regresses_the_sum_of_contributions_onto_the_outcome(run):
    batch = _prepare(run, _batch())
    models = _models(run)
    graphdef, state = nnx.split(models["progress"])

    def loss(state):
        parts = {**models, "progress": nnx.merge(graphdef, state)}
        return run.trainer.loss(parts, batch, jax.random.PRNGKey(0))

    with jax.set_mesh(run.mesh):
        (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state)
    # Σc = 2·0.25 = 0.5 against R = 1 (row 0), 0.25 against R = 0 (row 1):
    # mean (R − Σc)² = (0.25 + 0.0625)/2; mean |R − Σc| = (0.5 + 0.25)/2; none within 0.1.
    np.testing.assert_allclose(metrics["progress_loss"], 0.15625, atol=1e-6)
    np.testing.assert_allclose(metrics["progress_abs_error"], 0.375, atol=1e-6)
    assert metrics["progress_accuracy"] == 0.0
    # ∂/∂b of the row mean: row 0 d(1 − 2b)²/db = −4(1 − 2b) = −2, row 1 d(b²)/db = 2b = 0.5.
    np.testing.assert_allclose(grads["head"]["bias"][...], [(-2.0 + 0.5) / 2], atol=1e-5)
    # Critic: ½·mean over the 7 trained tokens of (0.1 − G)² (the clip is inactive: V = V_old).
    value_loss = 0.5 * (2 * 0.9**2 + 3 * 0.15**2 + 2 * 0.65**2) / 7
    np.testing.assert_allclose(metrics["value_loss"], value_loss, atol=1e-6)


def test_exploration_gives_the_policy_exactly_no_gradient(run):
    models = _models(run)
    graphdef, state = nnx.split(models["policy"])

    def policy_grads(policy_update):
        batch = _prepare(run, _batch(policy_update))

        def loss(state):
            parts = {**models, "policy": nnx.merge(graphdef, state)}
            return run.trainer.loss(parts, batch, jax.random.PRNGKey(0))[0]

        with jax.set_mesh(run.mesh):
            return jax.tree.leaves(jax.grad(loss)(state))

    assert all(np.all(np.asarray(g) == 0) for g in policy_grads(0.0))
    assert any(np.any(np.asarray(g) != 0) for g in policy_grads(1.0))


def test_grounding_is_an_executed_action():
    def result(kind, done):
        return StepResult("", Action(kind, "x" if kind != "invalid" else ""), "", done, 0.0)

    assert executed(result("search", done=False))
    assert executed(result("answer", done=True))
    assert not executed(result("invalid", done=False))
    assert not executed(result("search", done=True))  # the final call: search is disabled


def test_batch_carries_step_structure_and_explores_first(run):
    with jax.set_mesh(run.mesh):
        batch, metrics = run.trainer.next_batch(run.models(), 1, jax.random.PRNGKey(0))
        later, later_metrics = run.trainer.next_batch(run.models(), 2, jax.random.PRNGKey(1))
    rows = run.config.data.batch_size * run.config.rollout.group_size
    assert batch["tokens"].shape == batch["step_id"].shape == (rows, run.config.data.seq_len)
    np.testing.assert_array_equal(batch["loss_mask"] > 0, batch["step_id"] >= 0)
    # Grounding is one value per step, 0 off the sampled tokens.
    assert np.all(batch["grounding"][batch["step_id"] < 0] == 0)
    for b in range(rows):
        for s in np.unique(batch["step_id"][b][batch["step_id"][b] >= 0]):
            assert len(np.unique(batch["grounding"][b][batch["step_id"][b] == s])) == 1
    assert batch["outcome"].shape == (rows,)
    assert 0.0 <= metrics["grounding_accuracy"] <= 1.0
    # warmup_steps = 1 in the smoke config: step 1 explores, step 2 trains the policy.
    assert metrics["exploring"] == 1.0 and later_metrics["exploring"] == 0.0
    np.testing.assert_array_equal(batch["policy_update"], 0.0)
    np.testing.assert_array_equal(later["policy_update"], 1.0)


@pytest.mark.parametrize("block, value", [("contributions", "oracle"), ("weighting", "linear")])
def test_unknown_spa_options_are_rejected(block, value):
    config = get_config("smoke")
    config.spa[block] = value
    with pytest.raises(ValueError, match=f"Unknown spa.{block}"):
        SPARLTrainer(config, None, "")


def test_missing_estimator_part_is_rejected():
    config = get_config("smoke")
    del config.parts["progress"]
    with pytest.raises(ValueError, match="config.parts.progress with head='scalar'"):
        SPARLTrainer(config, None, "")


def test_smoke_config_runs_as_typed(tmp_path):
    workdir = tmp_path / "spa_rl_smoke"
    train_as_typed("spa_rl.py:smoke", workdir)
    assert (workdir / "qa_test_step0.md").exists() and (workdir / "qa_test_step3.md").exists()
    train_records = [r for r in _records(workdir) if "progress_loss" in r]
    assert [r["exploring"] for r in train_records] == [1.0, 0.0, 0.0]


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS} for line in f
        ]


@pytest.mark.slow
def test_crash_and_resume_with_the_estimator_is_bitwise_identical(tmp_path, monkeypatch):
    def config():
        c = get_config("smoke")
        c.update(eval_every=0, eval_at_start=False, export_hf=False)
        c.warm_start = {}
        return c

    original = SPARLTrainer.next_batch

    def with_signal(self, models, step, rng):
        # The random policy never acts validly nor answers: give every part something to learn
        # (even steps executed, odd rows successful), the same in every run.
        batch, metrics = original(self, models, step, rng)
        step_id = batch["step_id"]
        batch["grounding"] = ((step_id >= 0) & (step_id % 2 == 0)).astype(np.float32)
        batch["outcome"] = (np.arange(len(step_id)) % 2).astype(np.float32)
        return batch, metrics

    def crash_at_step_3(self, models, step, rng):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return with_signal(self, models, step, rng)

    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    monkeypatch.setattr(SPARLTrainer, "next_batch", with_signal)
    train(config(), straight)
    monkeypatch.setattr(SPARLTrainer, "next_batch", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(config(), split)  # 2 steps logged, checkpoint at 2
    monkeypatch.setattr(SPARLTrainer, "next_batch", with_signal)
    train(config(), split)
    records = _records(straight)
    assert _records(split) == records
    assert len(records) == 3
    for name in ("grad_norm", "progress/grad_norm", "value/grad_norm"):
        assert all(r[name] > 0 for r in records[1:]), name
    # Step 1 explores: the estimator and the critic learn, the policy gets exactly no gradient.
    assert records[0]["grad_norm"] == 0.0 and records[0]["progress/grad_norm"] > 0
    final_a, final_b = (
        ocp.StandardCheckpointer().restore(os.path.join(w, "checkpoints", "3", "state"))
        for w in (straight, split)
    )
    assert final_a.keys() == final_b.keys()
    # Every trainable part and its optimiser state is in the checkpoint (stored by dotted name).
    parts = {name.split(".")[1] for name in final_a if name.startswith("params.")}
    assert parts == {"policy", "progress", "value"}
    for name in final_a:
        np.testing.assert_array_equal(final_a[name], final_b[name], err_msg=name)
