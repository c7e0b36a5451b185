"""Policy-gradient losses over tokens: PPO clip, KL to a reference, entropy, clipped value loss.

All functions take `[..., T]` token arrays (time last, any leading batch shape) with an explicit
loss mask, compute in at least float32, and never let masked entries (padding log-probs of
−inf, observation tokens) reach a result or a gradient. Losses are to be *minimised*. The
returned diagnostics are scalars meant for logging.

Aggregation modes (verl's `loss_agg_mode`; a "sequence" is one row over the leading dims):
  * "token-mean": Σ loss / Σ mask over the whole batch (verl default; PRIME, Search-R1, SLATE).
  * "seq-mean-token-sum": mean over sequences of each sequence's token sum.
  * "seq-mean-token-mean": mean over sequences of each sequence's token mean (GRPO paper).
  * "seq-mean-token-sum-norm": mean over sequences of token sum / `norm_length` (Dr. GRPO,
    arXiv 2503.20783: a constant normaliser, default the padded length T). verl divides
    the batch total by T only, i.e. B times this value.
Sequences whose mask is empty (padding rows) are left out of the sequence means, so padding
rows never change a loss; an all-masked batch gives 0.
"""

from __future__ import annotations

from typing import Literal, get_args

import chex
import jax
import jax.numpy as jnp

from prm.masked import masked_mean, masked_sum

Aggregation = Literal[
    "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]
_AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
# verl's clamps: exp of a log-ratio beyond ±20 overflows float32 products; k3 beyond ±10 is an
# outlier whose gradient would dominate the update.
_MAX_LOG_RATIO = 20.0
_MAX_K3 = 10.0


def _compute_dtype(x: chex.Array) -> chex.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def aggregate_loss(
    per_token: chex.Array,
    mask: chex.Array,
    mode: Aggregation = "token-mean",
    *,
    norm_length: float | None = None,
    normalizer: chex.Array | None = None,
) -> chex.Array:
    """Reduces a `[..., T]` per-token loss to a scalar; modes in the module docstring.

    Args:
      per_token: `[..., T]` loss per token.
      mask: `[..., T]` tokens that count.
      mode: aggregation mode.
      norm_length: the constant of "seq-mean-token-sum-norm" (default T); keep it fixed across
        steps (e.g. the generation budget) for Dr. GRPO's unbiasedness.
      normalizer: divide by this count instead of the batch's own — the number of masked tokens
        ("token-mean") or of sequences with a masked token (the "seq-mean-*" modes) of a larger
        batch this one is a micro-batch of. The micro-batch losses then add up to the batch's
        loss exactly (gradient accumulation, `prm.training.update`).
    """
    chex.assert_equal_shape([per_token, mask])
    if per_token.ndim < 1:
        raise ValueError("aggregate_loss needs per-token values with a time axis, got a scalar.")
    if mode not in _AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {mode!r}; choose one of {_AGGREGATIONS}.")
    if norm_length is not None and mode != "seq-mean-token-sum-norm":
        raise ValueError("norm_length is only used by 'seq-mean-token-sum-norm'.")
    if mode == "token-mean":
        if normalizer is not None:
            return masked_sum(per_token, mask) / jnp.maximum(normalizer, 1)
        return masked_mean(per_token, mask)
    nonempty = jnp.any(mask.astype(bool), axis=-1)
    if mode == "seq-mean-token-mean":
        per_sequence = masked_mean(per_token, mask, axis=-1)
    else:
        per_sequence = masked_sum(per_token, mask, axis=-1)
    if mode == "seq-mean-token-sum-norm":
        norm_length = per_token.shape[-1] if norm_length is None else norm_length
        if norm_length <= 0:
            raise ValueError(f"norm_length must be positive, got {norm_length}.")
        per_sequence = per_sequence / norm_length
    if normalizer is not None:
        return masked_sum(per_sequence, nonempty) / jnp.maximum(normalizer, 1)
    return masked_mean(per_sequence, nonempty)


def ppo_policy_loss(
    logprobs: chex.Array,
    old_logprobs: chex.Array,
    advantages: chex.Array,
    mask: chex.Array,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    clip_ratio_c: float | None = 3.0,
    ratio_level: Literal["token", "sequence"] = "token",
    aggregation: Aggregation = "token-mean",
    norm_length: float | None = None,
    normalizer: chex.Array | None = None,
) -> tuple[chex.Array, dict[str, chex.Array]]:
    """PPO clipped surrogate, optionally with a sequence-level ratio, asymmetric and dual clip.

    Per token (PPO, arXiv 1707.06347, Eq. 7, negated to a loss):

        ρ_t = π_θ(y_t|y_<t) / π_old(y_t|y_<t)
        L_t = max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε_low, 1 + ε_high))

    with ε_high = ε_low unless set (DAPO's "clip-higher", arXiv 2503.14476 §3.1). Dual clip
    (Ye et al. 2020, arXiv 1912.09729; verl's `clip_ratio_c`, default 3): for A_t < 0 the
    loss is additionally capped at −A_t·c, so a huge ratio on a bad token cannot blow up the
    update. The log-ratio is clamped to ±20 before exp (verl).

    `ratio_level="sequence"` uses one ratio per sequence, the geometric mean over its tokens,
    s = exp(mean_t log ρ_t) (GSPO, arXiv 2507.18071; the sequence-mean log-ratio of
    SLATE's `aggregate_step_objectives`). It is applied per token as s·π_θ(y_t)/sg[π_θ(y_t)]
    (its GSPO-token form): the value is s, and with an advantage constant over the sequence the
    gradient equals that of the sequence-level objective; per-token advantages also work.

    Args:
      logprobs: `[..., T]` log π_θ of the sampled tokens (the differentiated input).
      old_logprobs: `[..., T]` log π_old from the rollout.
      advantages: `[..., T]` (broadcast step or sequence advantages to tokens first).
      mask: `[..., T]` trained tokens.
      clip_eps_low, clip_eps_high: clip range [1 − ε_low, 1 + ε_high].
      clip_ratio_c: dual-clip constant (> 1), or None to disable.
      ratio_level: "token" or "sequence".
      aggregation, norm_length, normalizer: see `aggregate_loss`.

    Returns:
      `(loss, metrics)`: metrics are token means over the mask of "clip_fraction" (the clipped
      branch is active), "dual_clip_fraction" (the dual cap is active; 0 when disabled) and
      "approx_kl" = mean(log π_old − log π_θ) (verl's `ppo_kl`).
    """
    logprobs = _compute_dtype(logprobs)
    chex.assert_equal_shape([logprobs, old_logprobs, advantages, mask])
    if logprobs.ndim < 1:
        raise ValueError("ppo_policy_loss needs [..., T] token arrays, got scalars.")
    clip_eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    if not 0.0 <= clip_eps_low < 1.0 or clip_eps_high < 0.0:
        raise ValueError(
            f"Need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {clip_eps_low}, "
            f"{clip_eps_high}."
        )
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (or None), got {clip_ratio_c}.")
    if ratio_level not in ("token", "sequence"):
        raise ValueError(f"ratio_level must be 'token' or 'sequence', got {ratio_level!r}.")

    mask = mask.astype(bool)
    logprobs = jnp.where(mask, logprobs, 0.0)
    old_logprobs = jnp.where(mask, _compute_dtype(old_logprobs), 0.0)
    advantages = jnp.where(mask, _compute_dtype(advantages), 0.0)
    token_log_ratio = logprobs - old_logprobs
    if ratio_level == "token":
        log_ratio = jnp.clip(token_log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    else:
        sequence_log_ratio = masked_mean(token_log_ratio, mask, axis=-1)
        sequence_log_ratio = jnp.clip(sequence_log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        log_ratio = (
            logprobs
            - jax.lax.stop_gradient(logprobs)
            + jax.lax.stop_gradient(sequence_log_ratio)[..., None]
        )
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = jnp.maximum(unclipped, clipped)
    clip_fraction = masked_mean((clipped > unclipped).astype(per_token.dtype), mask)
    if clip_ratio_c is None:
        dual_clip_fraction = jnp.zeros((), per_token.dtype)
    else:
        cap = -advantages * clip_ratio_c
        dual_active = (advantages < 0) & (per_token > cap)
        per_token = jnp.where(advantages < 0, jnp.minimum(per_token, cap), per_token)
        dual_clip_fraction = masked_mean(dual_active.astype(per_token.dtype), mask)
    loss = aggregate_loss(
        per_token, mask, aggregation, norm_length=norm_length, normalizer=normalizer
    )
    metrics = {
        "clip_fraction": clip_fraction,
        "dual_clip_fraction": dual_clip_fraction,
        "approx_kl": jax.lax.stop_gradient(masked_mean(-token_log_ratio, mask)),
    }
    return loss, metrics


def kl_penalty(
    logprobs: chex.Array,
    ref_logprobs: chex.Array,
    mask: chex.Array,
    *,
    estimator: Literal["k1", "k2", "k3"] = "k3",
) -> chex.Array:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled tokens (Schulman, "Approximating
    KL divergence", 2020), with d = log π_ref(y_t) − log π_θ(y_t) and y_t ~ π_θ:

        k1 = −d                  unbiased value, high variance, can be negative;
        k2 = d²/2                biased value, low variance;
        k3 = exp(d) − d − 1      unbiased value, low variance, ≥ 0 (verl's `low_var_kl`, GRPO's
                                 DeepSeekMath Eq. 4; d clamped to ±20 and k3 to ≤ 10 as in verl).

    Aggregate with `aggregate_loss` for a KL loss (GRPO, SLATE: coefficient 0.001), or subtract
    β·k1 from token rewards for an in-reward penalty (Search-R1/StepSearch PPO). As a *loss*
    differentiated on on-policy samples the estimators differ from their values: E[∇k2] =
    ∇KL(π_θ ‖ π_ref), E[∇k3] = ∇KL(π_ref ‖ π_θ) (the forward KL), and E[∇k1] = 0.

    Returns:
      `[..., T]`, 0 at masked positions.
    """
    logprobs = _compute_dtype(logprobs)
    chex.assert_equal_shape([logprobs, ref_logprobs, mask])
    mask = mask.astype(bool)
    log_ratio = jnp.where(mask, _compute_dtype(ref_logprobs) - jnp.where(mask, logprobs, 0.0), 0.0)
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k2":
        kl = 0.5 * jnp.square(log_ratio)
    elif estimator == "k3":
        log_ratio = jnp.clip(log_ratio, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        # expm1 keeps k3 accurate near d = 0, where exp(d) − 1 − d rounds below 0 in float32
        # (d = 6e-8 gave −6e-8); the lower clip removes what rounding is left.
        kl = jnp.clip(jnp.expm1(log_ratio) - log_ratio, 0.0, _MAX_K3)
    else:
        raise ValueError(f"Unknown KL estimator {estimator!r}; choose 'k1', 'k2' or 'k3'.")
    return jnp.where(mask, kl, 0.0)


def _entropy_from_logits(logits: chex.Array) -> chex.Array:
    logits = _compute_dtype(logits)
    log_normalizer = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    probs = jnp.exp(logits - log_normalizer)
    # Tokens with probability 0 (logit −inf, e.g. padded vocabulary) contribute 0·(−inf); the
    # select keeps both the value and the gradient finite.
    finite_logits = jnp.where(probs > 0, logits, 0.0)
    return log_normalizer[..., 0] - jnp.sum(probs * finite_logits, axis=-1)


def token_entropy(
    logits: chex.Array, mask: chex.Array, *, chunk_size: int | None = None
) -> chex.Array:
    """Entropy of the policy at each position: H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v·z_t,v.

    Computed in float32 even for bfloat16 logits. With `chunk_size`, positions are processed
    `chunk_size` at a time under `jax.checkpoint`, so the float32 working set (and the
    residuals kept for the backward pass) is `chunk_size × V` instead of `B·T × V` — use it
    when the vocabulary is large (150k for Qwen) and entropy is differentiated (entropy bonus).

    Args:
      logits: `[..., T, V]`.
      mask: `[..., T]` positions to keep; others are 0.
      chunk_size: positions per chunk, or None to compute all at once.

    Returns:
      `[..., T]` entropies in nats.
    """
    chex.assert_equal_shape_prefix([logits, mask], mask.ndim)
    chex.assert_rank(logits, mask.ndim + 1)
    if chunk_size is None:
        entropy = _entropy_from_logits(logits)
    else:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}.")
        rows = logits.reshape(-1, logits.shape[-1])
        entropy = jax.lax.map(jax.checkpoint(_entropy_from_logits), rows, batch_size=chunk_size)
        entropy = entropy.reshape(mask.shape)
    return jnp.where(mask.astype(bool), entropy, 0.0)


def value_loss(
    predicted_values: chex.Array,
    old_values: chex.Array,
    returns: chex.Array,
    mask: chex.Array,
    *,
    clip_range: float | None = 0.5,
    aggregation: Aggregation = "token-mean",
    norm_length: float | None = None,
    normalizer: chex.Array | None = None,
) -> tuple[chex.Array, dict[str, chex.Array]]:
    """PPO's clipped value loss (as in openai/baselines ppo2 and verl's `compute_value_loss`):

        V_clip = old + clip(V − old, −c, c)
        L_t = ½·max((V − R)², (V_clip − R)²)

    Search-R1's PPO uses c = 0.5. `clip_range=None` gives the plain ½·(V − R)².

    Args:
      predicted_values: `[..., T]` current critic values (differentiated).
      old_values: `[..., T]` critic values at rollout time.
      returns: `[..., T]` targets (e.g. GAE λ-returns).
      mask: `[..., T]` tokens the critic is trained on.
      clip_range: c, or None.
      aggregation, norm_length, normalizer: see `aggregate_loss`.

    Returns:
      `(loss, metrics)` with "value_clip_fraction", the token fraction where the clipped branch
      is the larger one.
    """
    predicted_values = _compute_dtype(predicted_values)
    chex.assert_equal_shape([predicted_values, old_values, returns, mask])
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range must be positive (or None), got {clip_range}.")
    mask = mask.astype(bool)
    predicted_values = jnp.where(mask, predicted_values, 0.0)
    returns = jnp.where(mask, _compute_dtype(returns), 0.0)
    unclipped = jnp.square(predicted_values - returns)
    if clip_range is None:
        per_token = unclipped
        clip_fraction = jnp.zeros((), per_token.dtype)
    else:
        old_values = jnp.where(mask, _compute_dtype(old_values), 0.0)
        clipped_values = old_values + jnp.clip(
            predicted_values - old_values, -clip_range, clip_range
        )
        clipped = jnp.square(clipped_values - returns)
        per_token = jnp.maximum(unclipped, clipped)
        clip_fraction = masked_mean((clipped > unclipped).astype(per_token.dtype), mask)
    loss = 0.5 * aggregate_loss(
        per_token, mask, aggregation, norm_length=norm_length, normalizer=normalizer
    )
    return loss, {"value_clip_fraction": clip_fraction}
