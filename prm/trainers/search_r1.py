"""Search-R1 with GRPO: groups of full trajectories per question, one outcome reward each.

Search-R1 (Jin et al., 2025, arXiv 2503.09516; notes: search_r1_stepsearch.md §1-2): per
question, n trajectories (n = 5) are played to their end with the retriever in the loop; each
gets the outcome reward r = EM(answer, golds) (or, by option, Search-R1's format-shaped EM,
`prm.rewards.search_r1_format_reward`); the GRPO advantage of trajectory i of group g is

    A_i = (r_i − mean_g r) / (std_g r + ε)        (unbiased std, ε = 1e-6; `grpo_advantages`)

and every sampled token of the trajectory gets A_i (observation tokens are masked out). The
update is PPO-clip with a k3 KL to the frozen reference (`prm.training.policy_step`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from prm.advantages import grpo_advantages
from prm.registry import TRAINERS
from prm.rewards.outcome import search_r1_format_reward
from prm.trainers.rl import (
    WorldRLTrainer,
    advantage_variances,
    centred_advantage_variances,
    token_batch,
)

REWARDS = ("em", "format")


@TRAINERS.register("search_r1")
class SearchR1Trainer(WorldRLTrainer):
    """Config: `rollout.group_size` (n), `rollout.reward` ("em" | "format")."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        if config.rollout.reward not in REWARDS:
            raise ValueError(f"Unknown rollout.reward {config.rollout.reward!r}; use {REWARDS}.")
        if config.rollout.group_size < 2:
            raise ValueError("GRPO needs rollout.group_size >= 2 trajectories per question.")
        self.group_size = config.rollout.group_size

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        questions, trajectories, played = self.play_groups(models, rng)
        rewards = self.rewards(trajectories, questions)
        advantages = np.asarray(grpo_advantages(rewards.reshape(-1, self.group_size))).reshape(-1)
        token_advantages = advantages[:, None] * trajectories.loss_mask
        metrics = {
            "reward": float(rewards.mean()),
            **played,
            **advantage_variances(token_advantages, trajectories.step_id),
            **centred_advantage_variances(rewards.reshape(-1, self.group_size)),
        }
        return token_batch(trajectories, token_advantages), metrics

    def rewards(self, trajectories: Any, questions: list[Any]) -> np.ndarray:
        """Outcome reward per trajectory: EM, or Search-R1's format-shaped EM of the response
        (everything after the prompt, observations included, as its reward function sees it)."""
        if self.config.rollout.reward == "em":
            return trajectories.em.astype(np.float32)
        tokenizer = self.assets.tokenizer
        rewards = []
        for row, (tokens, step_id, real) in enumerate(
            zip(trajectories.tokens, trajectories.step_id, trajectories.input_mask)
        ):
            response = tokens[int(np.argmax(step_id >= 0)) : int(real.sum())]
            text = tokenizer.decode(response, skip_special_tokens=True)
            rewards.append(search_r1_format_reward(text, questions[row // self.group_size].answers))
        return np.asarray(rewards, np.float32)
