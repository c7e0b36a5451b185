"""Decoder-only transformer for Qwen2/Qwen2.5, Qwen3 and Llama 3, parameterised by `ModelConfig`.

Pre-norm blocks `x += attn(norm(x)); x += mlp(norm(x))` with rotary position embeddings
(RoFormer, Su et al. 2021), grouped-query attention (Ainslie et al. 2023) and a SwiGLU MLP
(Shazeer 2020), matching the Hugging Face `modeling_{qwen2,qwen3,llama}.py` numerics: RMSNorm
and softmax in float32, rotary embeddings in the "rotate half" layout of HF checkpoints.

Parameter paths (what partition, freeze and LoRA rules address):
    embed.embedding                              [vocab, hidden]
    layers.{i}.input_norm.scale                  [hidden]
    layers.{i}.attn.{q,k,v}_proj.{kernel,bias}   [hidden, heads * head_dim] (bias: qwen2)
    layers.{i}.attn.o_proj.kernel                [heads * head_dim, hidden]
    layers.{i}.attn.{q,k}_norm.scale             [head_dim] (qwen3)
    layers.{i}.post_attn_norm.scale              [hidden]
    layers.{i}.mlp.{gate,up}_proj.kernel         [hidden, intermediate]
    layers.{i}.mlp.down_proj.kernel              [intermediate, hidden]
    final_norm.scale                             [hidden]
    lm_head.kernel                               [hidden, vocab] (untied embeddings only)
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from prm.models.cache import KVCache
from prm.models.config import ModelConfig

# HF `initializer_range` default: random-init models (tests, toy runs) start near-uniform.
_INIT = nnx.initializers.normal(stddev=0.02)
# Score of a masked key: exp underflows to 0 next to any allowed key, yet stays finite.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich 2019), normalised in float32."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)


def rope_angles(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) of position * inv_freq, each float32 [..., head_dim // 2]."""
    inv_freq = jnp.asarray(config.rope_inv_freq, jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, heads, head_dim] by (cos, sin) [B, T, head_dim // 2].

    HF checkpoints pair dimension i with i + head_dim / 2 ("rotate half"), not 2i with 2i + 1.
    """
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    cos, sin = cos[:, :, None], sin[:, :, None]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def grouped_attention(
    q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array
) -> jax.Array:
    """softmax(q k^T / sqrt(D), masked) v for grouped-query attention, keys heads-major.

    q [B, T, H, D]; keys, values [B, K, S, D] with H = G * K: query head h = k * G + g reads kv
    head k (Ainslie et al. 2023; HF `repeat_kv` order). mask bool [B, T, S]: query t may attend
    key s. Scores and softmax are float32 (as HF); a query with no allowed key (padding) gets
    a uniform average, finite. Returns [B, T, H, D] in q's dtype.

    Both dots contract a minor axis of the heads-major keys and values (D for the scores, S
    for the output), so neither needs a transposed copy of the cache. They run in
    `attention_dot_dtype(q.dtype)`: float32 for a low-precision model on CPU.
    """
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads = keys.shape[1]
    chex.assert_shape(mask, (batch, length, keys.shape[2]))
    dtype = attention_dot_dtype(q.dtype)
    grouped = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = jnp.einsum(
        "btkgd,bksd->bkgts",
        grouped.astype(dtype),
        keys.astype(dtype),
        preferred_element_type=jnp.float32,
    )
    scores = jnp.where(mask[:, None, None], scores * head_dim**-0.5, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, values.astype(dtype))
    return out.reshape(batch, length, num_heads, head_dim).astype(q.dtype)


def attention_dot_dtype(dtype: jax.typing.DTypeLike) -> jnp.dtype:
    """The dtype of the attention dots for a model computing in `dtype`.

    XLA:CPU has no fast kernel for batched bf16/f16 dots: a 100M bf16 decode step spent ~12 ms
    of thread time in its attention dots against ~2.3 ms in float32 (docs/BENCHMARKS.md, AMD
    EPYC), so on CPU they run in float32 (also closer to exact). Accelerators keep `dtype`
    (their matrix units are fastest at bf16; this is what HF's bf16 attention does).
    """
    dtype = jnp.dtype(dtype)
    if (
        jax.default_backend() == "cpu"
        and jnp.issubdtype(dtype, jnp.floating)
        and dtype.itemsize < 4
    ):
        return jnp.dtype(jnp.float32)
    return dtype


class Attention(nnx.Module):
    """Grouped-query causal self-attention with RoPE and optional q/k RMSNorm (Qwen3)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        linear = functools.partial(
            nnx.Linear, dtype=c.dtype, param_dtype=c.param_dtype, kernel_init=_INIT, rngs=rngs
        )
        self.q_proj = linear(c.hidden_size, c.num_heads * c.head_dim, use_bias=c.attention_bias)
        self.k_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, use_bias=c.attention_bias)
        self.v_proj = linear(c.hidden_size, c.num_kv_heads * c.head_dim, use_bias=c.attention_bias)
        self.o_proj = linear(c.num_heads * c.head_dim, c.hidden_size, use_bias=False)
        norm = functools.partial(
            RMSNorm, c.head_dim, eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype
        )
        self.q_norm = norm() if c.qk_norm else None
        self.k_norm = norm() if c.qk_norm else None
        self.config = config

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array] | None,
        write_slots: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Attends x [B, T, hidden] to itself, or to this layer's cache after writing into it.

        Args:
          mask: bool [B, T, S], query t may attend key s. Without a cache S = T; with one,
            the keys are cache slots [0, S) (S <= max_len: the window attended).
          cache_kv: this layer's cached (k, v), each [B, K, max_len, D] (`KVCache`), or None.
          write_slots: int32 [B, T] cache slot of each new token (>= max_len: dropped).
        """
        c = self.config
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(batch, length, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(batch, length, c.num_kv_heads, c.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_kv is None:
            keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        else:
            cache_k, cache_v = cache_kv
            rows = jnp.arange(batch)[:, None]
            # Advanced indices on axes 0 and 2 around a slice index a [B, T, K, D] block: the
            # layout of k and v as projected, so the write needs no transpose.
            cache_k = cache_k.at[rows, :, write_slots].set(k.astype(cache_k.dtype), mode="drop")
            cache_v = cache_v.at[rows, :, write_slots].set(v.astype(cache_v.dtype), mode="drop")
            cache_kv = (cache_k, cache_v)
            window = mask.shape[-1]
            keys, values = cache_k[:, :, :window], cache_v[:, :, :window]
        out = grouped_attention(q, keys, values, mask)
        return self.o_proj(out.reshape(batch, length, c.num_heads * c.head_dim)), cache_kv


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        linear = functools.partial(
            nnx.Linear,
            use_bias=False,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            kernel_init=_INIT,
            rngs=rngs,
        )
        self.gate_proj = linear(c.hidden_size, c.intermediate_size)
        self.up_proj = linear(c.hidden_size, c.intermediate_size)
        self.down_proj = linear(c.intermediate_size, c.hidden_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        norm = functools.partial(
            RMSNorm,
            config.hidden_size,
            eps=config.rms_norm_eps,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
        )
        self.input_norm = norm()
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = norm()
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, mask, cache_kv, write_slots):
        attn_out, cache_kv = self.attn(self.input_norm(x), cos, sin, mask, cache_kv, write_slots)
        x = x + attn_out
        return x + self.mlp(self.post_attn_norm(x)), cache_kv


def _apply_layer(layer: DecoderLayer, *args):
    return layer(*args)


def _remat_layer(layer: DecoderLayer, *args):
    """`layer(*args)` with its activations recomputed in the backward pass (gradient
    checkpointing): `jax.checkpoint` over a pure function of the layer's state.

    Not `nnx.remat`: that writes the traced state back into the caller's Variables, which fails
    (flax TraceContextError) when they were built at another trace level, as in a jitted LoRA
    step whose frozen base weights enter at the jit level and whose adapters at the grad level.
    The layer has no state that its forward updates, so nothing needs writing back.
    """
    graphdef, state = nnx.split(layer)

    def apply(state, *args):
        return nnx.merge(graphdef, state)(*args)

    return jax.checkpoint(apply)(state, *args)


class Transformer(nnx.Module):
    """Qwen2/Qwen3/Llama decoder; see `prm.models` for the forward and cache contract."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.embed = nnx.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            embedding_init=_INIT,
            rngs=rngs,
        )
        self.layers = nnx.List([DecoderLayer(c, rngs=rngs) for _ in range(c.num_layers)])
        self.final_norm = RMSNorm(
            c.hidden_size, eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype
        )
        self.lm_head = (
            None
            if c.tie_word_embeddings
            else nnx.Linear(
                c.hidden_size,
                c.vocab_size,
                use_bias=False,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                kernel_init=_INIT,
                rngs=rngs,
            )
        )

    def hidden_states(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        window: int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, T, hidden] and the updated cache.

        Without a cache: causal forward; `input_mask` bool [B, T] marks real tokens (left or right
        padding), positions are cumsum(mask) - 1 and padded keys are masked out.
        With a cache: the real tokens of each row are a right-padded prefix of `input_ids`; token
        i of row b goes to slot (and position) cache.length[b] + i and attends to slots <= its
        own; writes past max_len are dropped; length grows by the number of real tokens.
        Hidden states at padded positions are unspecified (finite).

        window: with a cache, attend over slots [0, window) only (a static int <= max_len;
        default max_len), so attention costs what the live context does, not the capacity.
        The caller guarantees that every row's real tokens land below it
        (cache.length[b] + n_b <= window); keys past the window are not read.
        """
        chex.assert_rank(input_ids, 2)
        batch, length = input_ids.shape
        if input_mask is None:
            input_mask = jnp.ones((batch, length), bool)
        chex.assert_equal_shape([input_ids, input_mask])
        input_mask = input_mask.astype(bool)
        if cache is None:
            if window is not None:
                raise ValueError("window= bounds the cache slots attended; pass a cache too.")
            positions = jnp.maximum(jnp.cumsum(input_mask, axis=1) - 1, 0)
            causal = jnp.tril(jnp.ones((length, length), bool))
            mask = causal[None] & input_mask[:, None, :]
            write_slots = None
        else:
            if cache.batch_size != batch:
                raise ValueError(
                    f"Cache batch size {cache.batch_size} != input batch size {batch}; "
                    "use KVCache.init(config, batch, max_len) or cache.repeat(k) to match."
                )
            if cache.num_layers != len(self.layers):
                raise ValueError(
                    f"Cache has {cache.num_layers} layers, the model {len(self.layers)}; "
                    "build it with KVCache.init(model.config, ...)."
                )
            window = cache.max_len if window is None else window
            if not 1 <= window <= cache.max_len:
                raise ValueError(
                    f"window={window} must lie in [1, max_len={cache.max_len}]; it is the "
                    "number of leading cache slots attended."
                )
            positions = cache.length[:, None] + jnp.arange(length, dtype=jnp.int32)
            write_slots = jnp.where(input_mask, positions, cache.max_len)
            # The mask's width is the window: each layer reads keys [0, window) only.
            mask = jnp.arange(window)[None, None, :] <= positions[:, :, None]
        cos, sin = rope_angles(self.config, positions)
        x = self.embed(input_ids)
        # Gradient checkpointing only where there is a backward pass to save memory for:
        # cached (sampling) calls never recompute.
        apply_layer = _remat_layer if self.config.remat and cache is None else _apply_layer
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            layer_kv = None if cache is None else (cache.k[i], cache.v[i])
            x, layer_kv = apply_layer(layer, x, cos, sin, mask, layer_kv, write_slots)
            if cache is not None:
                new_k.append(layer_kv[0])
                new_v.append(layer_kv[1])
        if cache is not None:
            new_length = cache.length + jnp.sum(input_mask, axis=1, dtype=jnp.int32)
            cache = KVCache(k=tuple(new_k), v=tuple(new_v), length=new_length)
        return self.final_norm(x), cache

    def unembed(self, hidden: jax.Array) -> jax.Array:
        """Logits float32 [..., vocab] from final-normed hidden states [..., hidden]."""
        if self.lm_head is None:
            return self.embed.attend(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(
        self,
        input_ids: jax.Array,
        input_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        window: int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """(logits float32 [B, T, vocab], cache) == unembed(hidden_states(...))."""
        hidden, cache = self.hidden_states(input_ids, input_mask, cache, window=window)
        return self.unembed(hidden), cache
