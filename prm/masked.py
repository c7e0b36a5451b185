"""Masked reductions over token arrays.

Every quantity in prm that averages over tokens (losses, advantages, metrics) goes through these,
so "what does an all-masked row give" has one answer: reductions over an empty mask return 0
(never NaN), and `masked_whiten` leaves masked positions at 0. Masked entries are selected away,
not multiplied by 0, so a NaN or ±inf under the mask (padding log-probs, unused rewards) never
reaches the result.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def _masked_values(values: chex.Array, mask: chex.Array) -> chex.Array:
    chex.assert_equal_shape([values, mask])
    return jnp.where(mask.astype(bool), values, jnp.zeros((), values.dtype))


def masked_sum(values: chex.Array, mask: chex.Array, axis=None) -> chex.Array:
    """Σ values over the unmasked entries along `axis`."""
    return jnp.sum(_masked_values(values, mask), axis=axis)


def masked_count(mask: chex.Array, axis=None) -> chex.Array:
    """Number of unmasked entries over `axis` (float)."""
    return jnp.sum(mask.astype(jnp.float32), axis=axis)


def masked_mean(values: chex.Array, mask: chex.Array, axis=None) -> chex.Array:
    """Σ values·mask / Σ mask over `axis`; 0 where the mask is empty."""
    total = masked_sum(values, mask, axis=axis)
    count = masked_count(mask, axis=axis)
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def masked_var(values: chex.Array, mask: chex.Array, axis=None, ddof: int = 0) -> chex.Array:
    """Variance of the unmasked entries over `axis`: Σ mask·(x − mean)² / (Σ mask − ddof).

    Returns 0 where fewer than `ddof + 1` entries are unmasked.
    """
    mean = masked_mean(values, mask, axis=axis)
    if axis is not None:
        mean = jnp.expand_dims(mean, axis)
    sq = masked_sum(jnp.square(values - mean), mask, axis=axis)
    denom = masked_count(mask, axis=axis) - ddof
    return jnp.where(denom > 0, sq / jnp.maximum(denom, 1.0), 0.0)


def masked_whiten(
    values: chex.Array,
    mask: chex.Array,
    shift_mean: bool = True,
    eps: float = 1e-8,
    ddof: int = 0,
) -> chex.Array:
    """(x − mean) / sqrt(var + eps) over all unmasked entries; masked positions become 0.

    Whitening as in PPO implementations (e.g. GAE advantages); `shift_mean=False` only rescales
    (keeps the mean), the variant used to whiten rewards without changing their sign. verl's
    `masked_whiten` (used by PRIME and Search-R1 PPO) takes the unbiased variance: `ddof=1`.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask, ddof=ddof)
    whitened = (values - mean) * jnp.reciprocal(jnp.sqrt(var + eps))
    if not shift_mean:
        whitened = whitened + mean
    return jnp.where(mask.astype(bool), whitened, 0.0)
