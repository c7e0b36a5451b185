"""Run configs: loading a config file, its option parser, and the blocks every config starts from.

A config file is a Python file defining `get_config(arg=None)` that returns an
`ml_collections.ConfigDict`; `arg` is the text after the colon in `--config=my_config.py:smoke,
model=tiny` and carries options that change several fields at once (`parse_arg`). Single fields
are overridden with `--config.optim.lr=3e-4`. Configs are locked, so a misspelt key is an error
listing the valid keys. A config of your own, in any directory:

    from prm.training.config import base_config, model_config, parse_arg

    def get_config(arg=None):
        opts = parse_arg(arg, smoke=False)
        c = base_config()
        c.model = model_config("qwen3", "small", vocab_size=64)
        c.data = {"name": "toy_repeat", "batch_size": 8, "seq_len": 16, "vocab_size": 64, "seed": 0}
        c.total_steps = 20 if opts.smoke else 300
        return c

and `python -m prm.train --config=my_config.py --workdir=/tmp/run` trains it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from prm.training.lora import ALL_LINEAR
from prm.training.update import DEFAULT_UPDATES


class ConfigFileError(ValueError):
    """A config file that cannot be found, imported or built; the message says what to do."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The locked `get_config(arg)` of `spec` = `"path/to/config.py[:arg]"` (`~` is expanded).

    Raises:
      ConfigFileError: one line naming the file, for a missing file, an import that fails inside
        it, no `get_config`, or a bad option (a `ValueError` from `get_config`, e.g. `parse_arg`).
    """
    path, colon, arg = spec.partition(":")
    file = os.path.expanduser(path)
    if not os.path.isfile(file):
        raise ConfigFileError(_missing_file_message(path, file))
    module_spec = importlib.util.spec_from_file_location("_prm_config_file", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError as error:
        raise ConfigFileError(
            f"{path}: {error}. A config file imports what Python finds from the current directory "
            "or installed packages: run the prm repository's configs from its root; in a project "
            "of your own, import the helpers from prm.training.config."
        ) from error
    if not callable(getattr(module, "get_config", None)):
        raise ConfigFileError(
            f"{path} defines no get_config(arg=None); a config file returns its ConfigDict from it."
        )
    try:
        config = module.get_config(arg) if colon else module.get_config()
    except ValueError as error:
        raise ConfigFileError(f"{spec}: {error}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(
            f"{path}: get_config returned {type(config).__name__}, not an ml_collections.ConfigDict."
        )
    config.lock()
    return config


def _missing_file_message(path: str, file: str) -> str:
    message = f"Config file {path} does not exist"
    if file != path:
        message += f" ({file})"
    elif not os.path.isabs(file):
        message += f" (relative to the current directory, {os.getcwd()})"
    folder = os.path.dirname(file) or "."
    if os.path.isdir(folder):
        configs = sorted(
            name
            for name in os.listdir(folder)
            if name.endswith(".py") and _defines_get_config(os.path.join(folder, name))
        )
        if configs:
            prefix = os.path.dirname(path)
            listed = ", ".join(os.path.join(prefix, name) for name in configs)
            return f"{message}. Config files there: {listed}."
    return f"{message}. Pass --config=<path to a .py file defining get_config>."


def _defines_get_config(file: str) -> bool:
    try:
        with open(file, encoding="utf-8") as f:
            return "def get_config(" in f.read()
    except (OSError, UnicodeDecodeError):
        return False


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """Parses `"smoke,model=tiny,seed=3"` into typed options with defaults from `spec`.

    A bare name sets a bool option to True; `name=value` is converted to the type of the
    default. An unknown name or a value of the wrong type raises one error listing the valid
    options or saying the type.
    """
    options = dict(spec)
    for item in filter(None, (arg or "").split(",")):
        name, eq, raw = item.partition("=")
        name = name.strip()
        if name not in spec:
            raise ValueError(
                f"Unknown config option {name!r}; valid options are "
                f"{', '.join(f'{k}={v!r}' for k, v in sorted(spec.items()))}."
            )
        default = spec[name]
        if not eq:
            if not isinstance(default, bool):
                raise ValueError(f"Config option {name!r} needs a value: {name}=<value>.")
            options[name] = True
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"Config option {name!r} is a bool (true or false); got {raw!r}.")
            options[name] = raw.lower() in ("true", "1")
        else:
            try:
                options[name] = type(default)(raw)
            except ValueError:
                kind = type(default).__name__
                raise ValueError(
                    f"Config option {name!r} is of type {kind} (default {default!r}); got {raw!r}."
                ) from None
    return ml_collections.ConfigDict(options)


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every run; experiment configs override what differs."""
    c = ml_collections.ConfigDict()
    c.trainer = "sft"
    c.seed = 0
    c.total_steps = 1000
    c.log_every = 1
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.eval_every = 0  # 0: no evaluation during training
    c.eval_at_start = False  # also evaluate the initial model (step 0) of a fresh run
    c.progress = True  # tqdm bar on the console
    c.export_hf = True  # write workdir/hf (LoRA merged) at the end of training
    c.multihost = False  # jax.distributed.initialize() (TPU pod slices)
    # Print the memory each device would need (prm.training.memory_plan) on the simulated
    # dry_run_devices ("8xH200", "v5p-8", "v5e-8", ...) with this config's mesh, and stop: no
    # weights, data or devices are touched. Exit status 2 (one error line) when it does not fit.
    c.dry_run = False
    c.dry_run_devices = "8xH200"

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # (regex over dotted param path, partition spec); empty: prm.training.sharding.DEFAULT_RULES.
    c.sharding_rules = ()

    c.model = model_config("qwen3")
    c.lora = ml_collections.ConfigDict({"rank": 0, "alpha": 64.0, "targets": ALL_LINEAR})
    c.optim = ml_collections.ConfigDict(
        {
            "lr": 1e-6,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.01,
            "schedule": "constant",
            "warmup_steps": 0,
            "min_lr_ratio": 0.0,
            "grad_clip_norm": 1.0,
            "freeze": (),
        }
    )
    c.data = ml_collections.ConfigDict({"name": "toy_repeat"})
    c.eval = ml_collections.ConfigDict({"num_batches": 4})
    # Model parts besides the policy (prm.training.state.build_parts). The frozen reference
    # π_ref: "none"; "copy" (a frozen copy of the initial policy); "lora_off" (the policy with
    # its LoRA adapters off: shares the base weights, needs lora.rank > 0); "auto" (lora_off
    # with LoRA, else copy).
    c.reference = "none"
    # Extra trainable parts (an implicit PRM, a value model), each with its own optimiser:
    # name -> {"init": "policy" | "scratch", "head": "lm" | "scalar", "lr": float (0: optim.lr)}.
    c.parts = ml_collections.ConfigDict()
    # The optimiser updates of one train step (prm.training.update): ppo_epochs passes over the
    # batch, each split into num_mini_batches updates, each accumulated over micro-batches of
    # micro_batch_size rows (0: the whole mini-batch). verl's ppo_mini_batch_size is
    # batch / num_mini_batches; its ppo_micro_batch_size_per_gpu × devices is micro_batch_size.
    c.updates = ml_collections.ConfigDict(DEFAULT_UPDATES)
    # A whole config of a run whose HF export initialises the policy (e.g. an SFT warm start,
    # trained once and cached by prm.training.loop.ensure_warm_start); empty: none.
    c.warm_start = ml_collections.ConfigDict()
    return c


# Random-init model sizes for tests and toy runs; real runs set `model.init_from`.
MODEL_SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=128),
    "small": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32,
                  intermediate_size=768),
}  # fmt: skip


def model_config(
    family: str, size: str = "tiny", vocab_size: int = 64, init_from: str = ""
) -> ml_collections.ConfigDict:
    """The `model` block: `ModelConfig` fields, plus `init_from` (an HF dir; "" = random init)."""
    if size not in MODEL_SIZES:
        raise ValueError(f"Unknown model size {size!r}; valid sizes are {sorted(MODEL_SIZES)}.")
    return ml_collections.ConfigDict(
        {
            "init_from": init_from,
            "family": family,
            "vocab_size": vocab_size,
            **MODEL_SIZES[size],
            "rope_theta": 10_000.0,
            "rms_norm_eps": 1e-6,
            "attention_bias": family == "qwen2",
            "qk_norm": family == "qwen3",
            "tie_word_embeddings": False,
            "dtype": "float32",
            "param_dtype": "float32",
            "max_position_embeddings": 4096,
            "remat": False,  # gradient checkpointing per decoder layer (large models)
        }
    )
