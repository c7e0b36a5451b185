"""Forward and KV-cache semantics of prm.models.Transformer (random init, no checkpoints)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm.models import KVCache, ModelConfig, Transformer
from prm.models.transformer import attention_dot_dtype, grouped_attention
from prm.training.lora import apply_lora
from prm.training.optim import trainable_filter
from tests.helpers.tiny_models import FAMILIES, tiny_config


@pytest.fixture(scope="module")
def model() -> Transformer:
    # Family differences are covered against transformers in test_parity.py; the cache semantics
    # here are family-independent, so one family (q/k norms, tied, explicit head_dim) suffices.
    return Transformer(tiny_config("qwen3"), rngs=nnx.Rngs(0))


# Eager NNX dispatches op by op; one jitted entry point keeps the file fast.
_forward = nnx.jit(lambda model, ids, mask=None, cache=None: model(ids, mask, cache))


def _tokens(seed: int, shape: tuple[int, ...], vocab: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def _stacked(arrays: tuple[jax.Array, ...]) -> np.ndarray:
    """Per-layer cache arrays stacked to [num_layers, batch, kv_heads, max_len, head_dim]."""
    return np.stack([np.asarray(a) for a in arrays])


def _prefilled(model: Transformer, max_len: int = 8) -> KVCache:
    """Rows of 4 and 2 tokens."""
    cache = KVCache.init(model.config, 2, max_len=max_len)
    prompt_mask = np.array([[True] * 4, [True, True, False, False]])
    return _forward(model, _tokens(6, (2, 4)), prompt_mask, cache)[1]


def _flat_paths(model: Transformer) -> set[str]:
    return {".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_paths_follow_the_contract(family):
    paths = _flat_paths(nnx.eval_shape(lambda: Transformer(tiny_config(family), rngs=nnx.Rngs(0))))
    assert {
        "embed.embedding",
        "layers.0.attn.q_proj.kernel",
        "layers.1.mlp.gate_proj.kernel",
        "layers.1.mlp.down_proj.kernel",
        "layers.0.input_norm.scale",
        "layers.0.post_attn_norm.scale",
        "final_norm.scale",
    } <= paths
    assert ("layers.0.attn.q_proj.bias" in paths) == (family == "qwen2")
    assert ("layers.0.attn.q_norm.scale" in paths) == (family == "qwen3")
    assert "layers.0.attn.o_proj.bias" not in paths
    # tiny_config ties embeddings for the Qwen families and unties them for Llama.
    assert ("lm_head.kernel" in paths) == (family == "llama")


def test_call_equals_unembed_of_hidden_states(model):
    ids = _tokens(0, (2, 5))
    logits, cache = _forward(model, ids)
    hidden, _ = nnx.jit(lambda m, i: m.hidden_states(i))(model, ids)
    assert cache is None
    assert logits.dtype == jnp.float32 and logits.shape == (2, 5, model.config.vocab_size)
    np.testing.assert_allclose(logits, model.unembed(hidden), atol=1e-6, rtol=1e-6)


def test_padding_matches_unpadded_rows(model):
    """Left- and right-padded rows give each real token the logits of the unpadded sequence."""
    lengths, width = (5, 2, 7), 7
    rows = [_tokens(i, (n,)) for i, n in enumerate(lengths)]
    for left in (True, False):
        ids = np.zeros((3, width), np.int32)
        mask = np.zeros((3, width), bool)
        for b, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[b, span], mask[b, span] = row, True
        logits, _ = _forward(model, ids, mask)
        assert np.isfinite(np.asarray(logits)).all()  # padded positions too
        for b, row in enumerate(rows):
            expected, _ = _forward(model, row[None])
            np.testing.assert_allclose(logits[b][mask[b]], expected[0], atol=1e-5, rtol=1e-5)


def test_cached_decoding_matches_full_forward(model):
    """Prefill right-padded prompts of lengths 3 and 5, then decode one token per step."""
    full = _tokens(1, (2, 9))
    prompt_lengths = np.array([3, 5])
    expected, _ = _forward(model, full)
    step = _forward

    cache = KVCache.init(model.config, 2, max_len=12)
    prompt_mask = np.arange(5)[None] < prompt_lengths[:, None]
    logits, cache = step(model, np.where(prompt_mask, full[:, :5], 0), prompt_mask, cache)
    np.testing.assert_array_equal(cache.length, prompt_lengths)
    for b, n in enumerate(prompt_lengths):
        np.testing.assert_allclose(logits[b, :n], expected[b, :n], atol=1e-5, rtol=1e-5)
    for _ in range(4):
        position = np.asarray(cache.length)
        next_ids = full[np.arange(2), position][:, None]
        logits, cache = step(model, next_ids, np.ones((2, 1), bool), cache)
        np.testing.assert_allclose(
            logits[:, 0], expected[np.arange(2), position], atol=1e-5, rtol=1e-5
        )
    np.testing.assert_array_equal(cache.length, prompt_lengths + 4)


def test_rows_without_new_tokens_are_untouched(model):
    cache = KVCache.init(model.config, 2, max_len=8)
    _, cache = _forward(model, _tokens(2, (2, 3)), None, cache)
    mask = np.array([[True, True], [False, False]])
    _, appended = _forward(model, _tokens(3, (2, 2)), mask, cache)
    np.testing.assert_array_equal(appended.length, [5, 3])
    old_k, new_k = _stacked(cache.k), _stacked(appended.k)
    np.testing.assert_array_equal(new_k[:, 1], old_k[:, 1])
    np.testing.assert_array_equal(_stacked(appended.v)[:, 1], _stacked(cache.v)[:, 1])
    np.testing.assert_array_equal(new_k[:, 0, :, :3], old_k[:, 0, :, :3])
    assert not np.array_equal(new_k[:, 0, :, 3:5], old_k[:, 0, :, 3:5])


def test_writes_past_max_len_are_dropped(model):
    cache = KVCache.init(model.config, 1, max_len=4)
    _, cache = _forward(model, _tokens(4, (1, 3)), None, cache)
    _, overflowed = _forward(model, _tokens(5, (1, 3)), None, cache)
    # Only slot 3 is free: the token for slot 3 lands, those for slots 4 and 5 vanish.
    old_k, new_k = _stacked(cache.k), _stacked(overflowed.k)
    np.testing.assert_array_equal(new_k[..., :3, :], old_k[..., :3, :])
    assert not np.array_equal(new_k[..., 3, :], old_k[..., 3, :])
    np.testing.assert_array_equal(overflowed.length, [6])


def test_repeat_forks_each_row(model):
    cache = _prefilled(model)
    forked = cache.repeat(3)
    assert forked.batch_size == 6
    np.testing.assert_array_equal(forked.length, [4, 4, 4, 2, 2, 2])
    np.testing.assert_array_equal(_stacked(forked.k), np.repeat(_stacked(cache.k), 3, axis=1))
    np.testing.assert_array_equal(_stacked(forked.v), np.repeat(_stacked(cache.v), 3, axis=1))
    # Siblings that receive the same token produce the same logits as their parent row.
    next_ids = np.array([[7], [9]])
    parent_logits, _ = _forward(model, next_ids, None, cache)
    sibling_logits, _ = _forward(model, np.repeat(next_ids, 3, axis=0), None, forked)
    np.testing.assert_allclose(
        sibling_logits, np.repeat(parent_logits, 3, axis=0), atol=1e-6, rtol=1e-6
    )


def test_cache_holds_one_array_per_layer(model):
    c = model.config
    cache = KVCache.init(c, 3, max_len=8)
    assert cache.num_layers == len(cache.v) == c.num_layers
    assert {x.shape for x in cache.k + cache.v} == {(3, c.num_kv_heads, 8, c.head_dim)}
    assert (cache.batch_size, cache.max_len) == (3, 8)


def test_take_gathers_rows_in_order(model):
    cache = _prefilled(model)
    taken = cache.take(np.array([1, 0, 1]))
    np.testing.assert_array_equal(taken.length, [2, 4, 2])
    np.testing.assert_array_equal(_stacked(taken.k), _stacked(cache.k)[:, [1, 0, 1]])
    np.testing.assert_array_equal(_stacked(taken.v), _stacked(cache.v)[:, [1, 0, 1]])
    # A taken row decodes exactly as its source row does (same token in, same logits out).
    next_ids = np.array([[7], [9]])
    source_logits, _ = _forward(model, next_ids, None, cache)
    taken_logits, _ = _forward(model, next_ids[[1, 0, 1]], None, taken)
    np.testing.assert_allclose(
        taken_logits, np.asarray(source_logits)[[1, 0, 1]], atol=1e-6, rtol=1e-6
    )
    with pytest.raises(ValueError, match="1-D index"):
        cache.take(np.zeros((1, 2), np.int32))


def test_resize_keeps_content_and_decoding(model):
    cache = _prefilled(model, max_len=8)
    grown = jax.jit(KVCache.resize, static_argnames="max_len")(cache, max_len=20)
    assert grown.max_len == 20
    np.testing.assert_array_equal(grown.length, cache.length)
    np.testing.assert_array_equal(_stacked(grown.k)[..., :8, :], _stacked(cache.k))
    assert not _stacked(grown.v)[..., 8:, :].any()
    # Decoding 6 tokens (past the old capacity of 8 in row 0) matches one uncached forward.
    ids = _tokens(10, (2, 6))
    logits, grown = _forward(model, ids, None, grown)
    np.testing.assert_array_equal(grown.length, [10, 8])
    prompt = np.asarray(_tokens(6, (2, 4)))
    for b, n in enumerate([4, 2]):
        expected, _ = _forward(model, np.concatenate([prompt[b, :n], ids[b]])[None])
        np.testing.assert_allclose(logits[b], expected[0, n:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="only grows"):
        cache.resize(4)


def test_grouped_attention_matches_dot_product_attention():
    """Against jax.nn's attention (slots-major keys, its own grouping) on random inputs."""
    rng = np.random.default_rng(11)
    batch, length, heads, kv_heads, slots, dim = 2, 3, 6, 2, 5, 8
    q = rng.normal(size=(batch, length, heads, dim)).astype(np.float32)
    keys, values = rng.normal(size=(2, batch, kv_heads, slots, dim)).astype(np.float32)
    mask = rng.random((batch, length, slots)) < 0.6
    mask[:, :, 0] = True  # every query has a key here; the unmasked case is checked below
    expected = jax.nn.dot_product_attention(
        q, keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3), mask=mask[:, None]
    )
    out = grouped_attention(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values), mask)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    # A query with no allowed key (padding) averages the values of its kv head: finite.
    mask[0, 1] = False
    out = grouped_attention(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values), mask)
    group = heads // kv_heads
    for h in range(heads):
        np.testing.assert_allclose(out[0, 1, h], values[0, h // group].mean(0), atol=1e-6)


def test_low_precision_attention_dots_run_in_float32_on_cpu():
    # XLA:CPU's batched bf16 dots are slow; on CPU a bf16 model's attention is the float32
    # computation of its bf16 inputs, rounded once at the end.
    assert jax.default_backend() == "cpu"
    assert attention_dot_dtype(jnp.bfloat16) == jnp.float32
    assert attention_dot_dtype(jnp.float16) == jnp.float32
    assert attention_dot_dtype(jnp.float32) == jnp.float32
    rng = np.random.default_rng(12)
    q, keys, values = (
        jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
        for shape in ((2, 3, 4, 8), (2, 2, 5, 8), (2, 2, 5, 8))
    )
    mask = jnp.asarray(rng.random((2, 3, 5)) < 0.7)
    out = jax.jit(grouped_attention)(q, keys, values, mask)
    assert out.dtype == jnp.bfloat16
    exact = grouped_attention(*(x.astype(jnp.float32) for x in (q, keys, values)), mask)
    np.testing.assert_array_equal(
        np.asarray(out, np.float32), np.asarray(exact.astype(jnp.bfloat16), np.float32)
    )
    # The dots of the jitted program are float32.
    jaxpr = jax.make_jaxpr(grouped_attention)(q, keys, values, mask)
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 2 and all(v.aval.dtype == jnp.float32 for e in dots for v in e.invars)


def test_window_attends_the_leading_slots_only(model):
    """Decoding with a window below max_len gives the full-cache logits, from smaller dots."""
    cache = _prefilled(model, max_len=32)  # rows of 4 and 2 tokens
    ids = _tokens(12, (2, 3))
    windowed = nnx.jit(lambda m, i, c: m(i, None, c, window=8))
    full_logits, full_cache = _forward(model, ids, None, cache)
    logits, new_cache = windowed(model, ids, cache)
    np.testing.assert_allclose(logits, full_logits, atol=1e-6, rtol=1e-6)
    # Writes still land in the full-capacity arrays.
    np.testing.assert_array_equal(_stacked(new_cache.k), _stacked(full_cache.k))
    # Every attention dot reads 8 slots: no operand has the capacity's 32.
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, c: nnx.merge(graphdef, s)(ids, None, c, window=8))(
        state, cache
    )
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dots and all(32 not in v.aval.shape for e in dots for v in e.invars)
    with pytest.raises(ValueError, match="window=0 must lie in"):
        model(ids, None, cache, window=0)
    with pytest.raises(ValueError, match="window=33 must lie in"):
        model(ids, None, cache, window=33)
    with pytest.raises(ValueError, match="pass a cache"):
        model(ids, window=8)


def test_repeat_rejects_zero_copies(model):
    with pytest.raises(ValueError, match="num_copies >= 1"):
        KVCache.init(model.config, 1, max_len=4).repeat(0)


def test_cache_layer_mismatch_raises(model):
    other = dataclasses.replace(model.config, num_layers=model.config.num_layers + 1)
    with pytest.raises(ValueError, match="layers"):
        model(_tokens(9, (1, 2)), None, KVCache.init(other, 1, max_len=8))


def test_jit_matches_eager(model):
    ids, mask = _tokens(7, (2, 6)), np.arange(6)[None] >= np.array([[0], [2]])
    eager, _ = model(ids, mask)
    jitted, _ = _forward(model, ids, mask)
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=1e-5)


def test_bfloat16_params_and_activations():
    config = tiny_config("qwen3", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    model = Transformer(config, rngs=nnx.Rngs(0))
    assert model.layers[0].attn.q_proj.kernel[...].dtype == jnp.bfloat16
    cache = KVCache.init(config, 2, max_len=8)
    assert cache.dtype == jnp.bfloat16 and all(k.dtype == jnp.bfloat16 for k in cache.k)
    logits, cache = _forward(model, _tokens(8, (2, 4)), None, cache)
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    reference = Transformer(dataclasses.replace(config, dtype=jnp.float32), rngs=nnx.Rngs(0))
    reference_logits, _ = _forward(reference, _tokens(8, (2, 4)))
    np.testing.assert_allclose(logits, reference_logits, atol=2e-2)


def test_cache_batch_mismatch_raises(model):
    cache = KVCache.init(model.config, 3, max_len=8)
    with pytest.raises(ValueError, match="batch size 3 != input batch size 2"):
        model(_tokens(9, (2, 2)), None, cache)


def test_config_rejects_heads_not_divisible_by_kv_heads():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        dataclasses.replace(tiny_config("llama"), num_heads=3)


def test_config_is_hashable_for_static_arguments():
    assert hash(tiny_config("llama")) == hash(tiny_config("llama"))
    assert isinstance(tiny_config("llama"), ModelConfig)


def test_rope_inverse_frequencies_by_hand():
    # head_dim 4, theta 25: inv_freq = 25^(-0/4), 25^(-2/4) = [1, 0.2].
    config = tiny_config("qwen2", head_dim=4, rope_theta=25.0)
    np.testing.assert_allclose(config.rope_inv_freq, [1.0, 0.2])
    # Llama 3 scaling, factor 8, low/high freq factors 1/4, original length 64: wavelength 2*pi
    # is below 64 / 4 = 16 (kept); 2*pi / 0.2 = 31.42 is between 16 and 64, so
    # s = (64 / 31.4159 - 1) / (4 - 1) = 0.345728 and 0.2 * ((1 - s) / 8 + s) = 0.0855024.
    scaled = tiny_config("llama", head_dim=4, rope_theta=25.0)
    np.testing.assert_allclose(scaled.rope_inv_freq, [1.0, 0.0855024], rtol=1e-5)
    # Theta 10^4: 2*pi / 0.01 = 628 > 64, so the frequency is divided by 8: 0.01 / 8 = 0.00125.
    long_wavelength = tiny_config("llama", head_dim=4, rope_theta=10_000.0)
    np.testing.assert_allclose(long_wavelength.rope_inv_freq, [1.0, 0.00125], rtol=1e-6)


def test_remat_gives_the_same_forward_and_gradients():
    config = tiny_config("qwen3")
    plain = Transformer(config, rngs=nnx.Rngs(0))
    remat = Transformer(dataclasses.replace(config, remat=True), rngs=nnx.Rngs(0))
    ids, mask = _tokens(9, (2, 6)), np.array([[True] * 6, [False, False] + [True] * 4])
    loss = nnx.jit(lambda m: jnp.mean(jnp.square(m(ids, mask)[0])))
    grad_plain, grad_remat = nnx.grad(loss)(plain), nnx.grad(loss)(remat)
    np.testing.assert_allclose(loss(remat), loss(plain), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(grad_remat)), jax.tree.leaves(nnx.state(grad_plain))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    # Each decoder layer is a rematerialised region of the backward pass (and only with remat).
    def grad_jaxpr(model: Transformer) -> str:
        graphdef, state = nnx.split(model)
        scalar = lambda s: jnp.sum(nnx.merge(graphdef, s)(ids, mask)[0])
        return str(jax.make_jaxpr(jax.grad(scalar))(state))

    assert grad_jaxpr(remat).count("remat") == config.num_layers
    assert "remat" not in grad_jaxpr(plain)
    # The HF config written for a checkpoint does not carry the training switch.
    assert "remat" not in remat.config.to_hf()


def test_remat_lora_adapter_gradients_in_a_jitted_step_match_plain():
    # As in `prm.training.update`: the frozen base weights enter the jitted step as an argument,
    # the gradient is over the LoRA adapters only and the model is merged inside the loss.
    def step(remat: bool):
        config = dataclasses.replace(tiny_config("qwen2"), remat=remat)
        model = Transformer(config, rngs=nnx.Rngs(0))
        apply_lora(model, rank=2, alpha=4.0, seed=0)
        graphdef, adapters, frozen = nnx.split(model, trainable_filter(lora=True), ...)
        # lora_b starts at zero, which would leave lora_a without a gradient.
        adapters = jax.tree.map(lambda x: x + 0.05, adapters)
        ids, mask = _tokens(9, (2, 6)), np.array([[True] * 6, [False, False] + [True] * 4])

        def loss(adapters, frozen):
            logits = nnx.merge(graphdef, adapters, frozen)(ids, mask)[0]
            return jnp.mean(jnp.square(logits))

        return jax.jit(jax.value_and_grad(loss))(adapters, frozen)

    (loss_plain, grads_plain), (loss_remat, grads_remat) = step(False), step(True)
    np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
    leaves_plain, leaves_remat = jax.tree.leaves(grads_plain), jax.tree.leaves(grads_remat)
    assert len(leaves_plain) == 2 * 7 * tiny_config("qwen2").num_layers  # lora_a, lora_b × 7
    assert all(np.abs(g).max() > 0 for g in leaves_plain)
    for a, b in zip(leaves_remat, leaves_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
