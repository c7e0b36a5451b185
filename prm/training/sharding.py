"""Meshes, regex partition rules and sharding helpers (pjit style, `AxisType.Auto` meshes).

A mesh has three named axes, `("data", "fsdp", "tensor")`: batches are split over data × fsdp,
parameters over fsdp (ZeRO-3 style: each device holds a slice, gathered per layer) and tensor
(Megatron style: heads / hidden units). Which parameter dimension goes on which axis is decided by
regex rules over the parameter's dotted path, e.g. `layers.0.attn.q_proj.kernel`:

    rules = (
        (r"q_proj\\.kernel$", ("fsdp", "tensor")),   # [hidden, heads·head_dim]
        (r".*", ()),                                  # everything else replicated
    )

The first matching rule wins. Because rules are anchored on the end of the path, the same rules
shard any pytree that embeds the parameters: Adam's `mu`/`nu` (`0.mu.layers.0.attn.q_proj.kernel`)
get their parameter's sharding, scalars like the step count are replicated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over every axis that holds a replica of a parameter slice.
BATCH_AXES = ("data", "fsdp")

Rule = tuple[str, Sequence[str | None]]

# Rules for the prm Transformer (`prm.models`): kernels are [in, out]; the embedding is
# [vocab, hidden]. The "tensor" axis splits heads / MLP units, "fsdp" the hidden dimension.
DEFAULT_RULES: tuple[Rule, ...] = (
    (r"embed\.embedding$", ("tensor", "fsdp")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.kernel$", ("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj)\.bias$", ("tensor",)),
    (r"(o_proj|down_proj)\.kernel$", ("tensor", "fsdp")),
    (r"lm_head\.kernel$", ("fsdp", "tensor")),
    (r"lora_a$", ("fsdp", None)),
    (r"lora_b$", (None, "tensor")),
    (r".*", ()),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a `("data", "fsdp", "tensor")` mesh; one axis may be -1 (use all remaining devices).

    `shape` is e.g. `{"data": -1, "fsdp": 1, "tensor": 1}` (the config's `mesh` block).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = tuple(mesh_sizes(shape, len(devices)).values())
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_sizes(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """`{axis: size}` of `shape` over `num_devices`, its one -1 axis filled (see `make_mesh`)."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"Unknown mesh axes {sorted(unknown)}; valid axes are {MESH_AXES}.")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"Cannot fill mesh {dict(zip(MESH_AXES, sizes))} with {num_devices} devices: "
                f"{num_devices} is not a multiple of {known}."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"Mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices but "
            f"{num_devices} are available; set one axis to -1 or match the device count."
        )
    return dict(zip(MESH_AXES, sizes))


def path_to_str(path: Sequence[Any]) -> str:
    """Dotted name of a pytree key path; NNX's trailing `.value` is dropped."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if parts and parts[-1] == "value":
        parts.pop()
    return ".".join(parts)


def partition_spec(
    path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[Rule]
) -> PartitionSpec:
    """The spec of the first rule whose regex matches `path` (`re.search`).

    A dimension whose size is not divisible by its mesh axis size is replicated instead (small
    vocabularies or head counts on a large tensor axis), so a rule set written for one model
    size stays valid for others. No matching rule replicates the array.
    """
    matched = next(((p, s) for p, s in rules if re.search(p, path)), None)
    if matched is None:
        return PartitionSpec()
    pattern, spec = matched[0], tuple(matched[1])
    if len(spec) > len(shape):
        if len(shape) == 0:
            return PartitionSpec()
        raise ValueError(
            f"Partition rule {pattern!r} gives spec {spec} of rank {len(spec)} for {path!r} "
            f"of shape {tuple(shape)}; write a rule with at most {len(shape)} entries."
        )
    fitted = []
    for dim, axes in zip(shape, spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[name] for name in names]))
        divisible = names and dim % size == 0
        fitted.append((names[0] if len(names) == 1 else names) if divisible else None)
    return PartitionSpec(*fitted)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES) -> Any:
    """A pytree of `NamedSharding`s for `tree` (arrays or `ShapeDtypeStruct`s) by path rules."""

    def leaf_sharding(path, leaf):
        return NamedSharding(mesh, partition_spec(path_to_str(path), leaf.shape, mesh, rules))

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def sharding_fn(
    mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES
) -> Callable[[str, Sequence[int], Any], NamedSharding]:
    """`(param_path, shape, dtype) -> NamedSharding` for `prm.models.from_pretrained`."""

    def fn(param_path: str, shape: Sequence[int], dtype: Any) -> NamedSharding:
        del dtype
        return NamedSharding(mesh, partition_spec(param_path, shape, mesh, rules))

    return fn


def shard_model(model: nnx.Module, mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES) -> Any:
    """Moves `model`'s state onto its rule shardings (in place); returns those shardings.

    For sampling and scoring calls written in the split/merge style:

        state_shardings = shard_model(model, mesh)
        graphdef, state = nnx.split(model)
        step = jax.jit(fn, in_shardings=(state_shardings, batch_sharding(mesh)), ...)
    """
    state = nnx.state(model)
    shardings = tree_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return shardings


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over data × fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def constrain(x: jax.Array, spec: PartitionSpec) -> jax.Array:
    """`with_sharding_constraint` against the mesh set by `jax.set_mesh`, also on CPU.

    Unlike helpers that skip constraints on CPU, this one applies them whenever a mesh is set, so
    multi-device CPU tests exercise the same constraints as TPU runs. Without a mesh it is the
    identity (single-device code paths need no mesh).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into global arrays sharded over the batch axes.

    Every host passes its own rows (`jax.process_index()`-th slice of the global batch); on one
    host this is a sharded `device_put`.
    """
    return {
        name: jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
        for name, value in local_batch.items()
    }
