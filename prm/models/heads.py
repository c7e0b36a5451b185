"""A scalar head (value, verifier, progress) on a `Transformer` trunk."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prm.models.transformer import Transformer


class ScalarHeadModel(nnx.Module):
    """score[b, t] = w . h[b, t] + c on the trunk's final-normed hidden states.

    The head starts at zero (w = 0, c = 0): every score begins at 0, i.e. a value of 0 or a
    probability of 1/2 after a sigmoid, and the first updates move the head before the trunk.
    Parameter paths: `trunk.<Transformer paths>`, `head.kernel`, `head.bias`; the trunk's
    `lm_head` (if any) is kept, so the same trunk can still be sampled from.
    """

    def __init__(self, trunk: Transformer, *, rngs: nnx.Rngs):
        config = trunk.config
        self.trunk = trunk
        self.head = nnx.Linear(
            config.hidden_size,
            1,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, input_ids: jax.Array, input_mask: jax.Array | None = None) -> jax.Array:
        """float32 [B, T] scores; position t sees tokens <= t (padding as in the trunk)."""
        hidden, _ = self.trunk.hidden_states(input_ids, input_mask)
        return self.head(hidden)[..., 0].astype(jnp.float32)
