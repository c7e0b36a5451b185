"""The decode-time weight copy: same outputs as the model's own weights, never stale."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from prm.models import Transformer
from prm.sampling import Sampler, SamplingParams
from prm.sampling.weights import DecodeLinear, DecodeWeights, decode_copy
from tests.helpers.tiny_models import tiny_config

PROMPTS = [[3, 14, 15], [9, 2, 6, 5, 35, 8, 97], [7, 1, 8, 2, 8, 18, 28, 45, 90, 4, 52, 3]]
BF16 = dict(dtype=jnp.bfloat16)  # f32 weights, bf16 compute


def varied_model(family: str = "qwen2", seed: int = 0, **overrides) -> Transformer:
    """A random model whose greedy output varies: at the default init (std 0.02) each position
    mostly predicts its own input, so greedy decoding repeats one token and proves little."""
    model = Transformer(tiny_config(family, **overrides), rngs=nnx.Rngs(seed))
    for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        scale = {"kernel": 6.0, "embedding": 6.0}.get(path[-1], 1.0)
        param[...] = param[...] * scale
    return model


def greedy(sampler: Sampler, new: int = 12):
    return sampler.start(PROMPTS).generate(new)


def sampled(sampler: Sampler, new: int = 12):
    return sampler.start(PROMPTS).generate(
        new, key=jax.random.key(1), sampling=SamplingParams(temperature=1.0)
    )


def test_decode_linear_computes_the_linear_layer():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    for bias in (True, False):
        linear = nnx.Linear(8, 5, use_bias=bias, rngs=nnx.Rngs(1))
        if bias:
            linear.bias[...] = jnp.arange(5.0)
        decode = DecodeLinear(linear, jnp.float32)
        assert decode.kernel_t.shape == (5, 8)
        np.testing.assert_allclose(decode(x), linear(x), rtol=1e-6, atol=1e-6)


def test_f32_copy_is_the_models_own_arrays():
    model = varied_model()
    copy = decode_copy(model, jnp.float32)
    for ours, theirs in zip(jax.tree.leaves(nnx.state(copy)), jax.tree.leaves(nnx.state(model))):
        assert ours is theirs  # nothing to gain on this CPU: no copy, no extra memory


@pytest.mark.parametrize("family", ["qwen2", "llama"])  # tied / untied embeddings
def test_bf16_copy_casts_and_transposes_and_leaves_the_model_alone(family):
    model = varied_model(family, **BF16)
    before = jax.tree.leaves(nnx.state(model))
    copy = decode_copy(model, jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(copy))} == {jnp.dtype(jnp.bfloat16)}
    q_proj = copy.layers[0].attn.q_proj
    assert isinstance(q_proj, DecodeLinear)
    np.testing.assert_array_equal(
        q_proj.kernel_t[...], model.layers[0].attn.q_proj.kernel[...].T.astype(jnp.bfloat16)
    )
    assert isinstance(copy.lm_head, DecodeLinear) == (family == "llama")
    after = jax.tree.leaves(nnx.state(model))
    assert all(a is b for a, b in zip(before, after))
    assert {x.dtype for x in after} == {jnp.dtype(jnp.float32)}
    assert isinstance(model.layers[0].attn.q_proj, nnx.Linear)
    ids = jnp.asarray(PROMPTS[2])[None]
    np.testing.assert_allclose(copy(ids)[0], model(ids)[0], atol=0.05)


@pytest.mark.parametrize("overrides", [{}, BF16], ids=["f32", "bf16"])
def test_sampling_with_and_without_the_copy_agrees(overrides):
    model = varied_model(**overrides)
    copied, plain = (
        Sampler(model, eos_token_ids=()),
        Sampler(model, eos_token_ids=(), decode_copy=False),
    )
    with_copy, without = (greedy(copied), sampled(copied)), (greedy(plain), sampled(plain))
    # Not one repeated token: agreement on these means something.
    assert min(len(set(row)) for row in with_copy[0].token_lists()) >= 3
    for a, b in zip(with_copy, without):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        if not overrides:
            np.testing.assert_array_equal(a.logprobs, b.logprobs)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=0.05)
        np.testing.assert_allclose(a.sampling_logprobs, b.sampling_logprobs, atol=0.05)


def test_copy_is_made_once_while_the_weights_do_not_change():
    model = varied_model(**BF16)
    weights = DecodeWeights(model, jnp.bfloat16)
    first, second = weights(), weights()
    assert all(a is b for a, b in zip(jax.tree.leaves(first[1]), jax.tree.leaves(second[1])))


def test_weights_updated_between_starts_are_sampled_never_stale():
    # As RL does between rollouts: an optimiser step on the model the sampler holds.
    model = varied_model(**BF16)
    sampler = Sampler(model, eos_token_ids=())
    old_session = sampler.start(PROMPTS)
    before = greedy(sampler)

    optimizer = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
    ids = jnp.asarray(PROMPTS[2])[None]
    loss = lambda m: -jax.nn.log_softmax(m(ids)[0].astype(jnp.float32))[0, :, 7].sum()
    optimizer.update(model, nnx.grad(loss)(model))

    after = greedy(sampler)
    fresh = greedy(Sampler(model, eos_token_ids=(), decode_copy=False))
    np.testing.assert_array_equal(after.tokens, fresh.tokens)
    np.testing.assert_allclose(after.logprobs, fresh.logprobs, atol=0.05)
    assert not np.allclose(after.logprobs, before.logprobs, atol=0.05)  # the update mattered
    # A session opened before the update keeps sampling from the weights it started with.
    np.testing.assert_array_equal(old_session.generate(12).tokens, before.tokens)


def test_assigning_a_parameter_refreshes_the_copy():
    model = varied_model(**BF16)
    sampler = Sampler(model, eos_token_ids=())
    before = greedy(sampler)
    model.embed.embedding[...] = jnp.flip(model.embed.embedding[...], axis=0)
    after = greedy(sampler)
    fresh = greedy(Sampler(model, eos_token_ids=(), decode_copy=False))
    np.testing.assert_array_equal(after.tokens, fresh.tokens)
    assert not np.array_equal(after.tokens, before.tokens)
