"""Advantage estimators: group baselines, returns, GAE, PRIME, and the step → token gather.

Every method in prm ends in one table, an advantage per trained token; these functions fill it.

Groups come in two layouts that share one implementation (`_Groups`):
  * dense: the group is the last axis, `rewards[..., k]`, with an optional validity mask — the
    jit-friendly layout (GRPO's K samples per prompt, SLATE's k siblings per step);
  * ragged: `rewards[N]` with `group_ids[N]` in `[0, num_groups)` (`jax.ops.segment_sum`), for
    groups of different sizes; `num_groups` is static so the function jits.

Conventions shared by the group estimators (documented values instead of NaN):
  * a reward that is masked out, or not finite (NaN/±inf from e.g. a failed judge parse), is
    excluded from its group's statistics and gets advantage 0;
  * a group with fewer than 2 valid members has no baseline to compare against: advantage 0
    (verl instead passes the raw reward through for size-1 groups);
  * a group whose valid rewards are all equal gets exactly 0 (the statistics are computed on
    rewards shifted by the group maximum, so equal rewards cancel exactly in any float format);
  * ragged ids outside `[0, num_groups)` are treated as invalid (advantage 0).
Static misuse (a dense group of size 1, mismatched shapes, missing `num_groups`) raises.

Token-level functions take `[..., T]` arrays with time last and any leading batch shape.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp

from prm.masked import masked_mean

_NEG_INF = -jnp.inf


def _as_float(x: chex.Array) -> chex.Array:
    """At least float32: group statistics and long scans are too coarse in bfloat16."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class _Groups:
    """Per-element group reductions: `sum(x)[i]` is the sum of x over i's group (broadcast back)."""

    def __init__(self, group_ids: chex.Array | None = None, num_groups: int | None = None):
        self.group_ids = group_ids
        self.num_groups = num_groups

    def sum(self, x: chex.Array) -> chex.Array:
        if self.group_ids is None:
            return jnp.sum(x, axis=-1, keepdims=True)
        totals = jax.ops.segment_sum(x, self.group_ids, num_segments=self.num_groups)
        return totals.at[self.group_ids].get(mode="fill", fill_value=0)

    def max(self, x: chex.Array) -> chex.Array:
        if self.group_ids is None:
            return jnp.max(x, axis=-1, keepdims=True)
        maxima = jax.ops.segment_max(x, self.group_ids, num_segments=self.num_groups)
        return maxima.at[self.group_ids].get(mode="fill", fill_value=0)


def _make_groups(
    rewards: chex.Array,
    mask: chex.Array | None,
    group_ids: chex.Array | None,
    num_groups: int | None,
) -> tuple[chex.Array, chex.Array, _Groups]:
    """Validates the layout; returns float rewards, the validity mask and the reducer."""
    rewards = _as_float(rewards)
    if mask is None:
        mask = jnp.ones(rewards.shape, bool)
    chex.assert_equal_shape([rewards, mask])
    valid = mask.astype(bool) & jnp.isfinite(rewards)
    if group_ids is None:
        if num_groups is not None:
            raise ValueError("num_groups is only used with group_ids (the ragged layout).")
        if rewards.ndim == 0 or rewards.shape[-1] < 2:
            raise ValueError(
                f"Dense groups lie along the last axis and need at least 2 members; got rewards "
                f"of shape {rewards.shape}. Sample k >= 2 per group, or pass group_ids and "
                "num_groups for ragged groups."
            )
        return rewards, valid, _Groups()
    chex.assert_rank(rewards, 1)
    chex.assert_equal_shape([rewards, group_ids])
    if not jnp.issubdtype(jnp.asarray(group_ids).dtype, jnp.integer):
        raise ValueError(f"group_ids must be integers, got dtype {jnp.asarray(group_ids).dtype}.")
    if num_groups is None or num_groups < 1:
        raise ValueError(
            f"Ragged groups need a static num_groups >= 1 (the number of segments), got "
            f"{num_groups}; ids must lie in [0, num_groups)."
        )
    valid = valid & (group_ids >= 0) & (group_ids < num_groups)
    return rewards, valid, _Groups(group_ids, num_groups)


def _group_centered(
    rewards: chex.Array, valid: chex.Array, groups: _Groups
) -> tuple[chex.Array, chex.Array]:
    """(r − group mean) at valid entries (0 elsewhere) and the group's valid count."""
    shift = groups.max(jnp.where(valid, rewards, _NEG_INF))
    shifted = jnp.where(valid, rewards - jnp.where(valid, shift, 0.0), 0.0)
    count = groups.sum(valid.astype(rewards.dtype))
    mean = groups.sum(shifted) / jnp.maximum(count, 1.0)
    centered = jnp.where(valid, shifted - mean, 0.0)
    return jnp.broadcast_to(centered, rewards.shape), jnp.broadcast_to(count, rewards.shape)


def grpo_advantages(
    rewards: chex.Array,
    mask: chex.Array | None = None,
    *,
    group_ids: chex.Array | None = None,
    num_groups: int | None = None,
    scale_by_std: bool = True,
    ddof: int = 1,
    eps: float = 1e-6,
) -> chex.Array:
    """Group-normalised advantage (GRPO): A_i = (r_i − mean_g r) / (std_g r + eps).

    DeepSeekMath (arXiv 2402.03300) §4.1.2 outcome supervision; verl's `grpo` estimator (and
    Search-R1's GRPO runs) use the unbiased std (`ddof=1`) and eps = 1e-6 added to the std, the
    defaults here. `ddof=0` gives the population std. `scale_by_std=False` is Dr. GRPO
    (arXiv 2503.20783): A_i = r_i − mean_g r, which removes the question-difficulty bias.

    Args:
      rewards: `[..., k]` (dense: groups along the last axis) or `[N]` with `group_ids`.
      mask: same shape; False marks absent members (padding of short groups).
      group_ids: `[N]` ints in `[0, num_groups)` for ragged groups.
      num_groups: static number of groups (ragged layout only).
      scale_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
      ddof: std denominator is `n − ddof`.
      eps: added to the std.

    Returns:
      Advantages with the shape of `rewards`; see the module docstring for masked, non-finite,
      singleton and all-equal groups.
    """
    if ddof < 0 or eps < 0:
        raise ValueError(f"ddof and eps must be non-negative, got ddof={ddof}, eps={eps}.")
    rewards, valid, groups = _make_groups(rewards, mask, group_ids, num_groups)
    centered, count = _group_centered(rewards, valid, groups)
    if not scale_by_std:
        return centered
    sq = groups.sum(jnp.square(centered))
    var = jnp.where(count > ddof, sq / jnp.maximum(count - ddof, 1.0), 0.0)
    return centered / (jnp.sqrt(var) + eps)


def rloo_advantages(
    rewards: chex.Array,
    mask: chex.Array | None = None,
    *,
    group_ids: chex.Array | None = None,
    num_groups: int | None = None,
) -> chex.Array:
    """REINFORCE leave-one-out: A_i = r_i − (1/(n−1)) Σ_{j≠i} r_j = n/(n−1)·(r_i − mean_g r).

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free"); Ahmadian et al. 2024
    (arXiv 2402.14740); PRIME (arXiv 2502.01456) Eq. 4 for the outcome reward. Layouts and
    edge cases as in `grpo_advantages` (n is the group's number of valid members).
    """
    rewards, valid, groups = _make_groups(rewards, mask, group_ids, num_groups)
    centered, count = _group_centered(rewards, valid, groups)
    return jnp.where(count > 1, centered * count / jnp.maximum(count - 1.0, 1.0), 0.0)


def sibling_step_advantages(
    step_rewards: chex.Array, mask: chex.Array | None = None, *, eps: float = 1e-6
) -> chex.Array:
    """SLATE's step-group advantage among k siblings of one prefix (arXiv 2602.23440, Eq. 5).

        A_t^(j) = (r_t^(j) − mean_i r_t^(i)) / (std_i r_t^(i) + eps),  std unbiased, eps = 1e-6,

    where the k candidates for step t share the prefix τ_<t, so every reward term that does not
    depend on a_t cancels: the source of the paper's "up to a factor of T" variance reduction.
    All-equal sibling rewards give exactly 0 (those groups carry no signal and may be dropped).

    Args:
      step_rewards: `[..., k]`, e.g. `[questions, steps, k]`.
      mask: same shape; False marks siblings or steps that do not exist (a trajectory that
        answered before the step budget).
      eps: added to the std.
    """
    return grpo_advantages(step_rewards, mask, scale_by_std=True, ddof=1, eps=eps)


def _check_discount(name: str, value: float | chex.Array) -> None:
    if isinstance(value, int | float) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}.")


def generalized_advantage_estimation(
    rewards: chex.Array,
    values: chex.Array,
    mask: chex.Array,
    *,
    gamma: float | chex.Array,
    lam: float | chex.Array,
    bootstrap_value: chex.Array | None = None,
) -> tuple[chex.Array, chex.Array]:
    """GAE over tokens (Schulman et al. 2016, arXiv 1506.02438, Eq. 16), as a reverse scan.

        δ_t = r_t + γ·V_next(t) − V_t,     A_t = δ_t + γλ·A_next(t),     returns_t = A_t + V_t,

    where next(t) is the next *unmasked* token after t (or the end). `returns` are the
    λ-returns, the critic's targets; with λ = 1 and V ≡ 0 they are discounted returns.

    Masked tokens neither receive nor break the recursion: the sequence is treated as if they
    were cut out. Their reward and value are ignored, their outputs are 0, and the carry passes
    through them unchanged. Example (multi-turn search, loss mask 0 on `<information>`): the
    last token of `</search>` bootstraps from the value of the first trained token after the
    observation, with a single factor γ (observation tokens cost no discount), so a reward
    placed on a trained token keeps reaching every earlier trained token. To reproduce
    Search-R1's PPO, which runs GAE over observation tokens too, pass the attention mask
    instead of the loss mask. Right padding (mask 0) makes the last valid token terminal.

    Args:
      rewards: `[..., T]` token rewards (e.g. outcome on the last token, −β·KL per token).
      values: `[..., T]` critic values V(s_t) (stop their gradient in the caller if needed).
      mask: `[..., T]` tokens that take part in the recursion.
      gamma: discount per unmasked token.
      lam: GAE λ.
      bootstrap_value: `[...]` value after the last unmasked token (truncated episode);
        default 0 (terminal).

    Returns:
      `(advantages, returns)`, each `[..., T]`, 0 at masked positions.
    """
    rewards = _as_float(rewards)
    chex.assert_equal_shape([rewards, values, mask])
    _check_discount("gamma", gamma)
    _check_discount("lam", lam)
    mask = mask.astype(bool)
    values = jnp.where(mask, values.astype(rewards.dtype), 0.0)
    rewards = jnp.where(mask, rewards, 0.0)
    if bootstrap_value is None:
        bootstrap_value = jnp.zeros(rewards.shape[:-1], rewards.dtype)
    chex.assert_shape(bootstrap_value, rewards.shape[:-1])

    def step(carry, inputs):
        next_value, next_advantage = carry
        reward, value, keep = inputs
        delta = reward + gamma * next_value - value
        advantage = delta + gamma * lam * next_advantage
        carry = (jnp.where(keep, value, next_value), jnp.where(keep, advantage, next_advantage))
        return carry, jnp.where(keep, advantage, 0.0)

    time_major = [jnp.moveaxis(x, -1, 0) for x in (rewards, values, mask)]
    init = (bootstrap_value.astype(rewards.dtype), jnp.zeros_like(bootstrap_value, rewards.dtype))
    _, advantages = jax.lax.scan(step, init, time_major, reverse=True)
    advantages = jnp.moveaxis(advantages, 0, -1)
    return advantages, jnp.where(mask, advantages + values, 0.0)


def discounted_returns(
    rewards: chex.Array,
    mask: chex.Array,
    *,
    gamma: float | chex.Array,
    bootstrap_value: chex.Array | None = None,
) -> chex.Array:
    """G_t = r_t + γ·G_next(t) over unmasked tokens (reward-to-go; REINFORCE, PRIME Eq. 5).

    Same masking semantics as `generalized_advantage_estimation` (it is GAE with V ≡ 0, λ = 1):
    masked tokens are skipped, get 0, and their rewards are ignored.
    """
    advantages, _ = generalized_advantage_estimation(
        rewards,
        jnp.zeros(jnp.shape(rewards), _as_float(rewards).dtype),
        mask,
        gamma=gamma,
        lam=1.0,
        bootstrap_value=bootstrap_value,
    )
    return advantages


def prime_advantages(
    process_rewards: chex.Array,
    outcome_rewards: chex.Array,
    mask: chex.Array,
    *,
    gamma: float | chex.Array = 1.0,
    baseline: Literal["paper", "public_code"] = "paper",
) -> chex.Array:
    """PRIME's combined advantage: leave-one-out process returns + leave-one-out outcome.

    Paper form (PRIME, arXiv 2502.01456, Eq. 5), for response i of K with implicit token
    rewards r_s^i = β·log π_φ/π_ref and token-mean m_j = mean_s r_s^j:

        A_t^i = Σ_{s≥t} γ^{s−t}·[ r_s^i − (1/(K−1)) Σ_{j≠i} m_j ]  +  r_o^i − (1/(K−1)) Σ_{j≠i} r_o^j.

    The process part is discounted; the outcome part is plain RLOO, added undiscounted to every
    token (PRIME issue #37; the code places it on the last token and discounts with
    `verifier_gamma = 1`, which is the same).

    `baseline="public_code"` reproduces PRIME-RL/PRIME's `compute_rloo_returns` (also verl's
    `recipe/prime`), whose per-token leave-one-out is
        r̃_s^i = K/(K−1)·r_s^i − (1/(K−1))·Σ_j m_j     (the sum includes i),
    i.e. the paper form plus (r_s^i − m_i)/(K−1). That term sums to 0 over a response's tokens,
    so with γ = 1 the two agree at t = 0 and differ at later tokens. Not included here, both
    done by the caller: the public code first rescales the rewards by 1/(max_i |Σ_{s≥t} r_s^i|
    + 1e-6) over the batch ("batch_norm"), and finally whitens the returns over all valid
    tokens (`prm.masked.masked_whiten(..., ddof=1)`).

    Args:
      process_rewards: `[..., K, T]` implicit token rewards of K responses to one prompt.
      outcome_rewards: `[..., K]` verifier rewards.
      mask: `[..., K, T]` response tokens.
      gamma: discount of the process rewards.
      baseline: "paper" (Eq. 5) or "public_code".

    Returns:
      `[..., K, T]` advantages, 0 at masked positions. Non-finite outcome rewards follow
      `rloo_advantages` (excluded, outcome term 0).
    """
    process_rewards = _as_float(process_rewards)
    chex.assert_equal_shape([process_rewards, mask])
    chex.assert_rank(outcome_rewards, process_rewards.ndim - 1)
    chex.assert_equal_shape_prefix([process_rewards, outcome_rewards], process_rewards.ndim - 1)
    num_samples = process_rewards.shape[-2]
    if num_samples < 2:
        raise ValueError(
            f"PRIME's leave-one-out needs K >= 2 responses per prompt, got K = {num_samples}."
        )
    if baseline not in ("paper", "public_code"):
        raise ValueError(f"baseline must be 'paper' or 'public_code', got {baseline!r}.")
    mask = mask.astype(bool)
    token_means = masked_mean(process_rewards, mask, axis=-1)
    total = jnp.sum(token_means, axis=-1, keepdims=True)
    if baseline == "paper":
        others_mean = (total - token_means) / (num_samples - 1)
        shaped = process_rewards - others_mean[..., None]
    else:
        scale = num_samples / (num_samples - 1)
        shaped = process_rewards * scale - (total / (num_samples - 1))[..., None]
    process_returns = discounted_returns(shaped, mask, gamma=gamma)
    outcome = rloo_advantages(outcome_rewards)
    return jnp.where(mask, process_returns + outcome[..., None], 0.0)


def broadcast_step_values_to_tokens(step_values: chex.Array, step_id: chex.Array) -> chex.Array:
    """out[..., t] = step_values[..., step_id[..., t]]; 0 where step_id is −1 or out of range.

    Lets any step-level quantity (a SLATE sibling advantage, a step reward, a PAV progress) reach
    the tokens of its step. `step_id` is the per-token step index of `TrajectoryBatch` (DESIGN.md):
    −1 on prompt and observation tokens, which therefore get 0.

    Args:
      step_values: `[..., S]`.
      step_id: `[..., T]` integers, same leading shape.
    """
    chex.assert_rank(step_id, step_values.ndim)
    chex.assert_equal_shape_prefix([step_values, step_id], step_values.ndim - 1)
    if not jnp.issubdtype(step_id.dtype, jnp.integer):
        raise ValueError(f"step_id must be integers, got dtype {step_id.dtype}.")
    num_steps = step_values.shape[-1]
    if num_steps == 0:
        return jnp.zeros(step_id.shape, step_values.dtype)
    in_range = (step_id >= 0) & (step_id < num_steps)
    gathered = jnp.take_along_axis(step_values, jnp.clip(step_id, 0, num_steps - 1), axis=-1)
    return jnp.where(in_range, gathered, jnp.zeros((), step_values.dtype))
