"""What a training method plugs into the generic loop (`prm.training.loop`).

A trainer says where batches come from and what loss they give; the loop owns everything else
(mesh, sharded init of every model part, optimiser, jitted and donated updates with PPO epochs,
mini- and micro-batches, checkpoints, metrics, resume):

    @TRAINERS.register("sft")
    class SFTTrainer(Trainer):
        def loss(self, models, batch, rng): ...        # traced inside the jitted update
        def evaluate(self, models, step): ...          # host-side, returns scalars

`models` maps part names to modules: "policy" always, "reference" when `config.reference` asks
for one (frozen), and the extra trainable parts of `config.parts` (`prm.training.state`).

RL trainers override `next_batch(models, step, rng)` to sample with the current policy and
compute rewards and advantages on the host, returning the batch and host metrics (reward, EM,
rollout timing); `prepare(models, batch)` (jitted, once per step) adds what needs the models
before the updates (π_old and π_ref log-probs). Whatever state a trainer keeps between steps
must be in `data_state()` for exact resume.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from prm.data import make_data_source


class Trainer(abc.ABC):
    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        self.config = config
        self.mesh = mesh
        self.workdir = workdir
        self.data = make_data_source(config.data, split="train")

    def setup(self, models: Mapping[str, nnx.Module]) -> None:
        """Called once the initial model parts exist (before any restore): build samplers,
        judges or anything else that needs them. Default: nothing."""
        del models

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """(this host's rows of the batch of train step `step` (numpy), host-side metrics).

        `models` are the current parts; `rng` is fixed by (seed, step), so a resumed run samples
        the same batch. Default: the next batch of the config's data source."""
        del models, step, rng
        return next(self.data), {}

    def prepare(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """Adds what needs the models before the updates (jit-traced, once per train step):
        e.g. π_old log-probs recomputed and π_ref log-probs. Default: the batch unchanged."""
        del models
        return dict(batch)

    @abc.abstractmethod
    def loss(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss to minimise, scalar metrics) for one micro-batch; jit-traced. Divide by
        `prm.training.update.loss_normalizer(batch, ...)` so micro-batches add up exactly."""

    @abc.abstractmethod
    def evaluate(self, models: Mapping[str, nnx.Module], step: int) -> dict[str, float]:
        """Scalar metrics of the parts after `step` train steps (host-side; may jit internally
        and write result tables into `self.workdir`)."""

    def tokenizer(self) -> Any | None:
        """The Hugging Face tokenizer of the run's data, saved with the HF export (None: the
        export has no tokenizer)."""
        return getattr(self.data, "tokenizer", None)

    def results_table(self, eval_results: Mapping[str, float]) -> str:
        """Markdown results of the last evaluation for the end-of-run summary ("" for none).

        Default: the QA tables (`qa/<agent>/<group>/<n|em|f1>` scalars) when the trainer logs
        them, else every scalar."""
        from prm.evaluation import format_markdown, tables_from_metrics

        if tables := tables_from_metrics(eval_results):
            return format_markdown(tables)
        return "\n".join(f"{k}: {v:.4g}" for k, v in sorted(eval_results.items()))

    def headline(self, eval_results: Mapping[str, float]) -> str:
        """The last line of the summary: the run's main held-out number ("" for none)."""
        if (em := eval_results.get("qa/policy/all/em")) is not None:
            return f"held-out EM: {em:.4f}"
        return ""

    def data_state(self) -> dict[str, Any]:
        """JSON-serialisable position of the batch stream, saved with each checkpoint."""
        return self.data.state()

    def restore_data_state(self, state: Mapping[str, Any]) -> None:
        self.data.restore(state)
