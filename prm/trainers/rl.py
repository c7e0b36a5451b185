"""What every RL trainer on the synthetic search world shares: questions, env, sampler settings,
π_old/π_ref before the update, the PPO-clip + KL loss and greedy QA evaluation.

A method is then only its `next_batch`: how it samples (full trajectories in groups,
`play_groups`; SLATE's step siblings; tree search) and how it turns rewards into per-token
advantages. Config blocks read here (see `configs/search_r1.py`):

    data        "world_questions" source: questions per step, world, seq_len, env, expert;
                or "search_r1_questions": Search-R1 files, HF tokenizer, retriever URL, template
    rollout     temperature, max_step_tokens (decode budget of one step); group_size
                (trajectories per question) for `play_groups`
    policy_loss `PolicyLossConfig` fields (clip, dual clip, ratio level, aggregation, KL)
    eval.qa     greedy held-out evaluation (`prm.evaluation.qa_metrics`)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from prm.envs.expert import WORLD_ENV_CONFIG
from prm.envs.protocol import COMPACT_TEMPLATE, QATask, SearchEnv
from prm.envs.synthetic_world import Question
from prm.evaluation import qa_metrics
from prm.rollouts import RolloutConfig, TrajectoryBatch, rollout
from prm.sampling import Sampler, SamplingParams
from prm.training.policy_step import PolicyLossConfig, policy_loss, reference_logprobs
from prm.training.trainer import Trainer


class WorldRLTrainer(Trainer):
    """Base of the RL trainers on the synthetic world; subclasses implement `next_batch`."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        self.assets = self.data.assets
        self.loss_config = PolicyLossConfig(**config.policy_loss)
        self.env_config = dataclasses.replace(WORLD_ENV_CONFIG, **dict(config.data.env))
        self.rollout_config = RolloutConfig(
            max_step_tokens=config.rollout.max_step_tokens,
            max_length=config.data.seq_len,
            sampling=SamplingParams(temperature=config.rollout.temperature),
        )

    def tokenizer(self) -> Any:
        return self.assets.tokenizer

    def make_env(self) -> SearchEnv:
        """A fresh env over the source's retriever, with its prompt (`template`; the world's is
        the compact prompt the SFT policy learnt)."""
        template = getattr(self.data, "template", COMPACT_TEMPLATE)
        return SearchEnv(self.assets.retriever, self.env_config, self.assets.tokenizer, template)

    def sampler(self, models: Mapping[str, nnx.Module]) -> Sampler:
        return Sampler(models["policy"], pad_token_id=self.assets.tokenizer.pad_token_id)

    @staticmethod
    def tasks(questions: list[Question]) -> list[QATask]:
        return [QATask(q.text, q.answers) for q in questions]

    def play_trajectories(
        self,
        models: Mapping[str, nnx.Module],
        questions: Sequence[Question],
        group_size: int,
        rng: jax.Array,
    ) -> TrajectoryBatch:
        """`group_size` full trajectories per question, played with the retriever in the loop
        (row q·group_size + j is trajectory j of `questions[q]`)."""
        config = dataclasses.replace(self.rollout_config, group_size=group_size)
        return rollout(
            self.sampler(models), self.make_env(), self.assets.tokenizer,
            self.tasks(questions), config, key=rng,
        )  # fmt: skip

    def play_groups(
        self, models: Mapping[str, nnx.Module], rng: jax.Array
    ) -> tuple[list[Question], TrajectoryBatch, dict[str, float]]:
        """The source's next questions, `rollout.group_size` trajectories of each
        (`play_trajectories`), and the rollout's metrics: EM, turns, time and throughput."""
        questions = next(self.data)
        started = time.perf_counter()
        trajectories = self.play_trajectories(
            models, questions, self.config.rollout.group_size, rng
        )
        seconds = time.perf_counter() - started
        metrics = {
            "exact_match": float(trajectories.em.mean()),
            "turns": float(trajectories.num_turns.mean()),
            **throughput_metrics(float(trajectories.loss_mask.sum()), seconds),
        }
        return questions, trajectories, metrics

    def prepare(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        return reference_logprobs(models, batch, self.loss_config)

    def loss(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        del rng
        return policy_loss(models["policy"], batch, self.loss_config)

    def evaluate(self, models: Mapping[str, nnx.Module], step: int) -> dict[str, float]:
        return qa_metrics(
            models["policy"], self.config.data, self.config.eval.qa, self.workdir, step
        )


def throughput_metrics(sampled_tokens: float, seconds: float) -> dict[str, float]:
    """How long a train step's sampling took and how many tokens it sampled, per second."""
    return {
        "rollout_time_s": seconds,
        "sampled_tokens": sampled_tokens,
        "sampled_tokens_per_s": sampled_tokens / seconds,
    }


def token_batch(trajectories: TrajectoryBatch, token_advantages: np.ndarray) -> dict[str, Any]:
    """The arrays the policy update reads (`prm.training.policy_step` layout)."""
    return {
        "tokens": trajectories.tokens,
        "input_mask": trajectories.input_mask,
        "loss_mask": trajectories.loss_mask,
        "advantages": token_advantages.astype(np.float32),
        "old_logprobs": trajectories.logprobs,
    }


def advantage_variances(token_advantages: np.ndarray, step_id: np.ndarray) -> dict[str, float]:
    """Measured variance of the advantage estimates of a batch (the quantity SLATE's theorem is
    about): over trained tokens, and over (row, step) pairs — one value per policy step."""
    trained = step_id >= 0
    per_step = [
        token_advantages[b, step_id[b] == s][0]
        for b in range(step_id.shape[0])
        for s in np.unique(step_id[b][trained[b]])
    ]
    return {
        "advantage_variance/token": float(np.var(token_advantages[trained]))
        if trained.any()
        else 0.0,
        "advantage_variance/step": float(np.var(per_step)) if per_step else 0.0,
    }


def centred_advantage_variances(
    rewards: np.ndarray, steps: np.ndarray | None = None
) -> dict[str, float]:
    """Variance of the group-centred advantages r_j − mean_group r, before the division by the
    group's std that GRPO and SLATE (Eq. 5) apply: the raw advantages of SLATE's variance theorem
    (`prm.theory.variance`, assumption A3), which the std normalisation hides.

    Args:
      rewards: [G, k] the rewards of G groups of k (GRPO: outcomes of k trajectories of one
        question; SLATE: step rewards of k siblings of one prefix).
      steps: [G] the 0-indexed step t of each group (SLATE), or None (whole trajectories).

    Returns:
      "centred_advantage_variance/step": the variance over all G·k centred advantages; with
      `steps`, also per step t (1-indexed) "centred_advantage_variance/t{t}" and the number of
      groups it pools, "groups/t{t}". Since the advantages of a group sum to 0, each equals
      (1 − 1/k) × the mean over groups of their unbiased reward variance.
    """
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, k >= 2], got shape {rewards.shape}.")
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    metrics = {"centred_advantage_variance/step": float(np.mean(np.square(centred)))}
    if steps is not None:
        steps = np.asarray(steps)
        for t in np.unique(steps):
            at_t = centred[steps == t]
            metrics[f"centred_advantage_variance/t{t + 1}"] = float(np.mean(np.square(at_t)))
            metrics[f"groups/t{t + 1}"] = float(len(at_t))
    return metrics
