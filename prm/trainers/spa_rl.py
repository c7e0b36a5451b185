"""SPA-RL: PPO on step rewards from a learned progress estimator plus grounding.

SPA-RL (Wang et al., 2025, arXiv 2505.20732; notes: pav_and_tree_search.md §5). The outcome of
a trajectory is redistributed over its steps by a progress estimator, a scalar head on a copy
of the SFT policy ("progress" part): c_t is its output at the last token of step t, and it is
trained by regressing the sum of a trajectory's contributions onto its outcome,

    L_progress = (R(τ) − Σ_t c_t)²                   (`prm.rewards.spa.progress_loss`)

Each step's reward fuses its contribution with grounding g_t = 1[action t executed] (here: a
parsed answer, or a search the env ran; invalid steps and a search on the final, search-disabled
call did not execute), r_t = α·c_t + β·g_t on the step's last token
(`prm.rewards.spa.spa_token_rewards`; α = 1, β = 0.5 as in the released code). PPO then runs as
in the released code's trl trainer: a critic ("value" part, a scalar head on another copy of the
SFT policy) gives V(s_t) before every sampled token, GAE over the sampled tokens (observations
skipped, γ = 1, λ = 0.95: trl's defaults) gives advantages (whitened, as trl does) and the
critic's λ-return targets (clipped value loss, trl's cliprange_value 0.2), and the policy takes
the shared PPO-clip + k3 KL step (`prm.training.policy_step`).

Schedule: the paper trains the estimator once on the SFT policy's exploration rollouts, then
runs PPO. Here the first `spa.warmup_steps` steps are that exploration: the policy's loss is
multiplied by 0 (its gradient is exactly 0, so it stays the SFT policy) while the estimator and
the critic fit its rollouts; afterwards all three train on every batch (the estimator keeps
following the current policy's outcomes instead of staying frozen). The contributions used as
rewards come from the estimator before it sees the batch (computed in `prepare`).

Config (see `configs/spa_rl.py`): `rollout.group_size` trajectories per question;
`spa.alpha`, `spa.beta`, `spa.contributions` ("estimator", or "leave_one_out": the released
data script's R_i − mean_{j≠i} R_j of the question's other rollouts on every step),
`spa.weighting` ("none", or "steptool": the released PPO's n − k − 1 step weights),
`spa.warmup_steps`, `spa.gamma`, `spa.lam`, `spa.whiten_advantages`, `spa.value_clip`;
`parts.progress` and `parts.value` (scalar heads with their own learning rates).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.advantages import (
    broadcast_step_values_to_tokens,
    generalized_advantage_estimation,
    rloo_advantages,
)
from prm.envs.protocol import StepResult
from prm.losses import value_loss
from prm.masked import masked_whiten
from prm.registry import TRAINERS
from prm.rewards import spa
from prm.trainers.rl import WorldRLTrainer, token_batch
from prm.training.policy_step import policy_loss, reference_logprobs
from prm.training.update import loss_normalizer

CONTRIBUTIONS = ("estimator", "leave_one_out")
PARTS = ("progress", "value")


def executed(step: StepResult) -> bool:
    """SPA-RL's grounding: the action took effect in the env — an answer, or a search the env
    ran (not an invalid step, nor a search on the final call, where searching is disabled)."""
    return step.action.kind == "answer" or (step.action.kind == "search" and not step.done)


def values_before_tokens(scores: jax.Array) -> jax.Array:
    """V(s_t) of the state before token t: the scalar head's output at t − 1 (0 at t = 0)."""
    return jnp.pad(scores[..., :-1], [(0, 0)] * (scores.ndim - 1) + [(1, 0)])


@TRAINERS.register("spa_rl")
class SPARLTrainer(WorldRLTrainer):
    """Config blocks `rollout` (group_size, temperature, max_step_tokens), `spa`, `parts`."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        self.spa = config.spa
        for name in PARTS:
            part = config.get("parts", {}).get(name)
            if part is None or part.head != "scalar":
                raise ValueError(
                    f"SPA-RL needs config.parts.{name} with head='scalar' (the progress "
                    "estimator and the critic); see configs/spa_rl.py."
                )
        if self.spa.contributions not in CONTRIBUTIONS:
            raise ValueError(
                f"Unknown spa.contributions {self.spa.contributions!r}; use {CONTRIBUTIONS}."
            )
        if self.spa.weighting not in spa.REWARD_WEIGHTINGS:
            raise ValueError(
                f"Unknown spa.weighting {self.spa.weighting!r}; use {spa.REWARD_WEIGHTINGS}."
            )
        if self.spa.contributions == "leave_one_out" and config.rollout.group_size < 2:
            raise ValueError("spa.contributions='leave_one_out' needs rollout.group_size >= 2.")
        self.group_size = config.rollout.group_size

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        _, trajectories, played = self.play_groups(models, rng)
        valid = np.zeros(trajectories.step_rewards.shape, np.float32)
        for b, steps in enumerate(trajectories.steps):
            valid[b, : len(steps)] = [executed(s) for s in steps]
        grounding = np.asarray(broadcast_step_values_to_tokens(valid, trajectories.step_id))
        outcomes = trajectories.reward.astype(np.float32)
        exploring = step <= self.spa.warmup_steps
        batch = token_batch(trajectories, np.zeros(trajectories.loss_mask.shape))
        batch.update(
            step_id=trajectories.step_id,
            grounding=grounding,
            outcome=outcomes,
            policy_update=np.full(outcomes.shape, 0.0 if exploring else 1.0, np.float32),
        )
        if self.spa.contributions == "leave_one_out":
            groups = outcomes.reshape(-1, self.group_size)
            batch["loo_outcome"] = np.asarray(rloo_advantages(groups)).reshape(-1)
        num_steps = float(trajectories.num_turns.sum())
        metrics = {
            "reward": float(outcomes.mean()),
            **played,
            "grounding_accuracy": float(valid.sum() / max(num_steps, 1.0)),
            "exploring": float(exploring),
        }
        return batch, metrics

    def token_rewards(self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array]):
        """[B, T] token rewards α·c_t + β·g_t on step ends, c_t from the current estimator (or
        the leave-one-out outcome) — before this batch's update."""
        if self.spa.contributions == "leave_one_out":
            contributions = jnp.broadcast_to(batch["loo_outcome"][:, None], batch["tokens"].shape)
        else:
            scores = models["progress"](batch["tokens"], batch["input_mask"])
            contributions = jax.lax.stop_gradient(scores)
        return spa.spa_token_rewards(
            contributions, batch["grounding"], batch["step_id"],
            alpha=self.spa.alpha, beta=self.spa.beta, weighting=self.spa.weighting,
        )  # fmt: skip

    def prepare(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        out = reference_logprobs(models, batch, self.loss_config)
        rewards = self.token_rewards(models, batch)
        values = values_before_tokens(models["value"](batch["tokens"], batch["input_mask"]))
        values = jax.lax.stop_gradient(values)
        trained = batch["loss_mask"] > 0
        advantages, returns = generalized_advantage_estimation(
            rewards, values, trained, gamma=self.spa.gamma, lam=self.spa.lam
        )
        if self.spa.whiten_advantages:
            advantages = masked_whiten(advantages, trained)
        out["advantages"] = advantages
        out["returns"], out["old_values"] = returns, jnp.where(trained, values, 0.0)
        return out

    def loss(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """PPO policy loss + critic loss + estimator regression. Each part has its own AdamW
        (scale-invariant) and its own gradient clipping, so the three terms need no weights."""
        del rng
        policy, metrics = policy_loss(models["policy"], batch, self.loss_config)
        # Exploration: a policy gradient of exactly 0 (so AdamW leaves the policy where it is).
        policy = policy * batch["policy_update"][0]
        tokens, input_mask = batch["tokens"], batch["input_mask"]
        predicted = values_before_tokens(models["value"](tokens, input_mask))
        tokens_normalizer = loss_normalizer(batch, "token-mean")
        critic, critic_metrics = value_loss(
            predicted, batch["old_values"], batch["returns"], batch["loss_mask"],
            clip_range=self.spa.value_clip, normalizer=tokens_normalizer,
        )  # fmt: skip
        own_tokens = jnp.maximum(jnp.sum(batch["loss_mask"][:, 1:]), 1.0)
        to_mean = 1.0 if tokens_normalizer is None else tokens_normalizer / own_tokens
        scores = models["progress"](tokens, input_mask)
        has_step = jnp.any(batch["step_id"] >= 0, axis=-1)
        rows = loss_normalizer(batch, "seq-mean-token-sum")
        rows = jnp.maximum(jnp.sum(has_step), 1) if rows is None else rows
        squared = spa.progress_loss(scores, batch["step_id"], batch["outcome"])
        estimator = jnp.sum(squared) / rows
        error = jnp.abs(spa.progress_prediction(scores, batch["step_id"]) - batch["outcome"])
        own_rows = jnp.maximum(jnp.sum(has_step), 1)
        metrics = {
            **metrics,
            **critic_metrics,
            # Logged as this micro-batch's own means (the losses divide by mini-batch counts).
            "value_loss": critic * to_mean,
            "progress_loss": jnp.sum(squared) / own_rows,
            "progress_abs_error": jnp.sum(jnp.where(has_step, error, 0.0)) / own_rows,
            # The paper's training metric: |Σ c_t − R| ≤ 0.1.
            "progress_accuracy": jnp.sum(has_step & (error <= 0.1)) / own_rows,
        }
        return policy + critic + estimator, metrics
