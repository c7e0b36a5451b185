"""LoRA on the linear layers of an NNX model (Hu et al., 2021, "LoRA", §4.1).

    y = x W + b + (α / r) · (x A) B,    A ∈ R^{in×r},  B ∈ R^{r×out},  B = 0 at init,

so a freshly wrapped model computes exactly what the base model did. A is initialised like
PyTorch/PEFT's `kaiming_uniform_(a=√5)`, i.e. U(−1/√in, 1/√in). SLATE trains r = 16, α = 64 on
all linear layers (slate.md §2.6).

The wrapper keeps the base layer's `kernel`/`bias` variables under the same attribute names, so
parameter paths stay `layers.0.attn.q_proj.kernel` (partition and freeze rules keep working) and
the adapters appear beside them as `…q_proj.lora_a` / `…q_proj.lora_b` (`nnx.LoRAParam`).
`merge_lora` folds the adapters back into plain `nnx.Linear`s for `save_pretrained`.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

# All projections of the prm Transformer (attention and MLP); the LM head and embeddings stay
# full-rank, as with PEFT's "all-linear".
ALL_LINEAR = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

_lora_a_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class LoRALinear(nnx.Module):
    """`base(x) + (alpha / rank) · (x @ lora_a) @ lora_b`, sharing the base layer's variables."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        in_features, out_features = base.kernel.shape
        self.kernel = base.kernel
        self.bias = base.bias
        self.dtype = base.dtype
        self.precision = base.precision
        self.scale = alpha / rank
        param_dtype = base.kernel[...].dtype
        self.lora_a = nnx.LoRAParam(_lora_a_init(rngs.params(), (in_features, rank), param_dtype))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_features), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias, lora_a, lora_b = nnx.nn.dtypes.promote_dtype(
            (x, self.kernel[...], bias, self.lora_a[...], self.lora_b[...]), dtype=self.dtype
        )
        y = jnp.matmul(x, kernel, precision=self.precision)
        if bias is not None:
            y = y + bias
        return y + self.scale * ((x @ lora_a) @ lora_b)

    def merged_kernel(self) -> jax.Array:
        """W + (α / r) A B in the kernel's dtype."""
        kernel = self.kernel[...]
        delta = self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32)
        return (kernel.astype(jnp.float32) + self.scale * delta).astype(kernel.dtype)


def _replace_modules(model: nnx.Module, select, build) -> int:
    """Replaces every submodule `m` with `select(path, m)` by `build(m)`; returns how many."""
    targets = [
        (path, module)
        for path, module in nnx.iter_modules(model)
        if path and select(".".join(str(p) for p in path), module)
    ]
    for path, module in targets:
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        if isinstance(path[-1], int):
            parent[path[-1]] = build(module)
        else:
            setattr(parent, path[-1], build(module))
    return len(targets)


def apply_lora(
    model: nnx.Module, rank: int, alpha: float, targets: str = ALL_LINEAR, seed: int = 0
) -> int:
    """Wraps, in place, every `nnx.Linear` whose dotted path matches `targets` (`re.search`).

    Returns the number of wrapped layers; raises if none matches (a typo in `targets` would
    otherwise train nothing).
    """
    pattern = re.compile(targets)
    rngs = nnx.Rngs(seed)
    count = _replace_modules(
        model,
        lambda name, m: isinstance(m, nnx.Linear) and bool(pattern.search(name)),
        lambda m: LoRALinear(m, rank, alpha, rngs=rngs),
    )
    if count == 0:
        raise ValueError(
            f"LoRA targets {targets!r} match no nnx.Linear layer; linear layers are e.g. "
            f"{[n for n, _ in _linear_names(model)][:4]}."
        )
    return count


def _linear_names(model: nnx.Module):
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear):
            yield ".".join(str(p) for p in path), module


def merge_lora(model: nnx.Module) -> int:
    """Folds every `LoRALinear` back into a plain `nnx.Linear` (in place); returns how many."""

    def build(m: LoRALinear) -> nnx.Linear:
        merged = m.merged_kernel()
        bias = m.bias[...] if m.bias is not None else None
        return nnx.Linear(
            *merged.shape,
            use_bias=bias is not None,
            dtype=m.dtype,
            param_dtype=merged.dtype,
            precision=m.precision,
            kernel_init=lambda *_: merged,
            bias_init=lambda *_: bias,
            rngs=nnx.Rngs(0),
        )

    return _replace_modules(model, lambda _, m: isinstance(m, LoRALinear), build)
