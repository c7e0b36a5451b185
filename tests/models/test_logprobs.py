"""Chunked log-probs and entropies against a direct log_softmax over the full logits."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm.models import Transformer, chunked_logprobs, token_logprobs
from tests.helpers.tiny_models import tiny_config

VOCAB, DIM = 11, 5


def _problem(seed: int, batch: int, length: int):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(batch, length, DIM)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(DIM, VOCAB)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, VOCAB, (batch, length)), jnp.int32)
    return hidden, weight, targets


def _direct(hidden, weight, targets, temperature=1.0):
    """Independent reference: full logits, log_softmax, gather; entropy = -sum p log p."""
    log_p = jax.nn.log_softmax(hidden @ weight / temperature, axis=-1)
    logprobs = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    return logprobs, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(
    batch=st.integers(1, 3),
    length=st.integers(1, 9),
    chunk_size=st.integers(1, 12),
    temperature=st.sampled_from([1.0, 0.7]),
)
def test_chunked_matches_direct(batch, length, chunk_size, temperature):
    hidden, weight, targets = _problem(0, batch, length)
    logprobs, entropy = chunked_logprobs(
        lambda h: h @ weight, hidden, targets, chunk_size=chunk_size, temperature=temperature
    )
    expected_logprobs, expected_entropy = _direct(hidden, weight, targets, temperature)
    np.testing.assert_allclose(logprobs, expected_logprobs, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(entropy, expected_entropy, atol=1e-5, rtol=1e-5)


def test_uniform_logits_give_log_vocab():
    # All-zero logits: p = 1/V, so log p = -log 11 = -2.3979 and entropy = log 11.
    hidden, _, targets = _problem(1, 2, 5)
    logprobs, entropy = chunked_logprobs(
        lambda h: jnp.zeros((*h.shape[:2], VOCAB)), hidden, targets
    )
    np.testing.assert_allclose(logprobs, -np.log(11.0) * np.ones((2, 5)), rtol=1e-6)
    np.testing.assert_allclose(entropy, np.log(11.0) * np.ones((2, 5)), rtol=1e-6)


def test_gradient_matches_direct():
    hidden, weight, targets = _problem(2, 2, 7)
    cotangent = jnp.asarray(np.random.default_rng(3).normal(size=(2, 7)), jnp.float32)

    def loss(fn, hidden, weight):
        logprobs, entropy = fn(hidden, weight)
        return jnp.sum(cotangent * logprobs) + 0.1 * jnp.sum(entropy)

    chunked = lambda h, w: chunked_logprobs(lambda x: x @ w, h, targets, chunk_size=3)
    direct = lambda h, w: _direct(h, w, targets)
    grads = jax.jit(jax.grad(lambda h, w: loss(chunked, h, w), argnums=(0, 1)))(hidden, weight)
    expected = jax.grad(lambda h, w: loss(direct, h, w), argnums=(0, 1))(hidden, weight)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_rejects_mismatched_shapes_and_bad_chunk_size():
    hidden, weight, targets = _problem(4, 2, 5)
    with pytest.raises(AssertionError):
        chunked_logprobs(lambda h: h @ weight, hidden, targets[:, :4])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_logprobs(lambda h: h @ weight, hidden, targets, chunk_size=0)


@pytest.fixture(scope="module")
def model() -> Transformer:
    return Transformer(tiny_config("qwen2"), rngs=nnx.Rngs(0))


def test_token_logprobs_align_with_the_model_logits(model):
    ids = np.random.default_rng(5).integers(0, 256, (2, 6)).astype(np.int32)
    mask = np.array([[False, False, True, True, True, True], [True] * 4 + [False] * 2])
    out = nnx.jit(lambda m: token_logprobs(m, ids, mask, chunk_size=2))(model)
    logits, _ = nnx.jit(lambda m: m(ids, mask))(model)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # Scored positions: t with t and t - 1 both real. Row 0: t = 3, 4, 5; row 1: t = 1, 2, 3.
    expected_mask = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(out.mask, expected_mask)
    for b, t in zip(*np.nonzero(expected_mask)):
        np.testing.assert_allclose(out.logprobs[b, t], log_p[b, t - 1, ids[b, t]], atol=1e-5)
        entropy = -np.sum(np.exp(log_p[b, t - 1]) * log_p[b, t - 1])
        np.testing.assert_allclose(out.entropy[b, t], entropy, atol=1e-4)
    assert np.all(np.asarray(out.logprobs)[~expected_mask] == 0)
    assert np.all(np.asarray(out.entropy)[~expected_mask] == 0)


def test_token_logprobs_gradient_matches_direct(model):
    ids = np.random.default_rng(6).integers(0, 256, (2, 5)).astype(np.int32)

    def chunked(m):
        return token_logprobs(m, ids, chunk_size=2).logprobs.sum()

    def direct(m):
        log_p = jax.nn.log_softmax(m(ids)[0][:, :-1], axis=-1)
        return jnp.take_along_axis(log_p, ids[:, 1:, None], axis=-1).sum()

    grads = nnx.jit(nnx.grad(chunked))(model)
    expected = nnx.jit(nnx.grad(direct))(model)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), grads, expected
    )


def test_single_token_sequences_have_nothing_to_score(model):
    out = nnx.jit(lambda m: token_logprobs(m, np.array([[5], [7]], np.int32)))(model)
    assert out.logprobs.shape == (2, 1) and not np.any(out.mask)
    np.testing.assert_array_equal(out.logprobs, np.zeros((2, 1)))
