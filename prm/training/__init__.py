"""Training infrastructure: sharding, checkpoints, optimiser/LoRA, metrics and the train loop."""

from prm.training.checkpoints import (
    Checkpointer,
    CheckpointSaveError,
    IncompatibleCheckpointError,
    RunError,
)
from prm.training.loop import Interrupted, Run, build_run, evaluate, restore, train
from prm.training.lora import ALL_LINEAR, LoRALinear, apply_lora, merge_lora
from prm.training.metrics_writer import RL_METRICS, TIMING_METRICS, MetricsWriter
from prm.training.optim import make_optimizer, make_schedule, trainable_filter
from prm.training.sharding import (
    DEFAULT_RULES,
    MESH_AXES,
    batch_sharding,
    constrain,
    global_batch,
    make_mesh,
    partition_spec,
    shard_model,
    sharding_fn,
    tree_shardings,
)
from prm.training.state import TrainState, build_model, model_config_from
from prm.training.trainer import Trainer

__all__ = [
    "ALL_LINEAR",
    "DEFAULT_RULES",
    "MESH_AXES",
    "RL_METRICS",
    "TIMING_METRICS",
    "CheckpointSaveError",
    "Checkpointer",
    "IncompatibleCheckpointError",
    "Interrupted",
    "LoRALinear",
    "MetricsWriter",
    "Run",
    "RunError",
    "TrainState",
    "Trainer",
    "apply_lora",
    "batch_sharding",
    "build_model",
    "build_run",
    "constrain",
    "evaluate",
    "global_batch",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "merge_lora",
    "model_config_from",
    "partition_spec",
    "restore",
    "shard_model",
    "sharding_fn",
    "train",
    "trainable_filter",
    "tree_shardings",
]
