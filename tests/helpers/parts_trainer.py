"""A trainer whose loss uses every kind of model part, for the train loop's tests.

"test_policy_with_value" trains on the toy SFT batches (`configs/toy.py`):

    L = NLL(π_θ) + β · k3(π_θ ‖ π_ref) + ½ · (V_φ − target)²        (token means over targets)

* `next_batch` keeps a different number of trained tokens per row (row b trains on its last
  `b mod (T − period) + 1` targets; rows are uneven, so micro-batch accumulation is tested
  where it can go wrong), draws the value targets from the rollout `rng`, and returns host
  metrics: "rollout/uniform" (a number drawn from `rng`) and "rollout/trained_tokens".
* `prepare` scores the batch under the frozen "reference" part once per step (π_ref).
* `loss` divides every term by the mini-batch's counts (`loss_normalizer`), so micro-batches
  add up exactly.

Importing this module registers the trainer; `tests/helpers/parts_config.py` is a config file
for `python -m experiments.train` runs of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from prm.losses import aggregate_loss, kl_penalty
from prm.models import token_logprobs
from prm.registry import TRAINERS
from prm.trainers.sft import SFTTrainer
from prm.training.update import loss_normalizer

KL_COEF = 0.1


@TRAINERS.register("test_policy_with_value")
class PolicyWithValueTrainer(SFTTrainer):
    """SFT with a KL term to the reference and a value part regressed onto random targets."""

    def next_batch(self, models, step, rng):
        batch, metrics = super().next_batch(models, step, rng)
        rows, length = batch["loss_mask"].shape
        first_target = int(np.argmax(batch["loss_mask"][0]))
        kept = np.arange(rows) % (length - first_target) + 1
        batch["loss_mask"] = batch["loss_mask"] * (np.arange(length) >= length - kept[:, None])
        target_rng, metric_rng = jax.random.split(rng)
        batch["value_targets"] = np.asarray(jax.random.normal(target_rng, (rows, length)))
        metrics["rollout/uniform"] = float(jax.random.uniform(metric_rng))
        metrics["rollout/trained_tokens"] = float(batch["loss_mask"].sum())
        return batch, metrics

    def prepare(self, models, batch):
        scored = token_logprobs(models["reference"], batch["tokens"])
        return {**batch, "ref_logprobs": scored.logprobs}

    def loss(self, models: Mapping, batch: Mapping, rng: jax.Array):
        del rng
        scored = token_logprobs(models["policy"], batch["tokens"])
        mask = batch["loss_mask"] * scored.mask
        normalizer = loss_normalizer(batch, "token-mean")
        nll = aggregate_loss(-scored.logprobs, mask, normalizer=normalizer)
        kl = aggregate_loss(
            kl_penalty(scored.logprobs, batch["ref_logprobs"], mask), mask, normalizer=normalizer
        )
        values = models["value"](batch["tokens"])
        value_loss = 0.5 * aggregate_loss(
            jnp.square(values - batch["value_targets"]), mask, normalizer=normalizer
        )
        metrics = {"nll": nll, "kl": kl, "value_loss": value_loss}
        return nll + KL_COEF * kl + value_loss, metrics
