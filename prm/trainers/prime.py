"""PRIME: RL with an online implicit PRM's token rewards plus the outcome reward.

Cui et al. 2025, "Process Reinforcement through Implicit Rewards" (arXiv 2502.01456; notes:
implicit_prm_prime.md §3-4), Algorithm 1, one train step:

    1. K rollouts per question from π_θ; outcome r_o = EM.
    2. Accuracy filter: keep the questions whose mean EM over their K rollouts lies in
       [lo, hi] (default [0.2, 0.8], both inclusive). Rejected groups never enter the batch:
       new questions are sampled (up to `rollout.max_rounds` rounds) until `data.batch_size`
       groups are kept; fewer kept after the last round are padded with empty rows (loss mask
       0, logged as `filter/kept_groups`); none kept is an error saying what to change.
    3. Token rewards r_t = β·log π_φ(y_t|y_<t)/π_ref(y_t|y_<t) of the kept rollouts from the
       PRM *before* this step's update (single forward, the paper's default).
    4. The PRM (the trainable part "prm", its own optimiser) is updated with CE of
       σ(Σ_t r_t) against r_o on the kept rollouts, in the same optimiser updates as the policy.
    5. Advantages (Eq. 5): leave-one-out process returns + leave-one-out outcome
       (`prm.advantages.prime_advantages`, paper form by default, the public code's form by
       `prime.baseline=public_code`), then PPO-clip on π_θ (no KL by default, as the paper).

π_θ, the PRM and the frozen reference all start as the SFT warm start, so every token reward is
0 and the PRM's first CE is ln 2. Rows of a question's K rollouts are contiguous and each kept
group gets its own group id, whatever question it came from (the leave-one-out is positional:
a reordered batch or two groups sharing an id would silently mix groups; `check_groups`).
`prime.process_rewards=False` is the outcome-only RLOO baseline in the same loop (Eq. 4; no PRM).

Options of the public code: `prime.reward_norm=batch_norm` divides the token rewards by
max_i |Σ_{s≥t} r_s^i| + 1e-6 over the batch, `prime.whiten=True` whitens the advantages over all
trained tokens (unbiased variance), `prime.granularity=step` puts each turn's summed reward on its
last token instead of every token.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.advantages import discounted_returns, prime_advantages, rloo_advantages
from prm.masked import masked_whiten
from prm.models import token_logprobs
from prm.registry import TRAINERS
from prm.rewards.implicit import ce_loss, sequence_rewards, step_rewards, token_rewards
from prm.rollouts import TrajectoryBatch, rollout
from prm.trainers.implicit_prm import implicit_token_rewards, pairwise_prm_accuracy
from prm.trainers.rl import WorldRLTrainer, advantage_variances
from prm.training.policy_step import policy_loss
from prm.training.update import loss_normalizer

BASELINES = ("paper", "public_code")
REWARD_NORMS = ("none", "batch_norm")
GRANULARITIES = ("token", "step")
PRM_PART = "prm"


def accuracy_filter(accuracy: np.ndarray, low: float, high: float) -> np.ndarray:
    """bool[G]: groups (rows of `[G, K]` outcome rewards) whose mean lies in [low, high]."""
    mean = np.asarray(accuracy, np.float64).mean(axis=-1)
    return (mean >= low) & (mean <= high)


def check_groups(group_id: np.ndarray, group_size: int) -> None:
    """Raises unless rows form contiguous groups of `group_size` with distinct ids per group."""
    group_id = np.asarray(group_id)
    if group_id.size % group_size:
        raise ValueError(f"{group_id.size} rows do not form groups of {group_size}.")
    groups = group_id.reshape(-1, group_size)
    if np.any(groups != groups[:, :1]):
        raise ValueError("A group's rows are not contiguous: the leave-one-out would mix groups.")
    if len(np.unique(groups[:, 0])) != len(groups):
        raise ValueError("Two groups share an id: the leave-one-out needs one id per group.")


def batch_norm_rewards(rewards: chex.Array, mask: chex.Array) -> jax.Array:
    """r / (max over rows and t of |Σ_{s≥t} r_s| + 1e-6): PRIME's public `batch_norm` (§4.2)."""
    returns = discounted_returns(rewards, mask, gamma=1.0)
    scale = jnp.max(jnp.abs(jnp.where(mask, returns, 0.0)))
    return jnp.where(mask, rewards / (scale + 1e-6), 0.0)


def rewards_at_step_ends(rewards: chex.Array, step_id: chex.Array) -> jax.Array:
    """Each step's summed token rewards on its last token, 0 elsewhere (`[B, T]`; steps by
    `step_id`, −1 = no step): PRIME's rewards at the granularity of the policy's turns."""
    chex.assert_equal_shape([rewards, step_id])
    in_step = step_id >= 0
    following = jnp.pad(step_id[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
    is_end = in_step & (following != step_id)
    totals, _ = step_rewards(rewards, step_id, rewards.shape[-1])
    at_tokens = jnp.take_along_axis(totals, jnp.maximum(step_id, 0), axis=-1)
    return jnp.where(is_end, at_tokens, 0.0)


@dataclasses.dataclass
class KeptGroups:
    """The rows of the groups the filter kept (K contiguous rows per group), across rounds."""

    rows: dict[str, list[np.ndarray]]
    sampled_groups: int = 0
    sampled_tokens: float = 0.0  # policy tokens of every rollout of every round, kept or not
    sampled_em: list[float] = dataclasses.field(default_factory=list)
    rounds: int = 0

    @property
    def count(self) -> int:
        return len(self.rows["tokens"])


def prime_token_advantages(
    process: chex.Array,
    outcome: chex.Array,
    mask: chex.Array,
    group_size: int,
    *,
    gamma: float,
    baseline: str,
    whiten: bool,
) -> jax.Array:
    """PRIME's advantages of `[G·K, T]` rows (`prime_advantages` per group), optionally
    whitened over all masked tokens (the public code: unbiased variance, ε = 1e-8)."""
    rows, length = process.shape
    advantages = prime_advantages(
        process.reshape(-1, group_size, length), outcome.reshape(-1, group_size),
        mask.reshape(-1, group_size, length), gamma=gamma, baseline=baseline,
    ).reshape(rows, length)  # fmt: skip
    if whiten:
        advantages = jnp.where(mask, masked_whiten(advantages, mask, ddof=1), 0.0)
    return advantages


@TRAINERS.register("prime")
class PrimeTrainer(WorldRLTrainer):
    """Config: `rollout` (group_size K, accuracy_band, max_rounds, temperature, max_step_tokens),
    `prime` (process_rewards, beta, gamma, baseline, reward_norm, whiten, granularity) and, with
    process rewards, `parts.prm` (init "policy", head "lm", lr)."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        self.prime = config.prime
        self.group_size = config.rollout.group_size
        low, high = config.rollout.accuracy_band
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"rollout.accuracy_band must be 0 <= low <= high <= 1, got {(low, high)}."
            )
        if self.group_size < 2:
            raise ValueError("PRIME's leave-one-out needs rollout.group_size >= 2.")
        if config.prime.baseline not in BASELINES:
            raise ValueError(f"Unknown prime.baseline {config.prime.baseline!r}; use {BASELINES}.")
        if config.prime.reward_norm not in REWARD_NORMS:
            raise ValueError(
                f"Unknown prime.reward_norm {config.prime.reward_norm!r}; use {REWARD_NORMS}."
            )
        if config.prime.granularity not in GRANULARITIES:
            raise ValueError(
                f"Unknown prime.granularity {config.prime.granularity!r}; use {GRANULARITIES}."
            )
        has_prm = PRM_PART in config.get("parts", {})
        if config.prime.process_rewards and not (has_prm and config.get("reference") == "copy"):
            raise ValueError(
                "PRIME's process rewards need parts.prm (init='policy', head='lm') and the frozen "
                "SFT reference (reference='copy'); or set prime.process_rewards=False (RLOO)."
            )
        if has_prm and config.parts.prm.head != "lm":
            raise ValueError("parts.prm must be a language model (head='lm'): an implicit PRM.")

    def play(
        self, models: Mapping[str, nnx.Module], questions: list[Any], key: jax.Array
    ) -> TrajectoryBatch:
        """K rollouts of the policy per question (rows of a question contiguous)."""
        config = dataclasses.replace(self.rollout_config, group_size=self.group_size)
        return rollout(self.sampler(models), self.make_env(), self.assets.tokenizer,
                       self.tasks(questions), config, key=key)  # fmt: skip

    def kept_groups(self, models: Mapping[str, nnx.Module], rng: jax.Array) -> KeptGroups:
        """Rounds of `data.batch_size` questions until that many groups pass the filter."""
        wanted, k = self.config.data.batch_size, self.group_size
        low, high = self.config.rollout.accuracy_band
        names = ("tokens", "input_mask", "loss_mask", "logprobs", "step_id", "em")
        kept = KeptGroups(rows={name: [] for name in names})
        while kept.count < wanted and kept.rounds < self.config.rollout.max_rounds:
            questions = next(self.data)
            trajectories = self.play(models, questions, jax.random.fold_in(rng, kept.rounds))
            kept.rounds += 1
            # The positional leave-one-out needs each question's K rows contiguous, one id each.
            check_groups(trajectories.group_id, k)
            if len({q.id for q in questions}) != len(questions):
                raise ValueError(
                    "A batch of questions repeats a question: prompt ids must be unique."
                )
            em = trajectories.em.astype(np.float32)
            keep = accuracy_filter(em.reshape(-1, k), low, high)
            kept.sampled_groups += len(keep)
            kept.sampled_tokens += float(trajectories.loss_mask.sum())
            kept.sampled_em.append(float(em.mean()))
            arrays = {**{n: getattr(trajectories, n) for n in names[:-1]}, "em": em}
            for g in np.flatnonzero(keep)[: wanted - kept.count]:
                for name in names:
                    kept.rows[name].append(arrays[name][g * k : (g + 1) * k])
        return kept

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        started = time.perf_counter()
        kept = self.kept_groups(models, rng)
        rollout_s = time.perf_counter() - started
        wanted, k = self.config.data.batch_size, self.group_size
        low, high = self.config.rollout.accuracy_band
        if kept.count == 0:
            raise RuntimeError(
                f"PRIME's accuracy filter kept no group in {kept.rounds} round(s) of {wanted} "
                f"questions: every group's mean EM over its {k} rollouts was outside "
                f"[{low}, {high}] (sampled EM {np.mean(kept.sampled_em):.3f}). Widen "
                "rollout.accuracy_band, raise rollout.max_rounds or rollout.group_size, or start "
                "from a policy whose success rate is inside the band."
            )
        arrays = self._padded(kept, wanted)  # group g = rows g·K .. g·K + K − 1
        mask = arrays["loss_mask"] > 0
        em = arrays["em"]
        metrics = {
            "filter/kept_groups": float(kept.count),
            "filter/sampled_groups": float(kept.sampled_groups),
            "filter/kept_fraction": kept.count / kept.sampled_groups,
            "filter/rounds": float(kept.rounds),
            "reward": float(np.mean(kept.sampled_em)),  # every sampled rollout, before filtering
            "exact_match": float(em[: kept.count * k].mean()),  # the kept rollouts
            "turns": float((arrays["step_id"].max(axis=1) + 1)[: kept.count * k].mean()),
            "rollout_time_s": rollout_s,
            # The budget axis counts what the filter threw away too; trained_tokens what it kept.
            "sampled_tokens": kept.sampled_tokens,
            "trained_tokens": float(mask.sum()),
        }
        batch_extra = {"outcome": em}
        if self.prime.process_rewards:
            rewards, logp_ref = implicit_token_rewards(
                models[PRM_PART], models["reference"], arrays["tokens"], arrays["input_mask"],
                mask, self.prime.beta,
            )  # fmt: skip
            rewards = np.asarray(rewards)
            totals = np.asarray(sequence_rewards(jnp.asarray(rewards), jnp.asarray(mask)))
            real = slice(0, kept.count * k)
            metrics["prm/ce_before"] = float(
                ce_loss(jnp.asarray(totals[real]), jnp.asarray(em[real]))
            )
            metrics["prm/pairwise_accuracy_before"] = pairwise_prm_accuracy(
                totals[real], em[real], k
            )
            metrics["prm/token_reward_abs"] = (
                float(np.abs(rewards[mask]).mean()) if mask.any() else 0.0
            )
            advantages = self.advantages(rewards, em, mask, arrays["step_id"])
            batch_extra["prm_ref_logprobs"] = np.asarray(logp_ref, np.float32)
        else:
            outcome = np.asarray(rloo_advantages(jnp.asarray(em.reshape(-1, k)))).reshape(-1)
            advantages = outcome[:, None] * mask
        advantages = np.asarray(advantages, np.float32) * mask
        metrics.update(advantage_variances(advantages, np.where(mask, arrays["step_id"], -1)))

        batch = {
            "tokens": arrays["tokens"],
            "input_mask": arrays["input_mask"],
            "loss_mask": arrays["loss_mask"],
            "advantages": advantages,
            "old_logprobs": arrays["logprobs"],  # the sampler's: π_old (policy_step layout)
        }
        return {**batch, **batch_extra}, metrics

    def advantages(
        self, rewards: np.ndarray, outcome: np.ndarray, mask: np.ndarray, step_id: np.ndarray
    ) -> np.ndarray:
        """Eq. 5 advantages from token rewards (after the configured granularity and norm)."""
        process = jnp.asarray(rewards)
        mask = jnp.asarray(mask)
        if self.prime.granularity == "step":
            process = rewards_at_step_ends(process, jnp.where(mask, jnp.asarray(step_id), -1))
        if self.prime.reward_norm == "batch_norm":
            process = batch_norm_rewards(process, mask)
        return np.asarray(
            prime_token_advantages(
                process, jnp.asarray(outcome), mask, self.group_size, gamma=self.prime.gamma,
                baseline=self.prime.baseline, whiten=self.prime.whiten,
            )
        )  # fmt: skip

    def _padded(self, kept: KeptGroups, wanted: int) -> dict[str, np.ndarray]:
        """The kept groups' rows, then empty groups up to `wanted` (nothing trained in them)."""
        arrays = {name: np.concatenate(rows) for name, rows in kept.rows.items()}
        missing = (wanted - kept.count) * self.group_size
        if missing:
            pads = {"tokens": self.assets.tokenizer.pad_token_id, "step_id": -1}
            arrays = {
                name: np.concatenate(
                    [values, np.full((missing, *values.shape[1:]), pads.get(name, 0), values.dtype)]
                )
                for name, values in arrays.items()
            }
        return arrays

    def loss(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """PPO-clip on the policy, plus (with process rewards) the PRM's CE on the kept rows,
        divided by the mini-batch's row count so micro-batches add up exactly."""
        del rng
        loss, metrics = policy_loss(models["policy"], batch, self.loss_config)
        if not self.prime.process_rewards:
            return loss, metrics
        scored = token_logprobs(models[PRM_PART], batch["tokens"], batch["input_mask"])
        mask = (batch["loss_mask"] > 0) & scored.mask
        rewards = sequence_rewards(
            token_rewards(scored.logprobs, batch["prm_ref_logprobs"], mask, self.prime.beta), mask
        )
        present = jnp.any(mask, axis=-1)
        ce = ce_loss(rewards, batch["outcome"], present)
        normalizer = loss_normalizer(batch, "sequence-mean")
        scaled = ce if normalizer is None else ce * jnp.sum(present) / jnp.maximum(normalizer, 1.0)
        return loss + scaled, {**metrics, "prm/ce_loss": ce}
