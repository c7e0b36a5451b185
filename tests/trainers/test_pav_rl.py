"""PAV-RL trainer: effective step advantages by hand, A^μ telescoping, the Q^μ ablation, the
batch it builds from real prover completions, bad settings, and the smoke config as typed."""

import json

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs.pav_rl import get_config
from prm.envs.protocol import Action, QATask, StepResult
from prm.registry import TRAINERS
from prm.rollouts import TrajectoryBatch
from prm.rollouts.completions import Completions, Prefix
from prm.trainers.pav_rl import (
    BucketedCompleter,
    PAVRLTrainer,
    effective_step_advantages,
    trajectory_solutions,
)
from prm.training.loop import build_run
from tests.helpers.train_runs import train_as_typed

MESH = jax.make_mesh((1,), ("data",))

# One group of K = 3 trajectories with 2, 3 and 1 steps; outcomes 1, 0, 0. Prefix values are
# V^μ(x) = 0.25 (shared by the question), then Q^μ after each step; the last real value is the
# trajectory's own outcome, padding repeats it.
OUTCOME = [[1.0, 0.0, 0.0]]
PREFIX_VALUES = [[[0.25, 0.5, 1.0, 1.0], [0.25, 0.75, 0.25, 0.0], [0.25, 0.0, 0.0, 0.0]]]
STEP_MASK = [[[True, True, False], [True, True, True], [True, False, False]]]


def test_registered():
    assert TRAINERS.get("pav_rl") is PAVRLTrainer


def test_effective_advantages_by_hand():
    # Leave-one-out outcome advantages: 1 − 0 = 1, 0 − (1 + 0)/2 = −0.5, −0.5.
    # A^μ: row 0 (0.25, 0.5), row 1 (0.5, −0.5, −0.25), row 2 (−0.25); α = 0.5.
    expected = [[[1.125, 1.25, 0.0], [-0.25, -0.75, -0.625], [-0.625, 0.0, 0.0]]]
    got = effective_step_advantages(OUTCOME, PREFIX_VALUES, STEP_MASK, 0.5)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # α = 0: outcome-only RLOO, the same value on every step a trajectory took.
    rloo = effective_step_advantages(OUTCOME, PREFIX_VALUES, STEP_MASK, 0.0)
    np.testing.assert_allclose(rloo, np.where(STEP_MASK, [[[1.0], [-0.5], [-0.5]]], 0.0), atol=1e-6)


def test_q_reward_pays_the_value_after_each_step():
    # Q^μ after each step: row 0 (0.5, 1), row 1 (0.75, 0.25, 0), row 2 (0); α = 0.5.
    expected = [[[1.25, 1.5, 0.0], [-0.125, -0.375, -0.5], [-0.5, 0.0, 0.0]]]
    got = effective_step_advantages(OUTCOME, PREFIX_VALUES, STEP_MASK, 0.5, reward="q")
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_progress_telescopes_and_q_adds_the_value_before_each_step():
    rng = np.random.default_rng(0)
    groups, k, steps, alpha = 4, 3, 5, 0.7
    outcome = rng.integers(0, 2, (groups, k)).astype(np.float32)
    num_steps = rng.integers(1, steps + 1, (groups, k))
    values = rng.uniform(size=(groups, k, steps + 1)).astype(np.float32)
    values[..., 0] = values[:, :1, 0]  # V^μ(x) shared by a question's trajectories
    step_mask = np.arange(steps) < num_steps[..., None]
    last = np.take_along_axis(values, num_steps[..., None], -1)[..., 0]
    loo = (outcome * k - outcome.sum(-1, keepdims=True)) / (k - 1)  # r_i − mean_{j≠i} r_j

    shaping = effective_step_advantages(outcome, values, step_mask, alpha) - np.where(
        step_mask, loo[..., None], 0.0
    )
    # Σ_h α·A^μ_h = α·(Q^μ(whole trajectory) − V^μ(x)), whatever happens in between.
    np.testing.assert_allclose(shaping.sum(-1), alpha * (last - values[..., 0]), atol=1e-5)

    # Q^μ in place of A^μ adds α·Q^μ(prefix before step h) to every step: the part of the
    # reward a step gets for where it started, not for what it did (PAV App. G).
    q = effective_step_advantages(outcome, values, step_mask, alpha, reward="q")
    advantage = effective_step_advantages(outcome, values, step_mask, alpha)
    np.testing.assert_allclose(
        q - advantage, np.where(step_mask, alpha * values[..., :-1], 0.0), atol=1e-6
    )


def test_unknown_reward_is_an_error():
    with pytest.raises(ValueError, match="Unknown PAV reward 'outcome'"):
        effective_step_advantages(OUTCOME, PREFIX_VALUES, STEP_MASK, 1.0, reward="outcome")


def _step(text: str) -> StepResult:
    return StepResult(text, Action("search", text[:3]), "", False, 0.0, {})


def test_trajectory_solutions_pair_rows_with_their_questions():
    tasks = [QATask("q0", ("a",)), QATask("q1", ("b",))]
    steps = [[_step("s00"), _step("s01")], [_step("s10")], [_step("s20")], [_step("t30")]]
    rows = len(steps)
    trajectories = TrajectoryBatch(
        tokens=np.zeros((rows, 4), np.int32), input_mask=np.ones((rows, 4), bool),
        loss_mask=np.zeros((rows, 4), np.float32), step_id=np.full((rows, 4), -1, np.int32),
        logprobs=np.zeros((rows, 4), np.float32), group_id=np.arange(rows) // 2,
        finish_reason=np.zeros(rows, np.int32), num_turns=np.array([2, 1, 1, 1]),
        outcome={"em": np.array([1, 0, 0, 1], np.float32)}, steps=steps,
    )  # fmt: skip
    solutions = trajectory_solutions(trajectories, tasks, 2)
    assert [s.task for s in solutions] == [tasks[0], tasks[0], tasks[1], tasks[1]]
    assert [s.steps for s in solutions] == [("s00", "s01"), ("s10",), ("s20",), ("t30",)]
    assert [s.outcome for s in solutions] == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="not 3 per each of 2 questions"):
        trajectory_solutions(trajectories, tasks, 3)


def test_bucketed_completer_pads_calls_and_counts_only_the_asked_prefixes():
    calls = []

    def completer(prefixes, num_completions):  # prefix i: i + 1 tokens per completion
        calls.append(list(prefixes))
        rows = len(prefixes)
        return Completions(
            np.arange(rows * num_completions).reshape(rows, num_completions) % 2 == 0,
            np.repeat(np.arange(1, rows + 1), num_completions).reshape(rows, num_completions),
            [[(f"p{i}",)] * num_completions for i in range(rows)],
        )

    bucketed = BucketedCompleter(completer)
    prefixes = [Prefix(QATask(f"q{i}", ("a",))) for i in range(5)]
    result = bucketed(prefixes, 2)
    assert calls == [prefixes + [prefixes[-1]]]  # 5 → 6 = 3·2^(3−1) rows, the last repeated
    np.testing.assert_array_equal(result.correct, np.tile([True, False], (5, 1)))
    assert result.steps == [[(f"p{i}",)] * 2 for i in range(5)]
    assert vars(bucketed.cost) == {"estimates": 5, "completions": 10, "tokens": 30, "calls": 1}
    bucketed(prefixes[:4], 2)
    assert len(calls[-1]) == 4  # already a bucket


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"pav.reward": "outcome"}, "Unknown pav.reward"),
        ({"pav.alpha": -1.0}, "pav.alpha must be >= 0"),
        ({"pav.completions": 0}, "pav.completions must be >= 1"),
        ({"pav.prover_best_of": 5}, r"pav.prover_best_of must lie in \[1, pav.completions = 4\]"),
        ({"rollout.group_size": 1}, "group_size >= 2"),
        ({"reference": "none"}, "reference='copy'"),
    ],
)
def test_bad_settings_say_what_to_change(tmp_path, setting, message):
    config = get_config("smoke")
    for name, value in setting.items():
        block, _, field = name.rpartition(".")
        (config[block] if block else config)[field] = value
    with pytest.raises(ValueError, match=message):
        PAVRLTrainer(config, MESH, str(tmp_path))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # The shipped SFT warm start on the default world: multi-turn episodes that the prover
    # sometimes completes (the smoke warm start never answers right, so every Q^μ would be 0).
    config = get_config("questions=2,completions=3")
    config.pav.alpha = 0.5
    config.rollout.group_size = 3
    run = build_run(config, str(tmp_path_factory.mktemp("run")))
    run.checkpointer.close()
    return run


def recorded(monkeypatch, obj, name):
    """The results of every call of `obj.name` from now on (the method still runs)."""
    results, method = [], getattr(obj, name)

    def record(*args):
        results.append(method(*args))
        return results[-1]

    monkeypatch.setattr(obj, name, record)
    return results


def test_batch_advantages_are_the_effective_reward_of_the_provers_values(run, monkeypatch):
    trainer, k, n = run.trainer, 3, 3
    provers = recorded(monkeypatch, trainer, "prover_values")
    plays = recorded(monkeypatch, trainer, "play_groups")
    with jax.set_mesh(run.mesh):
        batch, metrics = trainer.next_batch(run.models(), 1, jax.random.PRNGKey(0))
    (prover,), ((questions, trajectories, _),) = provers, plays
    em, turns = trajectories.em, trajectories.num_turns
    values = prover.prefix_values

    # V^μ(x) is one estimate per question; the whole trajectory is worth its own outcome.
    np.testing.assert_array_equal(values[:, 0].reshape(-1, k), values[::k, :1].repeat(k, 1))
    np.testing.assert_array_equal(values[np.arange(len(em)), turns], em)
    # The prover completed each question once and each trajectory after every inner step.
    assert prover.completions == n * (len(questions) + int((turns - 1).sum()))
    assert metrics["prover/completions"] == prover.completions
    assert metrics["sampled_tokens"] == trajectories.loss_mask.sum() + prover.tokens
    assert metrics["trained_tokens"] == trajectories.loss_mask.sum()

    # Every sampled token of step h carries (R − mean of the others) + α·A^μ_h; nothing else
    # is trained; the step values telescope to α·(R − V^μ(x)) on each row.
    advantages, step_id = batch["advantages"], trajectories.step_id
    assert np.all(advantages[trajectories.loss_mask == 0] == 0)
    groups = em.reshape(-1, k)
    loo = ((groups * k - groups.sum(-1, keepdims=True)) / (k - 1)).reshape(-1)
    checked = 0
    for b in range(len(em)):
        per_step = [advantages[b, step_id[b] == h] for h in range(turns[b])]
        if any(len(a) == 0 for a in per_step):
            continue  # a step cut before its first token carries nothing to check
        for a in per_step:
            np.testing.assert_array_equal(a, a[0])
        shaping = sum(float(a[0]) - loo[b] for a in per_step)
        np.testing.assert_allclose(shaping, 0.5 * (em[b] - values[b, 0]), atol=1e-5)
        checked += 1
    assert checked >= len(em) - 1
    assert np.any(values[:, 0] > 0) and np.any(np.diff(values, axis=1) != 0)  # not all zeros
    assert 0.0 <= metrics["progress/nonzero_fraction"] <= 1.0
    assert metrics["prover/value_question"] == pytest.approx(values[:, 0].mean())


def test_alpha_zero_is_rloo_without_prover_completions(run, monkeypatch):
    trainer, k = run.trainer, 3
    monkeypatch.setattr(trainer, "pav", ConfigDict({**trainer.pav.to_dict(), "alpha": 0.0}))
    monkeypatch.setattr(trainer, "prover_values", lambda *a: pytest.fail("prover sampled"))
    plays = recorded(monkeypatch, trainer, "play_groups")
    with jax.set_mesh(run.mesh):
        batch, metrics = trainer.next_batch(run.models(), 2, jax.random.PRNGKey(1))
    ((_, trajectories, _),) = plays
    groups = trajectories.em.reshape(-1, k)
    loo = ((groups * k - groups.sum(-1, keepdims=True)) / (k - 1)).reshape(-1, 1)
    assert np.any(loo != 0)  # some group is mixed
    np.testing.assert_allclose(batch["advantages"], loo * trajectories.loss_mask, atol=1e-6)
    assert metrics["sampled_tokens"] == metrics["sampled_tokens/policy"]
    assert metrics["prover/completions"] == 0 and "progress/std" not in metrics


@pytest.mark.slow  # ~30 s on 2 shared cores (a subprocess: warm start, 3 steps, evaluations)
def test_smoke_config_runs_as_typed(tmp_path):
    workdir = tmp_path / "pav_rl_smoke"
    train_as_typed("pav_rl.py:smoke", workdir)
    with open(workdir / "metrics.jsonl") as f:
        train_records = [r for r in map(json.loads, f) if "loss" in r]
    assert len(train_records) == 3
    for record in train_records:
        assert record["sampled_tokens"] == (
            record["sampled_tokens/policy"] + record["sampled_tokens/prover"]
        )
        assert record["sampled_tokens/prover"] > 0
        assert "progress/std" in record
