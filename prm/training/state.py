"""The train state and building a (sharded) model from the config's `model` / `lora` blocks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from prm.models import ModelConfig, Transformer, from_pretrained
from prm.training.lora import apply_lora
from prm.training.optim import trainable_filter
from prm.training.sharding import Rule, shard_model, sharding_fn, tree_shardings


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (the frozen params live outside, never donated).

    step: int32[] completed train steps; params: {part name: trainable `nnx.State`} ("policy",
    plus extra trainable parts); opt_state: the optax state of those params; rng: a raw
    uint32[2] PRNG key, split once per step.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def model_config_from(model: Any) -> ModelConfig:
    """A `ModelConfig` from the config's `model` block (fields named as in `ModelConfig`).

    `dtype`/`param_dtype` are names ("float32", "bfloat16"); keys that are not `ModelConfig`
    fields (`init_from`) are ignored.
    """
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {k: v for k, v in model.items() if k in fields}
    for name in ("dtype", "param_dtype"):
        if name in kwargs:
            kwargs[name] = jnp.dtype(kwargs[name])
    if "eos_token_ids" in kwargs:
        kwargs["eos_token_ids"] = tuple(kwargs["eos_token_ids"])
    return ModelConfig(**kwargs)


def build_model(config: Any, mesh: Mesh, rules: Sequence[Rule]) -> tuple[nnx.Module, ModelConfig]:
    """The model of `config`, its parameters created directly in their target shardings.

    `config.model.init_from` names a Hugging Face directory (loaded tensor by tensor onto its
    shards; the architecture comes from its config.json, `config.model` only sets `dtype` and
    `param_dtype`), else the model is randomly initialised from `config.model` and `config.seed` inside
    one jit whose outputs are sharded by `rules` (no replicated copy ever exists). With
    `config.lora.rank > 0`, LoRA adapters wrap the layers matching `config.lora.targets`.
    Call inside `jax.set_mesh(mesh)`.
    """
    if config.model.init_from:
        model, model_config = from_pretrained(
            config.model.init_from,
            param_dtype=jnp.dtype(config.model.param_dtype),
            sharding_fn=sharding_fn(mesh, rules),
            dtype=jnp.dtype(config.model.dtype),
        )
    else:
        model_config = model_config_from(config.model)
        create = lambda: Transformer(model_config, rngs=nnx.Rngs(config.seed))
        graphdef, abstract = nnx.split(nnx.eval_shape(create))
        shardings = tree_shardings(abstract, mesh, rules)
        params = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()
        model = nnx.merge(graphdef, params)
    if config.model.get("remat", False) and not model_config.remat:
        # An HF checkpoint's config.json knows nothing of remat: it is this run's choice.
        model_config = dataclasses.replace(model_config, remat=True)
        model.config = model_config
    if config.lora.rank > 0:
        apply_lora(model, config.lora.rank, config.lora.alpha, config.lora.targets, config.seed)
        shard_model(model, mesh, rules)
    return model, model_config


REFERENCE_MODES = ("none", "copy", "lora_off", "auto")
PART_INITS = ("policy", "scratch")
PART_HEADS = ("lm", "scalar")


def reference_mode(config: Any) -> str:
    """ "none", "copy" or "lora_off" ("auto": LoRA off when LoRA is used, else a copy)."""
    mode = config.get("reference", "none")
    if mode not in REFERENCE_MODES:
        raise ValueError(f"Unknown reference {mode!r}; choose one of {REFERENCE_MODES}.")
    if mode == "auto":
        return "lora_off" if config.lora.rank > 0 else "copy"
    if mode == "lora_off" and config.lora.rank <= 0:
        raise ValueError("reference='lora_off' needs LoRA (lora.rank > 0); use 'copy'.")
    return mode


def build_parts(
    config: Any, mesh: Mesh, rules: Sequence[Rule]
) -> tuple[dict[str, nnx.GraphDef], dict[str, nnx.State], dict[str, nnx.State], ModelConfig]:
    """(graphdefs, trainable params, frozen params, policy ModelConfig) of every model part.

    * "policy": `build_model(config)`; its trainable params are chosen by `optim.freeze` / LoRA.
    * "reference" (`config.reference`): "copy" — every policy parameter, frozen (the same
      values as the initial policy, its own buffers); "lora_off" — the policy's graph with its
      LoRA `lora_b` zeroed, so base(x) + 0 and the frozen base weights are *shared* with the
      policy (no second copy).
    * each `config.parts.<name>`: `init` "policy" (a copy of the initial policy weights, e.g.
      PRIME's implicit PRM) or "scratch" (random init from `seed + 1 + index`), `head` "lm" or
      "scalar" (`ScalarHeadModel`, a value/verifier model); fully trainable.
    """
    from prm.models import ScalarHeadModel  # noqa: PLC0415 - avoid an import cycle at load

    model, model_config = build_model(config, mesh, rules)
    is_trainable = trainable_filter(config.optim.freeze, lora=config.lora.rank > 0)
    graphdef, params, frozen = nnx.split(model, is_trainable, ...)
    if not jax.tree.leaves(params):
        raise ValueError(
            f"No trainable parameters: optim.freeze={tuple(config.optim.freeze)} freezes every "
            "parameter."
        )
    graphdefs, trainable, fixed = {"policy": graphdef}, {"policy": params}, {"policy": frozen}
    mode = reference_mode(config)
    if mode == "copy":
        graphdefs["reference"], state = nnx.split(model)
        fixed["reference"] = jax.tree.map(jnp.copy, state)
    elif mode == "lora_off":
        graphdefs["reference"] = graphdef
        fixed["reference"] = frozen  # the same arrays: no copy of the base weights
        trainable_zeros = jax.tree.map(jnp.zeros_like, params)
        fixed["reference_adapters"] = trainable_zeros  # lora_a, lora_b = 0: base(x) exactly
    for index, (name, part) in enumerate(sorted(config.get("parts", {}).items())):
        if name in graphdefs or name == "reference_adapters":
            raise ValueError(f"Part name {name!r} is taken; pick another name in config.parts.")
        if part.init not in PART_INITS or part.head not in PART_HEADS:
            raise ValueError(
                f"config.parts.{name}: init must be one of {PART_INITS} and head one of "
                f"{PART_HEADS}; got init={part.init!r}, head={part.head!r}."
            )
        seed = config.seed if part.init == "policy" else config.seed + 1 + index
        trunk, _ = build_model(_without_lora(config, seed), mesh, rules)
        if part.init == "policy":
            base = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
            nnx.update(trunk, jax.tree.map(jnp.copy, base))
        module = trunk if part.head == "lm" else ScalarHeadModel(trunk, rngs=nnx.Rngs(seed))
        graphdefs[name], trainable[name], fixed[name] = nnx.split(module, nnx.Param, ...)
    return graphdefs, trainable, fixed, model_config


def _without_lora(config: Any, seed: int) -> Any:
    import ml_collections  # noqa: PLC0415

    copy = ml_collections.ConfigDict(config.to_dict())
    copy.lora.rank = 0
    copy.seed = seed
    return copy


def merge_parts(
    graphdefs: dict[str, nnx.GraphDef], params: dict[str, nnx.State], frozen: dict[str, nnx.State]
) -> dict[str, nnx.Module]:
    """Modules of every part from their graphdefs, trainable params and frozen params."""
    models = {}
    for name, graphdef in graphdefs.items():
        if name == "reference" and "reference_adapters" in frozen:
            models[name] = nnx.merge(graphdef, frozen["reference_adapters"], frozen["policy"])
        elif name == "reference":
            models[name] = nnx.merge(graphdef, frozen["reference"])
        else:
            models[name] = nnx.merge(graphdef, params[name], frozen[name])
    return models
