"""What a training method plugs into the generic loop (`prm.training.loop`).

A trainer says where batches come from and what loss they give; the loop owns everything else
(mesh, sharded init, optimiser, jitted and donated update, checkpoints, metrics, resume):

    @TRAINERS.register("sft")
    class SFTTrainer(Trainer):
        def loss(self, model, batch, rng): ...          # traced inside the jitted step
        def evaluate(self, model, step): ...            # host-side, returns scalars

RL trainers override `next_batch` to sample with the current model (and compute rewards and
advantages) before the update; whatever state they keep between steps must be in
`data_state()` for exact resume.
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

    def next_batch(self, model: nnx.Module) -> dict[str, np.ndarray]:
        """This host's rows of the next global batch (numpy). `model` is the current policy."""
        del model
        return next(self.data)

    @abc.abstractmethod
    def loss(
        self, model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss to minimise, scalar metrics) for one global batch; jit-traced."""

    @abc.abstractmethod
    def evaluate(self, model: nnx.Module, step: int) -> dict[str, float]:
        """Scalar metrics of `model` after `step` updates (host-side; may jit internally and
        write result tables into `self.workdir`)."""

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
