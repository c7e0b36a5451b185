"""A dry run: the memory one device needs for a config, on a simulated mesh, with no weights.

`--config.dry_run=True` prints this plan instead of training. The model parts and optimiser state
are built abstractly (`jax.eval_shape` of `build_parts` and `tx.init`: shapes and dtypes only, no
memory, no checkpoint read; `model.init_from` is ignored, the architecture is `config.model`'s),
and every array's bytes on one device are its bytes divided by the product of the mesh axes that
its PartitionSpec (`prm.training.sharding` rules) names. The mesh is `config.mesh` filled to the
device count of `config.dry_run_devices` ("8xH200", "v5p-8", ...); no device is needed.

Terms, per device (b = rows of one micro-batch on a device = ⌈micro_batch_size / (data·fsdp)⌉,
T = data.seq_len, d = hidden, L = layers, H = heads / tensor, I = intermediate / tensor,
a = activation dtype bytes):

    params       trainable + frozen parameter bytes (a "lora_off" reference shares the policy's
                 base weights: counted once; its zeroed adapters are counted)
    optimiser    the optax state (AdamW: μ and ν per trainable parameter, step counts)
    gradients    2 × trainable bytes: the accumulated sum and one micro-batch's gradients
    activations  one micro-batch's forward + backward working set:
                   with remat:    (L + 1)·b·T·d·a  (layer inputs kept)  +  one layer recomputed
                   without remat: L · one layer  +  b·T·d·a
                 one layer = b·T·(4d + 2·(H + 2·K)·D + 3·I)·a  (norms, q k v, attention output,
                 gate up act)  +  2·b·H·T·T·4  (float32 attention scores and probabilities;
                 `jax.nn.dot_product_attention` materialises them), K = kv heads / tensor,
                 D = head_dim; plus the log-prob chunk b·chunk·V·4 (float32 logits of
                 `policy_loss.logits_chunk_size` positions, `prm.models.chunked_logprobs`)
    kv_cache     the sampler's cache for the rollout: rows·L·2·K·D·capacity·a / (data·fsdp),
                 rows = questions·(k + 1) for SLATE (the trajectory rows and one fork of k
                 siblings each), questions·group_size for group rollouts; capacity = the
                 sampler's bucket of seq_len + one step. Rows are assumed split over the batch
                 axes like the training batch.

The peak is params + optimiser + max(gradients + activations, kv_cache): rollouts and updates
take turns, the parameters and optimiser state stay resident through both.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from prm.training.checkpoints import RunError
from prm.training.optim import make_part_optimizer, updates_per_step
from prm.training.sharding import (
    BATCH_AXES,
    DEFAULT_RULES,
    Rule,
    make_mesh,
    mesh_sizes,
    partition_spec,
    path_to_str,
)
from prm.training.state import build_parts, reference_mode

GiB = 2**30
# HBM per device, and devices per chip of a TPU name's count ("v5p-8" = 8 TensorCores = 4 chips,
# each one JAX device).
TPU_HBM = {"v4": (32, 2), "v5e": (16, 1), "v5p": (95, 2), "v6e": (32, 1)}
GPU_HBM = {"A100": 80, "H100": 80, "H200": 141}


def simulated_devices(name: str) -> tuple[int, int]:
    """(device count, bytes per device) of "v5e-8", "v5p-8", "8xH100", "8xH200", ...

    TPU names count TensorCores (v4/v5p have 2 per chip and one JAX device per chip).
    """
    if match := re.fullmatch(r"(v\w+)-(\d+)", name):
        kind, cores = match.group(1), int(match.group(2))
        if kind in TPU_HBM:
            gib, cores_per_chip = TPU_HBM[kind]
            return max(cores // cores_per_chip, 1), gib * GiB
    if match := re.fullmatch(r"(\d+)x(\w+)", name):
        count, kind = int(match.group(1)), match.group(2)
        if kind in GPU_HBM:
            return count, GPU_HBM[kind] * GiB
    known = [f"{k}-N" for k in TPU_HBM] + [f"Nx{k}" for k in GPU_HBM]
    raise RunError(f"Unknown dry_run_devices {name!r}; use one of {', '.join(known)}.")


def mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """`config.mesh` with its -1 axis filled for `num_devices` (the arithmetic of `make_mesh`)."""
    try:
        return mesh_sizes(shape, num_devices)
    except ValueError as error:
        raise RunError(f"Mesh for the dry run: {error}") from error


def per_device_bytes(
    tree: Any, mesh: Mapping[str, int], rules: Sequence[Rule] = DEFAULT_RULES
) -> int:
    """Bytes of `tree` (arrays or ShapeDtypeStructs) on one device when sharded by `rules`:
    each leaf's bytes divided by the sizes of the mesh axes its PartitionSpec names."""
    abstract = jax.sharding.AbstractMesh(tuple(mesh.values()), tuple(mesh))
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        spec = partition_spec(path_to_str(path), leaf.shape, abstract, rules)
        names = [(e,) if isinstance(e, str) else tuple(e or ()) for e in spec]
        shards = math.prod(mesh[name] for entry in names for name in entry)
        total += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize // shards
    return total


def abstract_state(config: Any) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """(trainable params, frozen params, optimiser state, policy ModelConfig), all abstract.

    Built with `build_parts` and `make_part_optimizer` under `jax.eval_shape` on a one-device
    mesh (shapes do not depend on the mesh), random init from `config.model` (`init_from` and
    `warm_start` are dropped), LoRA as configured. Nothing is allocated.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.init_from = ""
    config.warm_start = ml_collections.ConfigDict()
    rules = tuple(tuple(rule) for rule in config.sharding_rules) or DEFAULT_RULES
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    tx, _ = make_part_optimizer(config, updates_per_step(config))
    model_configs = []

    def build():
        _, params, frozen, model_config = build_parts(config, mesh, rules)
        model_configs.append(model_config)
        return params, frozen, tx.init(params)

    with jax.set_mesh(mesh):
        params, frozen, opt_state = jax.eval_shape(build)
    if reference_mode(config) == "lora_off":
        frozen = {k: v for k, v in frozen.items() if k != "reference"}  # the policy's arrays
    return params, frozen, opt_state, model_configs[0]


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of each term (module docstring) and the device's memory."""

    devices: str
    mesh: dict[str, int]
    device_bytes: int
    trainable: int
    frozen: int
    optimizer: int
    gradients: int
    activations: int
    logprob_chunk: int
    kv_cache: int
    micro_rows: int
    rollout_rows: int

    @property
    def params(self) -> int:
        return self.trainable + self.frozen

    @property
    def update_phase(self) -> int:
        return self.params + self.optimizer + self.gradients + self.activations

    @property
    def rollout_phase(self) -> int:
        return self.params + self.optimizer + self.kv_cache

    @property
    def peak(self) -> int:
        return max(self.update_phase, self.rollout_phase)

    @property
    def fits(self) -> bool:
        return self.peak <= self.device_bytes


def layer_activation_bytes(model_config: Any, rows: int, seq_len: int, tensor: int) -> int:
    """One decoder layer's forward + backward working set for `rows` × `seq_len` tokens."""
    c = model_config
    act = np.dtype(c.dtype).itemsize
    heads, kv_heads = c.num_heads // tensor or 1, c.num_kv_heads // tensor or 1
    width = 4 * c.hidden_size + 2 * (heads + 2 * kv_heads) * c.head_dim
    width += 3 * (c.intermediate_size // tensor)
    scores = 2 * rows * heads * seq_len * seq_len * 4
    return rows * seq_len * width * act + scores


def activation_bytes(model_config: Any, rows: int, seq_len: int, tensor: int, chunk: int) -> int:
    """(remat or not) activations of one micro-batch, plus the log-prob chunk."""
    c = model_config
    boundary = rows * seq_len * c.hidden_size * np.dtype(c.dtype).itemsize
    layer = layer_activation_bytes(c, rows, seq_len, tensor)
    kept = (c.num_layers + 1) * boundary + layer if c.remat else c.num_layers * layer + boundary
    return kept + rows * chunk * c.vocab_size * 4


def rows_per_question(config: Any) -> tuple[int, int]:
    """(training rows, sampler cache rows) per question of the config's rollout."""
    rollout = config.get("rollout") or {}
    if "k" in rollout:  # SLATE: budget × k sibling rows trained; the trajectory + k forks cached
        return rollout.budget * rollout.k, rollout.k + 1
    group = rollout.get("group_size", 1)
    return group, group


def kv_cache_bytes(model_config: Any, rows: int, capacity: int, tensor: int) -> int:
    c = model_config
    kv_heads = c.num_kv_heads // tensor if c.num_kv_heads % tensor == 0 else c.num_kv_heads
    return rows * c.num_layers * 2 * kv_heads * c.head_dim * capacity * np.dtype(c.dtype).itemsize


def memory_plan(config: Any) -> MemoryPlan:
    """The per-device memory of `config` on `config.dry_run_devices` (module docstring)."""
    from prm.sampling.sampler import _bucket  # noqa: PLC0415 - the sampler's cache capacities

    count, device_bytes = simulated_devices(config.get("dry_run_devices", "8xH200"))
    mesh = mesh_shape(config.mesh, count)
    rules = tuple(tuple(rule) for rule in config.sharding_rules) or DEFAULT_RULES
    params, frozen, opt_state, model_config = abstract_state(config)
    trainable = per_device_bytes(params, mesh, rules)
    batch_shards = math.prod(mesh[a] for a in BATCH_AXES)
    train_rows, cache_rows = rows_per_question(config)
    questions = config.data.get("batch_size", 1)
    mini = questions * train_rows // config.updates.num_mini_batches
    micro_rows = -(-(config.updates.micro_batch_size or mini) // batch_shards)
    seq_len = config.data.seq_len
    chunk = config.get("policy_loss", {}).get("logits_chunk_size", 128)
    step = config.get("rollout", {}).get("max_step_tokens", 0)
    capacity = min(_bucket(seq_len + step + 8), model_config.max_position_embeddings)
    rollout_rows = -(-(questions * cache_rows) // batch_shards)
    return MemoryPlan(
        devices=config.get("dry_run_devices", "8xH200"),
        mesh=mesh,
        device_bytes=device_bytes,
        trainable=trainable,
        frozen=per_device_bytes(frozen, mesh, rules),
        optimizer=per_device_bytes(opt_state, mesh, rules),
        gradients=2 * trainable,
        activations=activation_bytes(model_config, micro_rows, seq_len, mesh["tensor"], chunk),
        logprob_chunk=micro_rows * chunk * model_config.vocab_size * 4,
        kv_cache=kv_cache_bytes(model_config, rollout_rows, capacity, mesh["tensor"]),
        micro_rows=micro_rows,
        rollout_rows=rollout_rows,
    )


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a table in GiB per device, with the verdict."""
    gib = lambda n: f"{n / GiB:9.3f} GiB"
    mesh = " ".join(f"{k}={v}" for k, v in plan.mesh.items())
    lines = [
        f"Dry run on {plan.devices} (mesh {mesh}), per device:",
        f"  params trainable  {gib(plan.trainable)}",
        f"  params frozen     {gib(plan.frozen)}",
        f"  optimiser state   {gib(plan.optimizer)}",
        f"  gradients         {gib(plan.gradients)}",
        f"  activations       {gib(plan.activations)}  (micro-batch of {plan.micro_rows} rows "
        f"per device; log-prob chunk {plan.logprob_chunk / GiB:.3f} GiB)",
        f"  sampler KV cache  {gib(plan.kv_cache)}  ({plan.rollout_rows} rows per device)",
        f"  update phase      {gib(plan.update_phase)}",
        f"  rollout phase     {gib(plan.rollout_phase)}",
        f"  peak              {gib(plan.peak)} of {gib(plan.device_bytes)}",
        f"Verdict: {'fits' if plan.fits else 'does NOT fit'} "
        f"({100 * plan.peak / plan.device_bytes:.0f} % of device memory).",
    ]
    return "\n".join(lines)


def check_fits(plan: MemoryPlan, config: Any) -> None:
    """Raises a one-line `RunError` saying what does not fit and what to change."""
    if plan.fits:
        return
    phase = "update" if plan.update_phase >= plan.rollout_phase else "rollout"
    remedies = []
    if plan.mesh["fsdp"] < math.prod(plan.mesh.values()):
        remedies.append("more fsdp shards (--config.mesh.fsdp=-1 --config.mesh.data=1)")
    if plan.micro_rows > 1:
        remedies.append("a smaller --config.updates.micro_batch_size")
    if not config.model.get("remat", False):
        remedies.append("--config.model.remat=True")
    if phase == "rollout":
        remedies.append("fewer questions per step (--config.data.batch_size)")
    remedies.append("a device with more memory (--config.dry_run_devices)")
    raise RunError(
        f"Does not fit on {plan.devices}: the {phase} phase needs {plan.peak / GiB:.1f} GiB per "
        f"device of {plan.device_bytes / GiB:.0f} GiB (params {plan.params / GiB:.1f}, optimiser "
        f"{plan.optimizer / GiB:.1f}, activations {plan.activations / GiB:.1f}, KV cache "
        f"{plan.kv_cache / GiB:.1f}); use {'; or '.join(remedies)}."
    )
