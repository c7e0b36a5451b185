"""Next-token distributions: temperature, top-k and top-p (nucleus) filtering, and sampling.

Order follows Hugging Face `generate` (temperature, then top-k, then top-p), so a run here and a
run there draw from the same distribution. Filtering sets logits to −inf; it never renormalises
by hand, so `jax.nn.log_softmax` of the filtered logits is the sampling distribution's log-prob.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. Hashable: it is a static argument of the decode jit.

    temperature: 0 means greedy (argmax of the raw logits; top_k / top_p are then ignored).
    top_k: keep the k largest logits (ties at the k-th value are kept too); None = all.
    top_p: keep the smallest prefix of tokens, by decreasing probability, whose mass reaches
        top_p (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration", §3.1);
        the most likely token is always kept. None or 1.0 = all.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}.")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingParams(temperature=0.0)


def top_k_filter(logits: chex.Array, k: int) -> chex.Array:
    """Sets every logit below the k-th largest of its row to −inf. logits: [..., V]."""
    if k >= logits.shape[-1]:
        return logits
    kth_largest = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth_largest, -jnp.inf, logits)


def top_p_filter(logits: chex.Array, p: float) -> chex.Array:
    """Nucleus filter: keeps token i iff the probability mass of tokens strictly more likely
    than i is < p, i.e. the smallest top set with mass >= p (ties at the cut are kept).

    With sorted probabilities π_(1) >= π_(2) >= ..., the kept set is
    {(j) : Σ_{i<j} π_(i) < p}; it always contains the argmax.
    """
    sorted_logits = jnp.sort(logits, axis=-1, descending=True)
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    num_kept = jnp.sum(mass_before < p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def filter_logits(logits: chex.Array, params: SamplingParams) -> chex.Array:
    """The logits of the distribution `params` samples from (before the softmax).

    logits: float32[..., V] raw policy logits. Greedy returns them unchanged.
    """
    if params.greedy:
        return logits
    logits = logits / params.temperature
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p is not None and params.top_p < 1.0:
        logits = top_p_filter(logits, params.top_p)
    return logits


def sample_tokens(
    logits: chex.Array, row_keys: chex.Array, params: SamplingParams
) -> tuple[chex.Array, chex.Array]:
    """Draws one token per row and returns (tokens int32[B], sampling log-probs float32[B]).

    logits: float32[B, V] raw policy logits; row_keys: [B] PRNG keys, one per row, so a row's
    draw depends only on its own key and logits. The returned log-prob is that of the filtered,
    tempered distribution actually sampled (0 for greedy).
    """
    chex.assert_rank(logits, 2)
    if params.greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tokens, jnp.zeros(tokens.shape, jnp.float32)
    filtered = filter_logits(logits, params)
    tokens = jax.vmap(jax.random.categorical)(row_keys, filtered).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(filtered, axis=-1)
    return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
