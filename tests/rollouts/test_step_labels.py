"""Math-Shepherd and OmegaPRM collection against hand-computed labels, probes and trees.

`OracleCompleter` stands in for the policy (tests/helpers/chain_oracle.py): MC(prefix) is 1/2
for a correct prefix and 0 for a wrong one, so every number below follows by hand.
"""

import numpy as np
import pytest

from prm import labels
from prm.envs import chain_arithmetic as ca
from prm.rollouts.completions import Completions, Prefix
from prm.rollouts.step_labels import (
    Cost,
    OmegaPRMConfig,
    Solution,
    brute_force_first_errors,
    locate_first_errors,
    math_shepherd,
    omegaprm,
    pairwise_preference,
)
from tests.helpers.chain_oracle import OracleCompleter, continuation, wrong_solution

# Six operations: M = 7 steps with the answer; gold values 2, 5, 4, 1, 9, 8, 3.
PROBLEM = ca.ChainProblem(2, (("+", 3), ("-", 1), ("-", 3), ("+", 8), ("-", 1), ("+", 5)))


def test_oracle_mc_is_half_before_the_first_error_and_zero_after():
    solution = wrong_solution(PROBLEM, 3)
    assert ca.first_error(PROBLEM, solution.steps) == 3
    result = OracleCompleter()([Prefix(PROBLEM, solution.steps[:t]) for t in range(7)], 2)
    np.testing.assert_array_equal(result.mc, [0.5, 0.5, 0.5, 0, 0, 0, 0])


def test_math_shepherd_labels_by_hand():
    completer = OracleCompleter()
    solutions = [
        wrong_solution(PROBLEM, 3),
        Solution(PROBLEM, PROBLEM.gold_steps(), 1.0),
    ]
    rows = math_shepherd(completer, solutions, 4)
    assert completer.asked == [[1, 2, 3, 4, 5, 6] * 2]  # every prefix, one batched call
    assert [r.shape for r in rows] == [(7, 4), (7, 4)]
    hard = [np.asarray(labels.hard_estimation_labels(r)) for r in rows]
    soft = [np.asarray(labels.soft_estimation_labels(r)) for r in rows]
    np.testing.assert_array_equal(hard[0], [1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(soft[0], [0.5, 0.5, 0, 0, 0, 0, 0])
    # The gold solution: 1/2 from every proper prefix, its own outcome (1) at the answer.
    np.testing.assert_array_equal(soft[1], [0.5] * 6 + [1.0])
    # One completion (the oracle's j = 0 never errs): hard and soft agree.
    np.testing.assert_array_equal(
        np.asarray(labels.soft_estimation_labels(rows[0][:, :1])), [1, 1, 0, 0, 0, 0, 0]
    )
    assert completer.cost == Cost(estimates=12, completions=48, tokens=480, calls=1)


def test_batched_binary_search_finds_first_errors_with_the_predicted_calls():
    short = ca.ChainProblem(4, (("+", 1), ("-", 2)))  # M = 3
    solutions = [
        wrong_solution(PROBLEM, 3),
        wrong_solution(PROBLEM, 7),  # only the answer is wrong
        wrong_solution(short, 1),
    ]
    completer = OracleCompleter()
    found = locate_first_errors(completer, solutions, 2)
    assert [f.search.first_error for f in found] == [3, 7, 1]
    # By hand, M = 7: probe 3 (MC 0), 1 (> 0), 2 (> 0) -> 3; probe 3, 5, 6 (all > 0) -> 7.
    # M = 3: probe 1 (MC 0) -> 1. Three rounds, one batched call each (⌈log2 7⌉ = 3).
    assert [[t for t, _ in f.search.estimates] for f in found] == [[3, 1, 2], [3, 5, 6], [1]]
    assert completer.asked == [[3, 3, 1], [1, 5], [2, 6]]
    assert completer.cost.estimates == 7 and completer.cost.calls == 3
    assert [len(f.probes) for f in found] == [3, 3, 1]
    assert found[0].probes[1] == Prefix(PROBLEM, solutions[0].steps[:1])
    assert [c.mc[0] for c in found[0].completions] == [0.0, 0.5, 0.5]
    for f, s in zip(found, solutions):
        assert f.search.first_error == ca.first_error(s.task, s.steps)

    # Per-step MC needs every prefix: 6 + 6 + 2 = 14 estimates for the same first errors.
    brute = OracleCompleter()
    first_errors, mcs = brute_force_first_errors(brute, solutions, 2)
    assert first_errors == [3, 7, 1] and brute.cost.estimates == 14
    np.testing.assert_array_equal(mcs[0], [0.5, 0.5, 0, 0, 0, 0])


def test_search_after_a_head_prefix_indexes_the_rollout():
    # A rollout after the correct state x_{1:2} whose step 4 (its 2nd step) is wrong.
    head = PROBLEM.gold_steps()[:2]
    rollout = continuation(PROBLEM, head, 4)
    found = locate_first_errors(OracleCompleter(), [Solution(PROBLEM, rollout, 0.0)], 2, [head])
    assert found[0].search.first_error == 2
    assert all(p.steps[:2] == head for p in found[0].probes)


def test_omegaprm_tree_by_hand():
    completer = OracleCompleter()
    config = OmegaPRMConfig(rollouts_per_estimate=2, max_selections=2, length_scale=50.0)
    (tree,) = omegaprm(completer, [PROBLEM], config)
    gold = PROBLEM.gold_steps()
    wrong2 = continuation(PROBLEM, (), 2)[:2]  # gold step 1, wrong step 2
    wrong3 = continuation(PROBLEM, gold[:1], 3)[:2]  # gold step 2, wrong step 3
    # Round 1 searches the root's wrong rollout (error at 2): probes 3 (MC 0), 1 (1/2), 2 (0).
    # Round 2 searches x_1's wrong rollout (error at its step 2, i.e. step 3): probes 3, 1, 2.
    got = [(s.steps, s.parent, s.mc) for s in tree.states]
    assert got == [
        ((), -1, 0.5),
        (gold[:1], 0, 0.5),
        (wrong2, 1, 0.0),
        (continuation(PROBLEM, (), 2)[:3], 2, 0.0),
        (gold[:2], 1, 0.5),
        (gold[:1] + wrong3, 4, 0.0),
        (gold[:1] + continuation(PROBLEM, gold[:1], 3)[:3], 5, 0.0),
    ]
    assert [(s.state, s.first_error, s.probes) for s in tree.searches] == [
        (0, 2, (3, 1, 2)),
        (1, 2, (3, 1, 2)),
    ]
    assert [s.visits for s in tree.states[:2]] == [1, 1]
    # Siblings under x_1: the wrong step 2 (MC 0) and the right one (MC 1/2).
    assert tree.pairs() == [(2, 4)]
    assert pairwise_preference(0.5, 0.0) == 0.75 and pairwise_preference(0.0, 0.5) == 0.25
    # Calls: the roots, then three bisection rounds per selection.
    assert completer.cost.calls == 1 + 3 + 3
    for state in tree.states[1:]:
        truly_correct = all(ca.step_correctness(PROBLEM, state.steps))
        assert (state.mc > 0) == truly_correct


def test_omegaprm_skips_questions_the_policy_always_or_never_solves():
    class Always(OracleCompleter):
        def __call__(self, prefixes, n):
            result = super().__call__(prefixes, n)
            return Completions(np.ones_like(result.correct), result.num_tokens, result.steps)

    trees = omegaprm(Always(), [PROBLEM], OmegaPRMConfig(rollouts_per_estimate=2))
    assert len(trees[0].states) == 1 and not trees[0].searches


@pytest.mark.parametrize("bad", [dict(alpha=0.0), dict(c_puct=-1.0)])
def test_omegaprm_rejects_bad_constants(bad):
    config = OmegaPRMConfig(rollouts_per_estimate=2, max_selections=1, **bad)
    with pytest.raises(ValueError):
        omegaprm(OracleCompleter(), [PROBLEM], config)
