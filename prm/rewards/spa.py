"""Stepwise progress attribution: per-step contributions that add up to the outcome, plus grounding.

Wang et al. 2025, "SPA-RL: Reinforcing LLM Agents via Stepwise Progress Attribution" (arXiv
2505.20732; notes: pav_and_tree_search.md §5). A progress estimator gives step t of a trajectory
τ a contribution c_t, read at the last token of the step (it sees the history up to and including
action t, not the observation after it). It learns from outcomes alone:

    L(θ) = E_τ (R(τ) − Σ_t c_t)²                                    (SPA-RL §5.3; no step labels)

and RL rewards each step with its contribution fused with grounding, g_t = 1 when action t was
valid (it executed in the environment):

    r_t = α·c_t + β·g_t          (the released code: α = 1, β = 0.5)

placed on the last token of step t (the code's PPO: "step rewards go on the last token of each
step's response").

Token layout (`TrajectoryBatch`): arrays are `[..., T]` with `step_id[..., T]` — −1 on context
(prompt, observations, padding), t on the tokens sampled at step t, each step's tokens contiguous.
Per-token arrays (`scores`, `grounding`) are read only at step ends, so a per-token model output
serves as c_t directly and anything stored elsewhere (padding NaNs) never reaches a result.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax.numpy as jnp

REWARD_WEIGHTINGS = ("none", "steptool")


def step_end_mask(step_id: chex.Array) -> chex.Array:
    """bool `[..., T]`: True at the last token of every step (a step token whose successor is
    not a token of the same step)."""
    if not jnp.issubdtype(step_id.dtype, jnp.integer):
        raise ValueError(f"step_id must be integers, got dtype {step_id.dtype}.")
    following = jnp.concatenate([step_id[..., 1:], jnp.full_like(step_id[..., :1], -1)], axis=-1)
    return (step_id >= 0) & (following != step_id)


def progress_prediction(scores: chex.Array, step_id: chex.Array) -> chex.Array:
    """R̂(τ) = Σ_t c_t: `[...]` sum of the per-token `scores` `[..., T]` at the step ends."""
    chex.assert_equal_shape([scores, step_id])
    return jnp.sum(jnp.where(step_end_mask(step_id), scores, 0.0), axis=-1)


def progress_loss(scores: chex.Array, step_id: chex.Array, outcomes: chex.Array) -> chex.Array:
    """(R(τ) − Σ_t c_t)² per trajectory, `[...]`; 0 for a row with no step (nothing to attribute).

    Args:
      scores: `[..., T]` estimator outputs; c_t is the output at the last token of step t.
      step_id: `[..., T]`.
      outcomes: `[...]` final rewards R(τ).
    """
    chex.assert_rank(outcomes, step_id.ndim - 1)
    chex.assert_equal_shape_prefix([outcomes, step_id], step_id.ndim - 1)
    has_step = jnp.any(step_id >= 0, axis=-1)
    error = outcomes - progress_prediction(scores, step_id)
    return jnp.where(has_step, jnp.square(error), 0.0)


def steptool_step_weights(step_id: chex.Array) -> chex.Array:
    """`[..., T]` weight n − k − 1 of step k (0-based) of a row with n steps, at every step token;
    0 on context.

    The released PPO's `compute_rewards` (taken from StepTool) scales step k's reward by it, so
    the last step's reward has weight 0 and early steps are up-weighted (notes §5.4: unclear
    whether intended; offered as an ablation, not the paper's method).
    """
    num_steps = jnp.max(step_id, axis=-1, keepdims=True) + 1
    return jnp.where(step_id >= 0, num_steps - step_id - 1, 0).astype(jnp.float32)


def spa_token_rewards(
    contributions: chex.Array,
    grounding: chex.Array,
    step_id: chex.Array,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    weighting: Literal["none", "steptool"] = "none",
) -> chex.Array:
    """Token rewards r[..., t] = α·c_k + β·g_k at the last token of each step k, 0 elsewhere.

    Args:
      contributions: `[..., T]` c_k, read at the last token of step k (estimator outputs; any
        per-step value broadcast over the step's tokens also works).
      grounding: `[..., T]` g_k ∈ {0, 1} (1: action k was valid), read at the same tokens.
      step_id: `[..., T]`.
      alpha, beta: weights of progress and grounding.
      weighting: "none" (the paper) or "steptool" (× `steptool_step_weights`, the released
        code's PPO).
    """
    chex.assert_equal_shape([contributions, grounding, step_id])
    if weighting not in REWARD_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {REWARD_WEIGHTINGS}, got {weighting!r}.")
    ends = step_end_mask(step_id)
    rewards = alpha * contributions + beta * grounding.astype(contributions.dtype)
    if weighting == "steptool":
        rewards = rewards * steptool_step_weights(step_id)
    return jnp.where(ends, rewards, 0.0)
