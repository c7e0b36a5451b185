"""ScalarHeadModel: [B, T] scores on the trunk's hidden states."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.models import ScalarHeadModel, Transformer
from tests.helpers.tiny_models import tiny_config


def test_scores_are_a_linear_readout_of_hidden_states():
    trunk = Transformer(tiny_config("llama"), rngs=nnx.Rngs(0))
    model = ScalarHeadModel(trunk, rngs=nnx.Rngs(1))
    ids = np.random.default_rng(0).integers(0, 256, (2, 5)).astype(np.int32)
    mask = np.array([[False, True, True, True, True], [True] * 5])
    # Zero-initialised head: every score starts at 0.
    np.testing.assert_array_equal(nnx.jit(lambda m: m(ids, mask))(model), np.zeros((2, 5)))
    w = np.random.default_rng(1).normal(size=(64, 1)).astype(np.float32)
    model.head.kernel[...] = jnp.asarray(w)
    model.head.bias[...] = jnp.asarray([0.5])
    scores = nnx.jit(lambda m: m(ids, mask))(model)
    hidden, _ = nnx.jit(lambda t: t.hidden_states(ids, mask))(trunk)
    assert scores.shape == (2, 5) and scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, np.asarray(hidden) @ w[:, 0] + 0.5, atol=1e-5, rtol=1e-5)


def test_head_parameters_are_addressable_and_trainable():
    model = ScalarHeadModel(Transformer(tiny_config("qwen3"), rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert {"head.kernel", "head.bias", "trunk.layers.0.attn.q_proj.kernel"} <= paths
    ids = np.arange(6, dtype=np.int32).reshape(1, 6)
    grads = nnx.jit(nnx.grad(lambda m: m(ids).sum()))(model)
    # d/dc sum_t (w . h_t + c) = T = 6; with w = 0 the trunk gets no gradient yet.
    np.testing.assert_allclose(grads.head.bias[...], [6.0])
    assert not np.any(np.asarray(grads.trunk.final_norm.scale[...]))
