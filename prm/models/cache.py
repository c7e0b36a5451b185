"""`KVCache`: per-row compact key/value cache for batched decoding.

Row b holds its context in slots [0, length[b]) and the token in slot s sits at position s, so
rows of different lengths, appends to a subset of rows and forks need no per-row offsets. The
write rule lives in `Transformer.hidden_states`: the new tokens of row b (right-padded, n_b of
them) go to slots length[b] .. length[b] + n_b - 1; writes past `max_len` are dropped.

Layout: each layer owns its own heads-major [batch, num_kv_heads, max_len, head_dim] key and
value arrays.
- Heads-major: the attention dots contract over head_dim (scores) and over slots (values) per
  (row, kv head); with slots before heads XLA (on CPU at least) first transposed every layer's
  whole cache into this order at every decode step, a copy that grew with the capacity.
- Per layer: one stacked [num_layers, ...] array would be smaller to write down, but a per-layer
  scatter into it followed by that layer's read makes XLA copy the whole stack at every layer.
Callers outside `prm.models` go through the methods below and never see the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from prm.models.config import ModelConfig

SLOT_AXIS = 2  # of each [batch, num_kv_heads, max_len, head_dim] array


@struct.dataclass
class KVCache:
    """k, v: one [batch, num_kv_heads, max_len, head_dim] array per layer; length int32[batch]."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: jax.Array

    @classmethod
    def init(cls, config: ModelConfig, batch_size: int, max_len: int, dtype: Any = None) -> KVCache:
        """An empty cache (length 0 in every row); `dtype` defaults to `config.dtype`."""
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
        dtype = config.dtype if dtype is None else dtype
        layers = range(config.num_layers)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in layers),
            v=tuple(jnp.zeros(shape, dtype) for _ in layers),
            length=jnp.zeros((batch_size,), jnp.int32),
        )

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def batch_size(self) -> int:
        return self.length.shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[SLOT_AXIS]

    @property
    def dtype(self) -> Any:
        return self.k[0].dtype

    def repeat(self, num_copies: int) -> KVCache:
        """Each row repeated `num_copies` times in place (row b -> rows b*k .. b*k + k - 1)."""
        if num_copies < 1:
            raise ValueError(f"repeat(num_copies) needs num_copies >= 1, got {num_copies}.")
        # Every leaf (each layer's k and v, and length) has the batch as axis 0.
        return jax.tree.map(lambda x: jnp.repeat(x, num_copies, axis=0), self)

    def take(self, rows: jax.Array) -> KVCache:
        """The cache of rows[0], rows[1], ... (int [n], any order, repeats allowed).

        Negative indices count from the end and out-of-range ones are clamped (JAX gather
        semantics): check them on the host, as `Session.select` does.
        """
        rows = jnp.asarray(rows)
        if rows.ndim != 1:
            raise ValueError(f"take(rows) needs a 1-D index array, got shape {rows.shape}.")
        return jax.tree.map(lambda x: x[rows], self)

    @classmethod
    def concatenate(cls, caches: Sequence[KVCache]) -> KVCache:
        """The rows of every cache, in order, in one cache (all must share max_len and dtype)."""
        if not caches:
            raise ValueError("concatenate() needs at least one cache.")
        if len({(c.max_len, c.dtype, c.num_layers) for c in caches}) != 1:
            raise ValueError(
                "concatenate() needs caches of one max_len, dtype and depth; resize them first."
            )
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *caches)

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys and values."""
        return sum(x.nbytes for x in (*self.k, *self.v))

    def resize(self, max_len: int) -> KVCache:
        """The same rows with capacity `max_len` (>= the current one); new slots are zero."""
        if max_len < self.max_len:
            raise ValueError(
                f"resize() only grows the cache: max_len {max_len} < current {self.max_len}."
            )
        widths = [(0, 0)] * 4
        widths[SLOT_AXIS] = (0, max_len - self.max_len)
        k, v = jax.tree.map(lambda x: jnp.pad(x, widths), (self.k, self.v))
        return self.replace(k=k, v=v)
