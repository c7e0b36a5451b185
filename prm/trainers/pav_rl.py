"""PAV-RL: policy gradient whose per-step reward is the effective reward Q^π + α·A^μ.

Setlur et al. 2024, "Rewarding Progress" (arXiv 2410.08146; notes: pav_and_tree_search.md §1.3,
§1.8). The gradient of the PAV-RL objective (Eq. 4) at the current iterate is (Eq. 5)

    Σ_h ∇ log π(a_h | s_h) · (Q^π(s_h, a_h) + α·A^μ(s_h, a_h)),
    A^μ(s_h, a_h) = Q^μ(s_h, a_h) − Q^μ(s_{h−1}, a_{h−1})                (Eq. 2)

where A^μ is the progress step h makes under a prover policy μ ≠ π. One train step here:

    1. K trajectories of π per question (`rollout.group_size`, rows of a question contiguous),
       retriever in the loop; a step is a turn of the policy (its tokens by `step_id`).
    2. Q^μ of every turn prefix of every trajectory by N Monte Carlo completions of μ
       (`pav.completions`; `prm.rollouts.progress.prefix_outcomes`, the Math-Shepherd
       completion path): Q^μ of the question alone is V^μ(x) (sampled once per question), of the
       whole trajectory its own outcome (nothing is left to complete). μ is the frozen SFT warm
       start (the "reference" part, never trained), or with `pav.prover_best_of` = K' > 1 its
       Best-of-K' (Eq. 30), estimated without bias from the same N ≥ K' completions
       (`best_of_k_estimates`, pass@k).
    3. A^μ_h = Q^μ(prefix through step h) − Q^μ(prefix before step h) (`prover_advantages`), so
       Σ_h A^μ_h = R − V^μ(x) telescopes.
    4. Per-step advantage (`effective_step_advantages`):

           Â_{i,h} = (R_i − mean_{j≠i} R_j) + α·A^μ_{i,h}

       The Q^π term is the sampled outcome R = EM (an unbiased one-rollout estimate of
       Q^π(s_h, a_h) for every h) with the leave-one-out mean of the question's other K − 1
       outcomes as baseline (`rloo_advantages`), broadcast over the step's tokens.
       `pav.reward=q` puts α·Q^μ(prefix through step h) in place of α·A^μ: App. G's ablation,
       which collapsed in the paper (a trivial step that keeps Q^μ high is paid at every step).
       α = 0 is outcome-only RLOO in the same loop (no prover completions are sampled).
    5. The shared PPO-clip + k3 KL step to the frozen SFT reference (`prm.training.policy_step`).

Deviations from the paper, by design: (a) the paper scores steps with a trained PAV (a
Q-model on MC targets, `prm/search/progress_verifier.py` here, used for beam search); here A^μ
is the MC estimate from the prover's own completions, exact in expectation and with no
verifier to train, at the price of N completions per prefix (counted in `sampled_tokens`).
(b) The paper's baseline is a learned token-level value function; here the leave-one-out mean
of the group's outcomes, as PRIME's outcome term. As in the paper (§1.8, its best prover was the
SFT model), μ stays fixed while π trains, and may end up the weaker policy.

Metrics beyond the world trainers' usual ones: `progress/mean`, `progress/std` and
`progress/nonzero_fraction` of A^μ over the steps taken, `prover/value_question` (mean V^μ(x)),
`prover/completions`, `sampled_tokens/policy` and `sampled_tokens/prover` (`sampled_tokens` is
their sum: the comparison's budget axis counts the prover's completions too).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.advantages import broadcast_step_values_to_tokens, rloo_advantages
from prm.envs.protocol import QATask
from prm.registry import TRAINERS
from prm.rewards.progress import effective_rewards, prover_advantages
from prm.rollouts import TrajectoryBatch
from prm.rollouts.completions import Completions, Prefix
from prm.rollouts.progress import best_of_k_estimates, pad_prefix_values, prefix_outcomes
from prm.rollouts.step_labels import Completer, Cost, Solution
from prm.sampling import Sampler
from prm.sampling.sampler import _bucket
from prm.trainers.rl import (
    WorldRLTrainer,
    advantage_variances,
    centred_advantage_variances,
    throughput_metrics,
    token_batch,
)

REWARDS = ("advantage", "q")
PROVER_PART = "reference"  # the frozen SFT warm start


def effective_step_advantages(
    outcome: chex.Array,
    prefix_values: chex.Array,
    step_mask: chex.Array,
    alpha: float,
    reward: str = "advantage",
) -> jax.Array:
    """Per-step advantages of G groups of K trajectories (PAV Eq. 5 with an RLOO baseline).

        Â_{i,h} = (R_i − mean_{j≠i} R_j) + α·A^μ_{i,h}      reward="advantage"
        Â_{i,h} = (R_i − mean_{j≠i} R_j) + α·Q^μ_{i,h}      reward="q" (PAV App. G)

    with A^μ_{i,h} = Q^μ_{i,h} − Q^μ_{i,h−1} (`prover_advantages`) and Q^μ_{i,h} the prover's
    value of trajectory i's prefix through step h.

    Args:
      outcome: `[G, K]` outcome rewards R of each group's K trajectories.
      prefix_values: `[G, K, H + 1]` Q^μ of each trajectory's prefixes; index 0 is V^μ(x) of
        the question alone, index h the value after step h (`pad_prefix_values` layout).
      step_mask: `[G, K, H]`, 1 on the steps each trajectory took.
      alpha: weight α of the prover term (0: outcome-only RLOO).
      reward: "advantage" (A^μ) or "q" (Q^μ).

    Returns:
      `[G, K, H]` float32 advantages, 0 at masked steps.
    """
    if reward not in REWARDS:
        raise ValueError(f"Unknown PAV reward {reward!r}; use one of {REWARDS}.")
    outcome = jnp.asarray(outcome, jnp.float32)
    prefix_values = jnp.asarray(prefix_values, jnp.float32)
    step_mask = jnp.asarray(step_mask, bool)
    chex.assert_rank([outcome, prefix_values, step_mask], [2, 3, 3])
    chex.assert_equal_shape_prefix([outcome, prefix_values, step_mask], 2)
    outcome_advantage = rloo_advantages(outcome)
    if reward == "advantage":
        shaping = prover_advantages(prefix_values, step_mask)
    else:
        shaping = prefix_values[..., 1:]
    policy_values = jnp.broadcast_to(outcome_advantage[..., None], step_mask.shape)
    return effective_rewards(policy_values, shaping, step_mask, alpha)


def trajectory_solutions(
    trajectories: TrajectoryBatch, tasks: Sequence[QATask], group_size: int
) -> list[Solution[QATask]]:
    """Each row as a `Solution`: its question's task (row q·K + j is of `tasks[q]`), its turns'
    texts and its EM."""
    if len(trajectories.steps) != len(tasks) * group_size:
        raise ValueError(
            f"{len(trajectories.steps)} trajectories are not {group_size} per each of "
            f"{len(tasks)} questions."
        )
    return [
        Solution(tasks[b // group_size], tuple(s.step_text for s in steps), float(em))
        for b, (steps, em) in enumerate(zip(trajectories.steps, trajectories.em))
    ]


class BucketedCompleter:
    """A `Completer` whose calls pad their prefixes to a bucketed count (2^i or 3·2^(i−1), the
    sampler's buckets) by repeating the last one, so the sampler compiles a few batch shapes
    over a run instead of one per step (the number of turn prefixes changes every step). The
    padding's completions are dropped and not counted in `cost`; a row's samples depend on its
    own index only, so the kept ones are those of the unpadded call."""

    def __init__(self, completer: Completer):
        self.completer = completer
        self.cost = Cost()

    def __call__(self, prefixes: Sequence[Prefix], num_completions: int) -> Completions:
        count = len(prefixes)
        padded = [*prefixes, *prefixes[-1:] * (_bucket(count) - count)]
        result = self.completer(padded, num_completions)
        kept = Completions(result.correct[:count], result.num_tokens[:count],
                           result.steps[:count])  # fmt: skip
        self.cost.add(kept)
        return kept


@dataclasses.dataclass(frozen=True)
class ProverValues:
    """Q^μ of every turn prefix of a batch of trajectories, and what it cost.

    prefix_values: float32[B, H + 1], index 0 V^μ(x), index h Q^μ after step h (padded rows
      repeat their last value); step_mask: bool[B, H]; completions and tokens: the prover's.
    """

    prefix_values: np.ndarray
    step_mask: np.ndarray
    completions: int
    tokens: int

    @classmethod
    def unused(cls, num_turns: np.ndarray) -> ProverValues:
        """Zeros for rows of `num_turns` steps, at no cost: what α = 0 multiplies."""
        steps = np.arange(max(int(num_turns.max()), 1))
        step_mask = steps[None, :] < num_turns[:, None]
        return cls(np.zeros((len(num_turns), len(steps) + 1), np.float32), step_mask, 0, 0)


@TRAINERS.register("pav_rl")
class PAVRLTrainer(WorldRLTrainer):
    """Config: `rollout.group_size` (K ≥ 2), `pav` (alpha, reward, completions N,
    prover_best_of K' ≤ N) and `reference="copy"` (the frozen SFT prover)."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        self.pav = config.pav
        self.group_size = config.rollout.group_size
        if self.group_size < 2:
            raise ValueError("PAV-RL's leave-one-out baseline needs rollout.group_size >= 2.")
        if config.pav.reward not in REWARDS:
            raise ValueError(f"Unknown pav.reward {config.pav.reward!r}; use one of {REWARDS}.")
        if config.pav.alpha < 0:
            raise ValueError(
                f"pav.alpha must be >= 0 (the weight of the prover's progress), got "
                f"{config.pav.alpha}; 0 is outcome-only RLOO."
            )
        if config.pav.completions < 1:
            raise ValueError(f"pav.completions must be >= 1, got {config.pav.completions}.")
        if not 1 <= config.pav.prover_best_of <= config.pav.completions:
            raise ValueError(
                f"pav.prover_best_of must lie in [1, pav.completions = {config.pav.completions}] "
                f"(Best-of-K' is estimated from the N completions), got "
                f"{config.pav.prover_best_of}; raise pav.completions."
            )
        if config.get("reference") != "copy":
            raise ValueError(
                "PAV-RL's prover is the frozen SFT warm start: set reference='copy' "
                f"(got reference={config.get('reference')!r})."
            )

    def prover_values(
        self,
        models: Mapping[str, nnx.Module],
        questions: Sequence[Any],
        trajectories: TrajectoryBatch,
        key: jax.Array,
    ) -> ProverValues:
        """Q^μ of every turn prefix of `trajectories` from `pav.completions` completions of the
        prover per prefix (two batched calls: the questions, then every inner prefix)."""
        tokenizer = self.assets.tokenizer
        sampler = Sampler(models[PROVER_PART], pad_token_id=tokenizer.pad_token_id)
        completer = BucketedCompleter(
            Completer(sampler, self.make_env(), tokenizer, self.rollout_config, key)
        )
        solutions = trajectory_solutions(trajectories, self.tasks(list(questions)), self.group_size)
        outcomes = prefix_outcomes(completer, solutions, self.pav.completions)
        values = [best_of_k_estimates(o, self.pav.prover_best_of) for o in outcomes]
        prefix_values, step_mask = pad_prefix_values(values)
        return ProverValues(prefix_values, step_mask, completer.cost.completions,
                            completer.cost.tokens)  # fmt: skip

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        policy_key, prover_key = jax.random.split(rng)
        questions, trajectories, played = self.play_groups(models, policy_key)
        started = time.perf_counter()
        if self.pav.alpha > 0:
            prover = self.prover_values(models, questions, trajectories, prover_key)
        else:  # outcome-only RLOO: no completion would count
            prover = ProverValues.unused(trajectories.num_turns)
        prover_s = time.perf_counter() - started

        k, (rows, steps) = self.group_size, prover.step_mask.shape
        outcome = trajectories.em.astype(np.float32)
        step_advantages = effective_step_advantages(
            outcome.reshape(-1, k), prover.prefix_values.reshape(-1, k, steps + 1),
            prover.step_mask.reshape(-1, k, steps), self.pav.alpha, self.pav.reward,
        ).reshape(rows, steps)  # fmt: skip
        token_advantages = np.asarray(
            broadcast_step_values_to_tokens(step_advantages, jnp.asarray(trajectories.step_id))
        ) * trajectories.loss_mask  # fmt: skip

        policy_tokens = float(trajectories.loss_mask.sum())
        metrics = {
            "reward": float(outcome.mean()),
            **played,
            **throughput_metrics(
                policy_tokens + prover.tokens, played["rollout_time_s"] + prover_s
            ),
            "sampled_tokens/policy": policy_tokens,
            "sampled_tokens/prover": float(prover.tokens),
            "prover_time_s": prover_s,
            "prover/completions": float(prover.completions),
            "trained_tokens": policy_tokens,
            **advantage_variances(token_advantages, trajectories.step_id),
            **centred_advantage_variances(outcome.reshape(-1, k)),
        }
        if prover.completions:
            metrics["prover/value_question"] = float(prover.prefix_values[:, 0].mean())
            metrics.update(progress_metrics(prover.prefix_values, prover.step_mask))
        return token_batch(trajectories, token_advantages), metrics


def progress_metrics(prefix_values: np.ndarray, step_mask: np.ndarray) -> dict[str, float]:
    """Mean, std and non-zero fraction of A^μ over the steps taken (the paper's
    distinguishability needs A^μ ≠ 0 on the policy's steps)."""
    progress = np.asarray(prover_advantages(jnp.asarray(prefix_values), jnp.asarray(step_mask)))
    taken = progress[step_mask]
    return {
        "progress/mean": float(taken.mean()),
        "progress/std": float(taken.std()),
        "progress/nonzero_fraction": float(np.mean(taken != 0)),
    }
