"""Q^μ by Monte Carlo completions: hand-computed oracle values, exact values of the noisy expert
(a dynamic programme over the error offset), the Best-of-K estimator against enumeration."""

import itertools

import numpy as np
import pytest

from experiments.collect import NoisyExpertCompleter
from prm.envs import chain_arithmetic as ca
from prm.rewards.progress import prover_advantages
from prm.rollouts.progress import best_of_k_estimates, pad_prefix_values, prefix_outcomes
from prm.rollouts.step_labels import Solution
from tests.helpers.chain_oracle import OracleCompleter, wrong_solution

# Six operations: M = 7 steps with the answer; gold values 2, 5, 4, 1, 9, 8, 3.
PROBLEM = ca.ChainProblem(2, (("+", 3), ("-", 1), ("-", 3), ("+", 8), ("-", 1), ("+", 5)))


def test_best_of_k_estimates_equal_the_fraction_of_k_subsets_with_a_success():
    rng = np.random.default_rng(0)
    correct = rng.random((20, 6)) < 0.3
    for k in (1, 2, 3, 6):
        by_enumeration = [
            np.mean([row[list(s)].any() for s in itertools.combinations(range(6), k)])
            for row in correct
        ]
        np.testing.assert_allclose(best_of_k_estimates(correct, k), by_enumeration, atol=1e-6)
    np.testing.assert_allclose(best_of_k_estimates(correct, 1), correct.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("k", [0, 5, 2.0, True])
def test_best_of_k_estimates_reject_k_outside_one_to_n(k):
    with pytest.raises(ValueError, match="k must be an integer in"):
        best_of_k_estimates(np.zeros((2, 4), bool), k)


def test_prefix_outcomes_and_advantages_by_hand():
    # The oracle: MC = 1/2 after a correct prefix (completions 0 and 2 of 4 right), 0 after a
    # wrong one; the full solution is its own outcome.
    completer = OracleCompleter()
    solutions = [Solution(PROBLEM, PROBLEM.gold_steps(), 1.0), wrong_solution(PROBLEM, 3)]
    outcomes = prefix_outcomes(completer, solutions, 4)
    assert completer.asked == [[0], [1, 2, 3, 4, 5, 6] * 2]  # the shared root once
    assert [o.shape for o in outcomes] == [(8, 4), (8, 4)]
    q = [best_of_k_estimates(o, 1) for o in outcomes]
    np.testing.assert_allclose(q[0], [0.5] * 7 + [1.0])
    np.testing.assert_allclose(q[1], [0.5, 0.5, 0.5, 0, 0, 0, 0, 0])
    # Best of 2 from {1, 0, 1, 0}: 1 − C(2, 2) / C(4, 2) = 5/6.
    np.testing.assert_allclose(best_of_k_estimates(outcomes[0], 2), [5 / 6] * 7 + [1.0])
    values, mask = pad_prefix_values(q)
    advantages = np.asarray(prover_advantages(values, mask))
    np.testing.assert_allclose(advantages[0], [0, 0, 0, 0, 0, 0, 0.5])  # the answer step
    np.testing.assert_allclose(advantages[1], [0, 0, -0.5, 0, 0, 0, 0])  # the first error


def test_pad_prefix_values_masks_the_missing_steps():
    values, mask = pad_prefix_values([np.array([0.1, 0.4]), np.array([0.2, 0.3, 0.9, 1.0])])
    np.testing.assert_allclose(values, [[0.1, 0.4, 0.4, 0.4], [0.2, 0.3, 0.9, 1.0]])
    np.testing.assert_array_equal(mask, [[1, 0, 0], [1, 1, 1]])


def exact_expert_value(problem, steps, error_rate):
    """P(the noisy expert, continuing `steps`, answers right), by a DP over the error offset:
    with + and − only, the written value minus the gold one is a random walk mod 10 that moves
    by U{1..9} with probability `error_rate` per remaining operation."""
    written = ca.parse_chain_step(steps[-1]).result if steps else problem.start
    offset = np.zeros(10)
    offset[(written - problem.values[len(steps)]) % 10] = 1.0
    for _ in range(problem.num_ops - len(steps)):
        shifted = sum(np.roll(offset, s) for s in range(1, 10)) / 9
        offset = (1 - error_rate) * offset + error_rate * shifted
    return offset[0]


def test_prover_values_of_the_noisy_expert_match_the_exact_values():
    problem = ca.ChainProblem(7, (("+", 4), ("-", 9), ("+", 2), ("-", 5)))  # M = 5
    error_rate, n = 0.3, 4000
    solution = Solution(problem, wrong_solution(problem, 2).steps, 0.0)
    outcomes = prefix_outcomes(NoisyExpertCompleter(error_rate, seed=0), [solution], n)[0]
    exact = [exact_expert_value(problem, solution.steps[:t], error_rate) for t in range(5)]
    exact = np.array([*exact, 0.0])  # the solution's own (wrong) answer
    # Closed form of the walk: P(offset 0 after r moves) = 1/10 + 9/10 · λ^r from offset 0 and
    # 1/10 − 1/10 · λ^r from any other, λ = 1 − e − e/9 (the walk's other eigenvalue).
    lam = 1 - error_rate - error_rate / 9
    assert exact[0] == pytest.approx(0.1 + 0.9 * lam**4)
    assert exact[2] == pytest.approx(0.1 - 0.1 * lam**2)  # step 2 was written wrong
    tolerance = 4 * np.sqrt(exact * (1 - exact) / n) + 1e-9
    assert np.all(np.abs(best_of_k_estimates(outcomes, 1) - exact) <= tolerance)
    bo4 = 1 - (1 - exact) ** 4
    assert np.all(np.abs(best_of_k_estimates(outcomes, 4) - bo4) <= 4 * tolerance)
