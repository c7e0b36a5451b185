"""SLATE's ablations (prm/trainers/slate.py): full-trajectory sampling with the same judged step
rewards, and truncated sampling with Monte Carlo sibling values; their configs and smoke runs."""

import os

import jax
import numpy as np
import pytest

from configs import slate, slate_full_trajectory, slate_mc
from prm.judges import Judgement, JudgeStats, think_text
from prm.metrics.qa import exact_match
from prm.models import from_pretrained
from prm.registry import TRAINERS
from prm.trainers.slate import (
    SlateFullTrajectoryTrainer,
    SlateMCTrainer,
    full_trajectory_advantages,
)
from prm.training.loop import SHIPPED_WARM_STARTS, warm_start_name
from tests.helpers.train_runs import train_as_typed

MESH = jax.make_mesh((1,), ("data",))
# The shipped SFT warm start of the default world: it writes valid steps and answers some
# questions right, so rewards, values and advantages are not all ties.
SFT = os.path.join(SHIPPED_WARM_STARTS, warm_start_name(slate.get_config().warm_start), "hf")
EPS = 1e-6


def by_hand(values):
    """(x − mean) / (unbiased std + ε) over a group; 0 for a singleton."""
    x = np.asarray(values, np.float64)
    if len(x) < 2:
        return np.zeros_like(x)
    return (x - x.mean()) / (x.std(ddof=1) + EPS)


@pytest.fixture(scope="module")
def policy():
    return from_pretrained(SFT)[0]


def test_registered():
    assert TRAINERS.get("slate_full_trajectory") is SlateFullTrajectoryTrainer
    assert TRAINERS.get("slate_mc") is SlateMCTrainer


# --- Full-trajectory advantages -----------------------------------------------------------------


def test_full_trajectory_advantages_by_hand():
    # Question 0: trajectory 0 took 2 steps, trajectory 1 three, trajectory 2 one.
    rewards = np.array([[[2, -1, 9], [0, 2, 1], [1, 9, 9]],
                        [[1, 1, 1], [-2, 0, 0], [0, 0, 0]]], np.float32)  # fmt: skip
    mask = np.array([[[1, 1, 0], [1, 1, 1], [1, 0, 0]], [[1, 1, 1]] * 3], bool)
    # Return: R = (1, 3, 1), mean 5/3, unbiased std sqrt(4/3); every step of a trajectory.
    a = full_trajectory_advantages(rewards, mask, "return")
    r = np.array([-2 / 3, 4 / 3, -2 / 3]) / (np.sqrt(4 / 3) + EPS)
    np.testing.assert_allclose(a[0], [[r[0], r[0], 0], [r[1], r[1], r[1]], [r[2], 0, 0]], rtol=1e-5)
    # Step: step 0 over (2, 0, 1) → (1, −1, 0); step 1 over the two that reached it (−1, 2) →
    # ±1.5 / sqrt(4.5); step 2 has one trajectory → 0.
    a = full_trajectory_advantages(rewards, mask, "step")
    s = 1.5 / (np.sqrt(4.5) + EPS)
    np.testing.assert_allclose(a[0], [[1, -s, 0], [-1, s, 0], [0, 0, 0]], rtol=1e-5, atol=1e-6)
    # Reward-to-go: G = (1, −1), (3, 3, 1), (1); step 0 as the return, step 1 over (−1, 3).
    a = full_trajectory_advantages(rewards, mask, "reward_to_go")
    g = 2 / (np.sqrt(8) + EPS)
    np.testing.assert_allclose(
        a[0], [[r[0], -g, 0], [r[1], g, 0], [r[2], 0, 0]], rtol=1e-5, atol=1e-6
    )
    # Groups are questions: question 1's advantages are its own, and question 0's do not move
    # when question 1's rewards change.
    for kind in ("return", "step", "reward_to_go"):
        base = full_trajectory_advantages(rewards, mask, kind)
        other = rewards.copy()
        other[1] = np.random.default_rng(0).normal(size=(3, 3))
        np.testing.assert_array_equal(full_trajectory_advantages(other, mask, kind)[0], base[0])
        np.testing.assert_allclose(base[1].sum(0), 0, atol=1e-5)  # centred per step
    np.testing.assert_allclose(
        full_trajectory_advantages(rewards, mask, "return")[1, :, 0], by_hand([3, -2, 0]), rtol=1e-5
    )
    with pytest.raises(ValueError, match="reward_to_go"):
        full_trajectory_advantages(rewards, mask, "gae")


# --- Full-trajectory trainer --------------------------------------------------------------------


class LengthJudge:
    """A deterministic judge: each score is (length of the judged text mod 3) − 1."""

    def __init__(self):
        self.stats = JudgeStats(("judgements",))
        self.requests = []

    def judge(self, requests):
        self.requests += requests
        self.stats.add("judgements", 2 * len(requests))
        return [Judgement(r.kind, len(r.think) % 3 - 1, len(r.content) % 3 - 1) for r in requests]


def test_full_trajectory_rewards_and_advantages_by_hand(tmp_path, policy):
    config = slate_full_trajectory.get_config("k=3,budget=2,questions=3")
    trainer = SlateFullTrajectoryTrainer(config, MESH, str(tmp_path))
    trainer.judge = LengthJudge()
    questions = next(trainer.data)
    played = trainer.play({"policy": policy}, questions, jax.random.PRNGKey(0))
    batch, step_id = trainer.batch(played)
    trajectories, k, budget = played.trajectories, 3, 2
    assert (
        trajectories.tokens.shape[0] == 9
        and (trajectories.group_id == np.repeat([0, 1, 2], 3)).all()
    )
    requests = iter(trainer.judge.requests)
    forced = kinds = 0
    for row, steps in enumerate(trajectories.steps):
        question = questions[row // k]
        queries = []
        for t, step in enumerate(steps[:budget]):
            assert played.exists[row, t]
            if step.action.kind == "invalid":
                expected = -2.0  # invalid_reward (−1, −1), not judged
            else:
                request = next(requests)
                assert (request.content, request.step_index) == (step.action.content, t)
                assert request.previous_queries == tuple(queries)  # its own trajectory's path
                assert request.context.startswith(f"Question: {question.text}")
                think = think_text(step.step_text)
                bonus = 0.1 * (budget - (t + 1)) / budget if step.action.kind == "answer" else 0
                expected = (len(think) % 3 - 1) + (len(step.action.content) % 3 - 1) + bonus
                kinds += 1
            np.testing.assert_allclose(played.rewards[row, t], expected, rtol=1e-6)
            if step.action.kind == "search":
                queries.append(step.action.content)
        assert not played.exists[row, len(steps) :].any()
        forced += len(steps) > budget
        # The forced answer (step B) is sampled but not trained.
        assert (trajectories.loss_mask[row][trajectories.step_id[row] >= budget] == 1).all()
        assert not batch["loss_mask"][row][trajectories.step_id[row] >= budget].any()
    assert next(requests, None) is None and kinds > 0 and forced > 0
    # Return advantages within each question's k trajectories, on every trained token.
    returns = (played.rewards * played.exists).sum(1)
    for q in range(3):
        advantages = by_hand(returns[q * k : (q + 1) * k])
        for row in range(q * k, (q + 1) * k):
            trained = batch["loss_mask"][row] > 0
            np.testing.assert_allclose(batch["advantages"][row][trained], advantages[row - q * k],
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
            np.testing.assert_array_equal(trained, step_id[row] >= 0)
    assert np.abs(batch["advantages"]).sum() > 0
    metrics = trainer.metrics(played, batch, step_id)
    assert metrics["judge/candidates"] == kinds
    assert metrics["steps_per_question"] == played.exists.sum() / 9
    assert np.isfinite(metrics["advantage_variance/step"])


def test_full_trajectory_config_errors(tmp_path):
    config = slate_full_trajectory.get_config("smoke")
    config.rollout.action_choice = "constrained"
    with pytest.raises(ValueError, match="action_choice='free'"):
        SlateFullTrajectoryTrainer(config, MESH, str(tmp_path))
    with pytest.raises(ValueError, match="advantage"):
        SlateFullTrajectoryTrainer(
            slate_full_trajectory.get_config("smoke,advantage=gae"), MESH, str(tmp_path)
        )


# --- Monte Carlo sibling values -----------------------------------------------------------------


def test_mc_values_are_the_mean_outcome_of_their_completions(tmp_path, policy, monkeypatch):
    config = slate_mc.get_config("k=3,m=4,budget=3,questions=4,action_choice=constrained")
    trainer = SlateMCTrainer(config, MESH, str(tmp_path))
    assert trainer.judge is None
    envs = []
    make_env = trainer.make_env
    monkeypatch.setattr(trainer, "make_env", lambda: envs.append(make_env()) or envs[-1])
    questions = next(trainer.data)
    played = trainer.play({"policy": policy}, questions, jax.random.PRNGKey(1))
    # envs[0] plays the episodes; then one env per step holds that step's completions:
    # episode (q·k + j)·m + i is completion i of sibling j of question q.
    completion_envs = iter(envs[1:])
    kinds, k, m = set(), 3, 4
    for t in sorted({g.step for g in played.groups}):
        episodes = next(completion_envs).episodes
        assert len(episodes) == len(questions) * k * m  # the same shape at every step
        for group in [g for g in played.groups if g.step == t]:
            question = questions[group.question]
            for j, sibling in enumerate(group.siblings):
                completions = episodes[(group.question * k + j) * m :][:m]
                if not sibling.valid:
                    assert group.rewards[j] == 0 and not group.completions[j].any()
                    assert not any(e.actions for e in completions)  # not played
                    continue
                kinds.add(sibling.action.kind)
                outcomes = []
                for episode in completions:
                    assert episode.question == question.text
                    # It replayed the chosen path, then executed this sibling's action.
                    assert episode.actions[:t] == [r.action for r in group.path]
                    assert episode.actions[t] == sibling.action
                    answer = episode.answer
                    outcomes.append(
                        0.0 if answer is None else exact_match(answer, question.answers)
                    )
                    if sibling.action.kind == "answer":
                        assert len(episode.actions) == t + 1 and answer == sibling.action.content
                np.testing.assert_array_equal(group.completions[j], outcomes)
                np.testing.assert_allclose(group.rewards[j], np.mean(outcomes), rtol=1e-6)
            np.testing.assert_allclose(
                group.advantages, by_hand(group.rewards), rtol=1e-5, atol=1e-6
            )
        # Questions that already answered have no completions.
        done = set(range(len(questions))) - {g.question for g in played.groups if g.step == t}
        assert not any(episodes[i].actions for q in done for i in range(q * k * m, (q + 1) * k * m))
    assert next(completion_envs, None) is None
    values = np.concatenate([g.rewards for g in played.groups])
    assert kinds == {"search", "answer"} and values.max() > 0 and values.min() < 1
    assert any(0 < v < 1 for v in values)  # some sibling's completions disagree
    sibling_tokens = sum(len(s.tokens) for g in played.groups for s in g.siblings)
    completion_tokens = sum(g.completion_tokens for g in played.groups)
    assert completion_tokens > 0 and played.sampled_tokens >= sibling_tokens + completion_tokens
    batch, step_id = trainer.batch(played, len(questions))
    metrics = trainer.metrics(played, batch, step_id)
    assert metrics["judge/candidates"] == 0 and "judge_stats/judgements" not in metrics


def test_mc_config_errors(tmp_path):
    with pytest.raises(ValueError, match="completions >= 1"):
        SlateMCTrainer(slate_mc.get_config("smoke,m=0"), MESH, str(tmp_path))
    assert "judge" not in slate_mc.get_config("smoke")


# --- Sweep options and smoke runs ---------------------------------------------------------------


def test_sweep_options():
    assert slate.get_config("eta=argmax").rollout.eta == 0.0
    assert slate.get_config("eta=0.3").rollout.eta == 0.3
    c = slate.get_config("k=8,budget=3,judge_error=0.2")
    assert (c.rollout.k, c.rollout.budget, c.judge.error_rate) == (8, 3, 0.2)
    with pytest.raises(ValueError, match="float or 'argmax'"):
        slate.get_config("eta=greedy")
    c = slate_mc.get_config("k=4,eta=argmax,budget=3,m=6")
    assert (c.rollout.k, c.rollout.eta, c.rollout.budget, c.rollout.completions) == (4, 0, 3, 6)
    c = slate_full_trajectory.get_config("k=4,budget=3,judge_error=0.1,advantage=step")
    assert (c.rollout.k, c.rollout.budget, c.judge.error_rate) == (4, 3, 0.1)
    assert c.rollout.full_advantage == "step" and c.trainer == "slate_full_trajectory"
    with pytest.raises(ValueError, match="Unknown config option 'eta'"):
        slate_full_trajectory.get_config("eta=0.5")  # no selection: it samples whole trajectories


@pytest.mark.parametrize("config", ["slate_full_trajectory.py:smoke", "slate_mc.py:smoke,m=2"])
def test_smoke_configs_run_as_typed(tmp_path, config):
    train_as_typed(config, tmp_path / "run")
