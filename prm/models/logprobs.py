"""Per-token log-probabilities and entropies of given sequences, memory-bounded in the vocabulary.

The unembedding is applied to hidden states one time chunk at a time under `jax.checkpoint`, so
neither the forward nor the backward pass holds more than [batch, chunk_size, vocab] float32
logits (a 150k vocabulary at 4k tokens would otherwise need 2.4 GB per sequence).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from prm.models.transformer import Transformer


class TokenLogprobs(NamedTuple):
    """[B, T] float32 arrays; `logprobs` and `entropy` are 0 where `mask` is False."""

    logprobs: jax.Array
    entropy: jax.Array
    mask: jax.Array


def chunked_logprobs(
    unembed: Callable[[jax.Array], jax.Array],
    hidden: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = 128,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """log softmax(unembed(h_t) / tau)[y_t] and the entropy of that softmax, chunked over time.

    With z = unembed(h_t) / tau:  log p(y_t) = z[y_t] - logsumexp(z),
    H_t = logsumexp(z) - sum_v softmax(z)_v z_v.

    Args:
      unembed: hidden [B, C, D] -> logits [B, C, V] (e.g. `Transformer.unembed`).
      hidden: [B, T, D], hidden[b, t] predicts targets[b, t].
      targets: int [B, T].
      chunk_size: time steps per chunk; peak logits memory is B * chunk_size * V * 4 bytes.
      temperature: tau > 0, the sampling temperature whose distribution is scored.

    Returns:
      (logprobs, entropy), float32 [B, T].
    """
    chex.assert_rank(hidden, 3)
    chex.assert_rank(targets, 2)
    chex.assert_equal_shape_prefix([hidden, targets], 2)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    batch, length, _ = hidden.shape
    chunk = max(1, min(chunk_size, length))
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))

    @jax.checkpoint  # recompute each chunk's logits in the backward pass instead of storing them
    def score(hidden_chunk: jax.Array, target_chunk: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = unembed(hidden_chunk).astype(jnp.float32) / temperature
        log_normaliser = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, target_chunk[..., None], axis=-1)[..., 0]
        expected_logit = jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        return target_logit - log_normaliser, log_normaliser - expected_logit

    def to_chunks(x: jax.Array) -> jax.Array:
        return jnp.moveaxis(x.reshape(batch, num_chunks, chunk, *x.shape[2:]), 1, 0)

    logprobs, entropy = jax.lax.map(lambda xs: score(*xs), (to_chunks(hidden), to_chunks(targets)))

    def from_chunks(x: jax.Array) -> jax.Array:
        return jnp.moveaxis(x, 0, 1).reshape(batch, num_chunks * chunk)[:, :length]

    return from_chunks(logprobs), from_chunks(entropy)


def token_logprobs(
    model: Transformer,
    input_ids: jax.Array,
    input_mask: jax.Array | None = None,
    *,
    chunk_size: int = 128,
    temperature: float = 1.0,
) -> TokenLogprobs:
    """log p(x_t | x_<t) and the entropy of p(. | x_<t) for every token of `input_ids` [B, T].

    Position t is scored by the hidden state at t - 1, so `mask[b, t]` is
    input_mask[b, t] & input_mask[b, t - 1]: False at t = 0 and at the first real token of a
    row (nothing predicts it), and at padding. Left or right padding are both fine. Multiply by
    a loss mask (e.g. generated tokens only) downstream.
    """
    chex.assert_rank(input_ids, 2)
    if input_mask is None:
        input_mask = jnp.ones(input_ids.shape, bool)
    chex.assert_equal_shape([input_ids, input_mask])
    input_mask = input_mask.astype(bool)
    hidden, _ = model.hidden_states(input_ids, input_mask)
    logprobs, entropy = chunked_logprobs(
        model.unembed,
        hidden[:, :-1],
        input_ids[:, 1:],
        chunk_size=chunk_size,
        temperature=temperature,
    )
    mask = input_mask[:, 1:] & input_mask[:, :-1]
    first = jnp.zeros((input_ids.shape[0], 1), bool)
    mask = jnp.concatenate([first, mask], axis=1)

    def align(x: jax.Array) -> jax.Array:
        return jnp.where(mask, jnp.pad(x, ((0, 0), (1, 0))), 0.0)

    return TokenLogprobs(logprobs=align(logprobs), entropy=align(entropy), mask=mask)
