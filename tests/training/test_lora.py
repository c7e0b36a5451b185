import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm.models import ModelConfig, Transformer
from prm.training.lora import ALL_LINEAR, LoRALinear, apply_lora, merge_lora
from prm.training.optim import trainable_filter

CONFIG = ModelConfig(family="qwen2", vocab_size=32, hidden_size=16, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=8, intermediate_size=24, attention_bias=True)  # fmt: skip
TOKENS = jnp.array([[1, 5, 7, 9, 3], [2, 2, 4, 8, 16]], jnp.int32)


def _names(state):
    return {".".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}


def test_fresh_adapters_leave_outputs_unchanged_and_keep_paths():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    before, _ = model(TOKENS)
    base_names = _names(nnx.state(model))
    assert apply_lora(model, rank=4, alpha=16.0) == 2 * 7  # 7 projections per layer
    after, _ = model(TOKENS)
    np.testing.assert_array_equal(before, after)  # B = 0 at init
    names = _names(nnx.state(model))
    assert base_names < names
    assert "layers.0.attn.q_proj.lora_a" in names and "layers.1.mlp.down_proj.lora_b" in names
    assert "lm_head.lora_a" not in names


def test_adapter_output_is_scaled_low_rank_update():
    base = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = jnp.array([[1.0, 2.0, 3.0]])
    reference = base(x)
    lora = LoRALinear(base, rank=1, alpha=4.0, rngs=nnx.Rngs(1))
    lora.lora_a[...] = jnp.array([[1.0], [0.0], [1.0]])
    lora.lora_b[...] = jnp.array([[0.5, -1.0]])
    # x A = 1 + 3 = 4; (x A) B = [2, -4]; scale α/r = 4.
    np.testing.assert_allclose(lora(x), reference + 4.0 * jnp.array([[2.0, -4.0]]), rtol=1e-6)


def test_merge_gives_plain_linears_with_same_outputs():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    apply_lora(model, rank=2, alpha=8.0)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        var[...] = jax.random.normal(jax.random.key(len(path)), var[...].shape) * 0.1
    with_adapters, _ = model(TOKENS)
    assert merge_lora(model) == 14
    merged, _ = model(TOKENS)
    np.testing.assert_allclose(merged, with_adapters, atol=1e-5)
    assert not nnx.state(model, nnx.LoRAParam)
    assert isinstance(model.layers[0].attn.q_proj, nnx.Linear)


def test_only_adapters_are_trainable():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    apply_lora(model, rank=2, alpha=8.0, targets=r"attn\.(q_proj|v_proj)$")
    trainable = nnx.state(model, trainable_filter(lora=True))
    assert _names(trainable) == {
        f"layers.{i}.attn.{p}.lora_{ab}" for i in (0, 1) for p in ("q_proj", "v_proj")
        for ab in "ab"
    }  # fmt: skip


def test_targets_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="match no nnx.Linear"):
        apply_lora(Transformer(CONFIG, rngs=nnx.Rngs(0)), 2, 8.0, targets="qkv$")


def test_all_linear_pattern_covers_every_projection():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    linears = [".".join(map(str, p)) for p, m in nnx.iter_modules(model)
               if isinstance(m, nnx.Linear)]  # fmt: skip
    assert {n for n in linears if re.search(ALL_LINEAR, n)} == set(linears) - {"lm_head"}
