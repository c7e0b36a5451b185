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
from prm.training.sharding import Rule, shard_model, sharding_fn, tree_shardings


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (the frozen params live outside, never donated).

    step: int32[] completed optimiser updates; params: the trainable `nnx.State`; opt_state: the
    optax state of those params; rng: a raw uint32[2] PRNG key, split once per step.
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
