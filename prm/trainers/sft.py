"""Supervised fine-tuning: masked next-token cross-entropy (and greedy QA evaluation).

    L(θ) = − Σ_{b,t} m[b,t] · log π_θ(x[b,t] | x[b,<t]) / Σ_{b,t} m[b,t]

over batches `{"tokens": int32[B, T], "loss_mask": float32[B, T]}`, where `loss_mask[b, t]`
marks token t as a target (prompt and observation tokens get 0). The mean is over target tokens
of the whole batch ("token-mean"), so long and short demonstrations weigh by their length.
An optional `input_mask` bool[B, T] marks real tokens when rows are padded.

With an `eval.qa` block (synthetic-world demonstrations, `configs/sft.py`), evaluation also
plays the world's questions greedily with real rollouts (`prm.evaluation.evaluate_world_config`)
and writes `workdir/qa_<split>_step<N>.{md,csv}`; `ensure_sft_checkpoint` gives RL configs an
SFT warm start, training it once per workdir.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from prm.data import make_data_source
from prm.evaluation import qa_metrics
from prm.masked import masked_count, masked_mean, masked_sum
from prm.registry import TRAINERS
from prm.training.loop import ensure_warm_start
from prm.training.sharding import global_batch
from prm.training.trainer import Trainer
from prm.training.update import loss_normalizer


def next_token_loss(
    model: nnx.Module, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(masked mean NLL, {"accuracy", "target_tokens"}) of next-token prediction on `batch`.

    Inside the update loop the NLL sum is divided by the mini-batch's target count
    (`loss_normalizer`), so micro-batch losses add up to the mini-batch loss."""
    tokens, loss_mask = batch["tokens"], batch["loss_mask"]
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, loss_mask])
    input_mask = batch.get("input_mask")
    logits, _ = model(tokens[:, :-1], input_mask=None if input_mask is None else input_mask[:, :-1])
    targets, target_mask = tokens[:, 1:], loss_mask[:, 1:]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    normalizer = loss_normalizer(batch, "token-mean")
    if normalizer is None:
        loss = masked_mean(nll, target_mask)
    else:
        loss = masked_sum(nll, target_mask) / jnp.maximum(normalizer, 1)
    return loss, {
        "accuracy": masked_mean(correct, target_mask),
        "target_tokens": masked_count(target_mask),
    }


@TRAINERS.register("sft")
class SFTTrainer(Trainer):
    """Config: `data` (any registered source), `eval.num_batches` held-out batches per eval,
    optional `eval.qa` (QA rollouts in the synthetic world)."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        self._eval_loss = nnx.jit(next_token_loss)

    def loss(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        del rng
        return next_token_loss(models["policy"], batch)

    def evaluate(self, models: Mapping[str, nnx.Module], step: int) -> dict[str, float]:
        """Loss and accuracy (token means) over the first `eval.num_batches` batches of the eval
        split, plus `qa/<agent>/<group>/{n,em,f1}` when the config has an `eval.qa` block."""
        model = models["policy"]
        results = self._heldout_loss(model)
        if "qa" in self.config.eval:
            results.update(
                qa_metrics(model, self.config.data, self.config.eval.qa, self.workdir, step)
            )
        return results

    def _heldout_loss(self, model: nnx.Module) -> dict[str, float]:
        source = make_data_source(self.config.data, split="eval")
        total_nll = total_correct = total_tokens = 0.0
        for _ in range(self.config.eval.num_batches):
            batch = global_batch(next(source), self.mesh)
            loss, metrics = self._eval_loss(model, batch)
            tokens = float(metrics["target_tokens"])
            total_nll += float(loss) * tokens
            total_correct += float(metrics["accuracy"]) * tokens
            total_tokens += tokens
        denom = max(total_tokens, 1.0)
        return {"loss": total_nll / denom, "accuracy": total_correct / denom}


def ensure_sft_checkpoint(workdir: str, config: Any) -> str:
    """The HF export of the SFT run `config` in `workdir`, training it first if it does not
    exist yet (`prm.training.loop.ensure_warm_start`)."""
    if not config.export_hf:
        raise ValueError("ensure_sft_checkpoint needs config.export_hf=True (the HF export).")
    return ensure_warm_start(config, workdir)
