"""The decode-time copy of a model's weights: what `Sampler.start` samples from.

A decode step multiplies a few rows by every weight matrix, so its time is the time to read
the weights. The copy stores them the way the decode step reads them fastest, once per change
of the weights rather than once per `generate` call:

- every floating-point parameter in the model's compute dtype where that is narrower than its
  storage dtype (a bf16 decode of f32 weights). The model casts each parameter to its compute
  dtype before use, so no value changes; without the copy XLA casts every weight again at the
  start of each `generate` (it hoists the casts out of the decode loop, not out of the call).
- with a bf16 compute dtype, every `nnx.Linear` kernel stored [out, in] (`DecodeLinear`): on
  XLA CPU a bf16 matrix-vector product reads a kernel along its contiguous rows much faster
  (12 layers of the 100M model's matmuls at batch 8: 1.5-2.7x), while in f32 the [in, out]
  layout is as fast or faster, so f32 kernels keep it. (Transposing inside the jitted step
  does not work: XLA materialises the transposed copy at every call.)

The training model is never modified: the copy is a new module tree, and `DecodeWeights`
makes it again whenever any parameter array of the model is a different object from the one
it was made from (JAX arrays are immutable, so an optimiser step or an assignment always
installs new ones): a session never samples from stale weights.
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class DecodeLinear(nnx.Module):
    """`nnx.Linear` with its kernel stored [out, in]: y = x W + b, W = kernel_t^T.

    Built from a linear layer; computes exactly what it does (same dtype promotion and
    precision), up to the summation order of the dot.
    """

    def __init__(self, linear: nnx.Linear, dtype: Any):
        self.kernel_t = nnx.Param(linear.kernel[...].T.astype(dtype))
        bias = linear.bias[...].astype(dtype) if linear.bias is not None else None
        self.bias = nnx.Param(bias) if bias is not None else None
        self.dtype = dtype
        self.precision = linear.precision

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        dims = (((x.ndim - 1,), (1,)), ((), ()))
        y = jax.lax.dot_general(x, self.kernel_t[...], dims, precision=self.precision)
        return y if self.bias is None else y + self.bias[...]


def _plain_linear(module: nnx.Module, dtype: Any) -> bool:
    """An `nnx.Linear` computing in `dtype` with the default dot (what `DecodeLinear` does)."""
    return (
        type(module) is nnx.Linear
        and module.dtype == dtype
        and module.dot_general is jax.lax.dot_general
        and getattr(module, "preferred_element_type", None) is None
    )


def _reference(leaf: Any) -> weakref.ref | Any:
    """A weak reference to an array; a non-array leaf (a Python scalar) itself."""
    try:
        return weakref.ref(leaf)
    except TypeError:
        return lambda: leaf


def transposes_kernels(dtype: Any) -> bool:
    """Whether the decode copy stores kernels [out, in] for this compute dtype (see above)."""
    return jnp.dtype(dtype) == jnp.bfloat16


def decode_copy(model: nnx.Module, dtype: Any) -> nnx.Module:
    """A new module computing what `model` does, its weights in the decode layout and dtype.

    dtype: the model's compute dtype. Floating-point parameters wider than it are cast to it;
    with bf16, every `nnx.Linear` becomes a `DecodeLinear`. `model` is left untouched (the
    copy shares its arrays where nothing changes).
    """
    graphdef, state = nnx.split(model)
    narrow = jnp.dtype(dtype)

    def cast(leaf: Any) -> Any:
        wider = jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype.itemsize > narrow.itemsize
        return leaf.astype(narrow) if wider else leaf

    copy = nnx.merge(graphdef, jax.tree.map(cast, state))
    if not transposes_kernels(dtype):
        return copy
    linears = [(path, m) for path, m in nnx.iter_modules(copy) if _plain_linear(m, dtype)]
    for path, linear in linears:
        parent = copy
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        if isinstance(path[-1], int):
            parent[path[-1]] = DecodeLinear(linear, dtype)
        else:
            setattr(parent, path[-1], DecodeLinear(linear, dtype))
    return copy


class DecodeWeights:
    """`nnx.split(decode_copy(model, dtype))`, made again only when the model's weights change.

    Holds weak references to the arrays the copy was made from, so it keeps no old weights
    alive; a parameter whose array is gone or replaced means the weights changed.
    """

    def __init__(self, model: nnx.Module, dtype: Any):
        self.model, self.dtype = model, dtype
        self._source: tuple[Any, list[Any]] | None = None
        self._split: tuple[nnx.GraphDef, nnx.State] | None = None

    def __call__(self) -> tuple[nnx.GraphDef, nnx.State]:
        """(graphdef, state) of the copy of the model's current weights."""
        graphdef, state = nnx.split(self.model)
        leaves = jax.tree.leaves(state)
        if self._source is not None and self._split is not None:
            old_graphdef, refs = self._source
            unchanged = old_graphdef == graphdef and len(refs) == len(leaves)
            if unchanged and all(ref() is leaf for ref, leaf in zip(refs, leaves)):
                return self._split
        self._split = nnx.split(decode_copy(self.model, self.dtype))
        self._source = graphdef, [_reference(leaf) for leaf in leaves]
        return self._split
