"""A progress verifier: a scalar head on the policy's trunk that predicts Q^μ of step prefixes.

PAV (Setlur et al. 2024, arXiv 2410.08146; shared/papers/pav_and_tree_search.md §1.6) trains a
Q-model on (prefix, Q̂_mc) pairs: seed solutions, then N Monte Carlo completions after every
prefix of each (`prm.rollouts.progress.prefix_outcomes`). Its prediction at the last token of a
prefix is Q̂(prefix); the progress of a step is the difference of consecutive predictions
(Eq. 2), and a Best-of-K prover needs no model of its own: Q^{BoK(π)} = 1 − (1 − Q^π)^K
(Eq. 30). Here the model is `prm.models.ScalarHeadModel` read by `prm.search.ScalarValueFn`,
fitted to the MC targets with `prm.search.self_train.fit_value`: as in the paper by binary
cross-entropy against the soft targets with class-balanced batches (`objective="cross_entropy"`,
`balanced=True`, read through `ScalarValueFn(sigmoid=True)`), or by squared error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prm.envs.protocol import TextTokenizer
from prm.rewards.progress import best_of_k_values
from prm.rollouts.completions import Prefix, prefix_texts
from prm.rollouts.env import Env
from prm.rollouts.step_labels import Solution
from prm.search.beam import ValuesFn
from prm.search.engine import ValueFn


def verifier_samples[Task](
    env: Env[Task],
    tokenizer: TextTokenizer,
    solutions: Sequence[Solution[Task]],
    values: Sequence[np.ndarray],
) -> list[tuple[list[int], float]]:
    """(context tokens, target) for every prefix x_{1:t}, t = 0..M, of every solution.

    `values[i][t]` is the target of solution i's prefix t (M + 1 of them, e.g.
    `best_of_k_estimates` of `prefix_outcomes`). A context is what the policy saw: the prompt,
    each step and the env's observation after it (`prefix_texts`), tokenized. Prefixes shared by
    several solutions (the problem alone, above all) appear once per solution.
    """
    prefixes, targets = [], []
    for solution, value in zip(solutions, values, strict=True):
        if len(value) != len(solution.steps) + 1:
            raise ValueError(
                f"A solution of {len(solution.steps)} steps needs {len(solution.steps) + 1} "
                f"prefix values (t = 0..M), got {len(value)}."
            )
        for t in range(len(solution.steps) + 1):
            prefixes.append(Prefix(solution.task, solution.steps[:t]))
            targets.append(float(value[t]))
    texts = prefix_texts(env, prefixes)
    return [
        (tokenizer.encode(text, add_special_tokens=False), target)
        for text, target in zip(texts, targets)
    ]


def verifier_values(value_fn: ValueFn, best_of: int = 1) -> ValuesFn:
    """(Q^π, Q^μ) of contexts from one Q^π verifier: Q^π is its prediction clipped to [0, 1],
    Q^μ = 1 − (1 − Q^π)^K for the Best-of-K prover μ = BoK(π) (K = 1: μ = π). One model call."""

    def values(contexts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        policy = np.clip(np.asarray(value_fn(contexts), np.float64), 0.0, 1.0)
        return policy, np.asarray(best_of_k_values(policy, best_of), np.float64)

    return values
