"""The policy update every RL trainer shares: PPO clip + KL to a reference, on token arrays.

    L(θ) = PPO-clip(log π_θ, log π_old, A; mask) + β · agg(KL_k(π_θ ‖ π_ref); mask)
           − c_H · agg(H(π_θ); mask)

(PPO, arXiv 1707.06347 Eq. 7 with verl's dual clip; KL estimator k1/k2/k3 after Schulman 2020;
GRPO, arXiv 2402.03300 Eq. 3, puts β·k3 in the loss the same way.) The terms come from
`prm.losses` and the token scores from `prm.models.token_logprobs` (chunked over time, so the
[B, T, V] logits never exist at once); this module only wires them together.

Batch layout — every array `[B, T]` and aligned with `tokens` (position t describes token t):
    tokens         int32    prompt, actions and observations
    loss_mask      float32  1 on trained (action) tokens (position 0 is never trained)
    advantages     float32  per-token advantages (step or sequence values broadcast to tokens)
    old_logprobs   float32  log π_old(tokens[t] | tokens[<t]) from the rollout
    ref_logprobs   float32  log π_ref(...) (needed only when kl_coef > 0)
    input_mask     bool     optional: real (non-padding) tokens
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from prm.losses import aggregate_loss, kl_penalty, ppo_policy_loss
from prm.masked import masked_mean, masked_var
from prm.models import token_logprobs
from prm.training.update import loss_normalizer


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Defaults follow SLATE's verl actor (slate.md §2.6): ε = 0.2, dual clip c = 3, token-mean,
    k3 KL with β = 0.001, no entropy bonus."""

    clip_eps_low: float = 0.2
    clip_eps_high: float | None = None
    clip_ratio_c: float | None = 3.0
    ratio_level: str = "token"
    aggregation: str = "token-mean"
    kl_coef: float = 0.001
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    logits_chunk_size: int = 128
    # π_old for the ratio: recomputed with the policy before the updates (exact; verl's default)
    # or the sampler's log-probs carried in the batch (saves a forward pass).
    recompute_old_logprobs: bool = True


def policy_loss_block(**overrides: Any) -> ml_collections.ConfigDict:
    """A config's `policy_loss` block: the `PolicyLossConfig` defaults with `overrides`."""
    return ml_collections.ConfigDict(dataclasses.asdict(PolicyLossConfig(**overrides)))


def policy_loss(
    model: nnx.Module, batch: Mapping[str, jax.Array], config: PolicyLossConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss to minimise, scalar metrics) of one policy update; layout in the module docstring.

    Metrics: "pg_loss", "kl" (aggregated estimator value), "clip_fraction", "dual_clip_fraction",
    "approx_kl", "advantage_variance" (masked variance of the per-token advantages) and
    "entropy" (token mean of the policy entropy).
    """
    chex.assert_equal_shape(
        [batch["tokens"], batch["loss_mask"], batch["advantages"], batch["old_logprobs"]]
    )
    scored = token_logprobs(
        model,
        batch["tokens"],
        batch.get("input_mask"),
        chunk_size=config.logits_chunk_size,
    )
    # Tokens nothing predicts (position 0, first real token, padding) never count.
    mask = batch["loss_mask"] * scored.mask
    logprobs = scored.logprobs
    # Inside the update loop, divide by the mini-batch's counts (micro-batches add up exactly);
    # the logged values stay means over this micro-batch.
    normalizer = loss_normalizer(batch, config.aggregation)
    to_mean = 1.0 if normalizer is None else normalizer / jnp.maximum(_own_count(mask, config), 1)
    pg_loss, metrics = ppo_policy_loss(
        logprobs,
        batch["old_logprobs"],
        batch["advantages"],
        mask,
        clip_eps_low=config.clip_eps_low,
        clip_eps_high=config.clip_eps_high,
        clip_ratio_c=config.clip_ratio_c,
        ratio_level=config.ratio_level,
        aggregation=config.aggregation,
        normalizer=normalizer,
    )
    loss = pg_loss
    metrics = {
        **metrics,
        "pg_loss": pg_loss * to_mean,
        "advantage_variance": masked_var(batch["advantages"], mask),
        "entropy": jax.lax.stop_gradient(masked_mean(scored.entropy, mask)),
    }
    if config.kl_coef:
        kl = kl_penalty(logprobs, batch["ref_logprobs"], mask, estimator=config.kl_estimator)
        kl_loss = aggregate_loss(kl, mask, config.aggregation, normalizer=normalizer)
        loss = loss + config.kl_coef * kl_loss
        metrics["kl"] = kl_loss * to_mean
    if config.entropy_coef:
        entropy = aggregate_loss(scored.entropy, mask, config.aggregation, normalizer=normalizer)
        loss = loss - config.entropy_coef * entropy
    return loss, metrics


def _own_count(mask: jax.Array, config: PolicyLossConfig) -> jax.Array:
    """What `aggregate_loss` divides by without a normalizer: tokens or non-empty rows."""
    if config.aggregation == "token-mean":
        return jnp.sum(mask)
    return jnp.sum(jnp.any(mask > 0, axis=-1)).astype(jnp.float32)


def reference_logprobs(
    models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], config: PolicyLossConfig
) -> dict[str, jax.Array]:
    """`batch` plus what the update needs from the models before it starts (run once per
    rollout batch, `Trainer.prepare`): `ref_logprobs` from `models["reference"]` when the KL
    term is on, and, with `recompute_old`, `old_logprobs` from the current policy — exact π_old
    of the update (the sampler's own log-probs equal it only up to float error between the
    cached decode and a full forward pass, and only at temperature 1 without top-k/top-p)."""
    out = dict(batch)
    score = lambda model: jax.lax.stop_gradient(
        token_logprobs(
            model, batch["tokens"], batch.get("input_mask"), chunk_size=config.logits_chunk_size
        ).logprobs
    )
    if config.recompute_old_logprobs:
        out["old_logprobs"] = score(models["policy"])
    if config.kl_coef:
        if "reference" not in models:
            raise ValueError(
                "The KL term (kl_coef > 0) needs a reference model: set config.reference "
                "('auto', 'copy' or 'lora_off'), or kl_coef=0."
            )
        out["ref_logprobs"] = score(models["reference"])
    return out
