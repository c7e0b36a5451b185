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

import chex
import jax
from flax import nnx

from prm.losses import aggregate_loss, kl_penalty, ppo_policy_loss
from prm.masked import masked_mean, masked_var
from prm.models import token_logprobs


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
    )
    loss = pg_loss
    metrics = {
        **metrics,
        "pg_loss": pg_loss,
        "advantage_variance": masked_var(batch["advantages"], mask),
        "entropy": jax.lax.stop_gradient(masked_mean(scored.entropy, mask)),
    }
    if config.kl_coef:
        kl = kl_penalty(logprobs, batch["ref_logprobs"], mask, estimator=config.kl_estimator)
        kl_loss = aggregate_loss(kl, mask, config.aggregation)
        loss = loss + config.kl_coef * kl_loss
        metrics["kl"] = kl_loss
    if config.entropy_coef:
        loss = loss - config.entropy_coef * aggregate_loss(scored.entropy, mask, config.aggregation)
    return loss, metrics
