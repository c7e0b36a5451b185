"""Q^μ of step prefixes by Monte Carlo rollouts of a prover policy μ, and the progress A^μ.

PAV (Setlur et al. 2024, arXiv 2410.08146; shared/papers/pav_and_tree_search.md §1) rewards a
step by the change it makes to a prover's chance of success,
A^μ(s_h, a_h) = Q^μ(s_h, a_h) − Q^μ(s_{h−1}, a_{h−1}) (Eq. 2), where Q^μ(prefix) is the
probability that μ, continuing the prefix, reaches the gold answer. Here Q^μ is estimated by
sampling N completions of each prefix (`prm.rollouts.completions.complete`, through the same
`Completer` and `math_shepherd` call that label Math-Shepherd steps), for the paper's two prover
families:

* a policy: the completer's own sampler, e.g. the SFT policy at another temperature;
* Best-of-K of a policy with an oracle verifier (Eq. 30, Q^{BoK(π)} = 1 − (1 − Q^π)^K),
  estimated without bias from the same N ≥ K completions of π by `best_of_k_estimates`.

    outcomes = prefix_outcomes(completer, solutions, num_completions=16)
    values = [best_of_k_estimates(o, 4) for o in outcomes]     # Q^{Bo4(π)} of every prefix
    prefix_values, step_mask = pad_prefix_values(values)
    advantages = prover_advantages(prefix_values, step_mask)     # prm.rewards.progress
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prm.rollouts.completions import Prefix
from prm.rollouts.step_labels import Completer, Solution, math_shepherd


def best_of_k_estimates(correct: np.ndarray, k: int) -> np.ndarray:
    """Unbiased estimates of 1 − (1 − q)^K, the success probability of the best of K attempts.

    Row i holds n ≥ K i.i.d. Bernoulli(q_i) outcomes with c_i successes; the estimate is
    1 − C(n − c_i, K) / C(n, K), the chance that K of the n drawn without replacement hold a
    success (the pass@k estimator of Chen et al. 2021). K = 1 is the plain mean c_i / n. With
    K > 1 it is PAV's Best-of-K prover value (Eq. 30) without the bias of plugging the
    sample mean into 1 − (1 − q̂)^K.

    Args:
      correct: bool[..., n], the outcomes of n completions of each prefix.
      k: attempts K, 1 ≤ K ≤ n.

    Returns:
      float32[...], the estimates.
    """
    n = correct.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(
            f"best_of_k_estimates: k must be an integer in [1, n = {n}] (the completions per "
            f"prefix); got {k!r}. Sample at least K completions per prefix."
        )
    failures = (n - np.sum(correct, axis=-1))[..., None].astype(np.float64)
    i = np.arange(k)
    # C(f, K) / C(n, K) = prod_{i<K} (f − i) / (n − i); a factor is 0 once i = f (f < K).
    all_fail = np.prod(np.maximum(failures - i, 0.0) / (n - i), axis=-1)
    return (1.0 - all_fail).astype(np.float32)


def prover_values(
    completer: Completer, prefixes: Sequence[Prefix], num_completions: int, best_of: int = 1
) -> np.ndarray:
    """float32[len(prefixes)]: Q^μ of each prefix, μ = BoK(completer's policy), K = best_of.

    One batched `complete` call (every prefix prefilled once, forked `num_completions` ways).
    """
    result = completer(prefixes, num_completions)
    return best_of_k_estimates(result.correct, best_of)


def prefix_outcomes[Task](
    completer: Completer[Task], solutions: Sequence[Solution[Task]], num_completions: int
) -> list[np.ndarray]:
    """Per solution of M steps, bool[M + 1, N]: the outcomes of N completions of each of its
    prefixes x_{1:t}, t = 0..M; `best_of_k_estimates` of row t is Q^{BoK}(x_{1:t}).

    Row 0 completes the problem alone (sampled once per distinct task; tasks must be hashable),
    row M is the solution's own outcome repeated (nothing is left to complete), rows 1..M − 1
    are `math_shepherd`'s completions after every step. Two batched calls in all: the distinct
    tasks, then every proper prefix of every solution.
    """
    if not solutions:
        raise ValueError("prefix_outcomes: no solutions given.")
    tasks = list(dict.fromkeys(s.task for s in solutions))
    roots = completer([Prefix(task) for task in tasks], num_completions).correct
    root_of = {task: roots[i] for i, task in enumerate(tasks)}
    rows = math_shepherd(completer, solutions, num_completions)
    return [np.concatenate([root_of[s.task][None], r]) for s, r in zip(solutions, rows)]


def pad_prefix_values(values: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(prefix_values float32[S, H + 1], step_mask bool[S, H]) of ragged per-solution values
    (from `prefix_outcomes`), H the most steps; the layout `prm.rewards.progress` expects.
    Padding repeats each row's last value, so padded differences are 0 as well as masked."""
    steps = max(len(v) for v in values) - 1
    if steps < 1:
        raise ValueError("pad_prefix_values: every solution has no steps.")
    prefix_values = np.stack([np.pad(v, (0, steps + 1 - len(v)), mode="edge") for v in values])
    step_mask = np.arange(steps)[None, :] < np.array([len(v) - 1 for v in values])[:, None]
    return prefix_values.astype(np.float32), step_mask
