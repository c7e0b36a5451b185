"""Exact prover values of the planted-subsequence task against brute-force enumeration."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from prm.didactic.planted_subsequence import (
    PlantedTask,
    automaton_values,
    gamma_prover_probs,
    match_transitions,
    prefix_tree_values,
    prefix_values,
    trace,
)

# y* = (1, 0, 1) overlaps itself, so a mismatch after "1 0 1 1" must fall back to "1", not 0.
TINY = PlantedTask(length=5, vocab_size=4, eos=3, planted=(1, 0, 1))


def naive_match(task, prefix):
    """Longest suffix of `prefix` that is a prefix of y* (len(y*) once y* has appeared)."""
    m = len(task.planted)
    for start in range(len(prefix) - m + 1):
        if tuple(prefix[start : start + m]) == task.planted:
            return m
    return max(j for j in range(m) if j == 0 or tuple(prefix[-j:]) == task.planted[:j])


def naive_gamma_probs(task, prefix, gamma):
    k = naive_match(task, prefix)
    weights = np.ones(task.vocab_size)
    if k < len(task.planted):
        weights[task.planted[k]] = gamma
    return weights / weights.sum()


def brute_force_value(task, prefix, probs):
    """Σ over every continuation of its probability × reward; EOS ends the response."""
    if naive_match(task, prefix) == len(task.planted):
        return 1.0
    if len(prefix) == task.length:
        return 0.0
    p = probs(prefix)
    body = [a for a in range(task.vocab_size) if a != task.eos]
    return sum(p[a] * brute_force_value(task, prefix + (a,), probs) for a in body)


def test_match_transitions_by_hand():
    delta = match_transitions(PlantedTask())  # y* = 3 6 0 3 5
    assert delta[0, 3] == 1 and delta[0, 6] == 0
    assert delta[3, 3] == 4 and delta[4, 5] == 5
    assert delta[4, 6] == 2  # "3 6 0 3" + 6 ends with "3 6"
    assert delta[4, 3] == 1 and delta[2, 3] == 1  # ... + 3 ends with "3"
    assert (delta[5] == 5).all() and delta[2, 14] == 2


@pytest.mark.parametrize("gamma", [1.0, 4.0, 30.0])
def test_gamma_prover_values_match_brute_force_at_every_prefix(gamma):
    values = np.asarray(automaton_values(TINY, gamma_prover_probs(TINY, gamma)))
    delta = match_transitions(TINY)
    body = [a for a in range(TINY.vocab_size) if a != TINY.eos]
    for t in range(TINY.length + 1):
        for prefix in itertools.product(body, repeat=t):
            k = 0
            for a in prefix:
                k = delta[k, a]
            expected = brute_force_value(TINY, prefix, lambda p: naive_gamma_probs(TINY, p, gamma))
            np.testing.assert_allclose(values[k, t], expected, rtol=1e-5, atol=1e-7)


def test_paper_task_prover_values_match_the_reference_table():
    # V^μ(empty prefix) from the reference notes' own DP (§1.5), to 3 decimals.
    task = PlantedTask()
    reference = {5: 0.005, 8: 0.024, 10: 0.046, 15: 0.118, 20: 0.203, 50: 0.585, 100: 0.815}
    for gamma, v0 in reference.items():
        values = automaton_values(task, gamma_prover_probs(task, gamma))
        assert round(float(values[0, 0]), 3) == v0


def test_prefix_tree_values_for_any_policy_match_brute_force():
    # A policy that depends on the whole prefix (not only its match state).
    def policy(prefix):
        rng = np.random.default_rng(hash(prefix) % 2**32)
        return rng.dirichlet(np.ones(TINY.vocab_size))

    values = prefix_tree_values(TINY, policy)
    for prefix in [(), (1,), (1, 0), (0, 1, 1), (1, 0, 1), (2, 2, 2, 2, 2)]:
        np.testing.assert_allclose(
            values[prefix], brute_force_value(TINY, prefix, policy), rtol=1e-9
        )


def test_automaton_values_of_a_position_dependent_policy_match_the_prefix_tree():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(TINY.vocab_size), size=(TINY.num_states, TINY.length))
    values = np.asarray(automaton_values(TINY, probs))
    tree = prefix_tree_values(TINY, lambda p: probs[naive_match(TINY, p), len(p)])
    for prefix, value in tree.items():
        np.testing.assert_allclose(values[naive_match(TINY, prefix), len(prefix)], value, rtol=1e-5)


def test_trace_and_prefix_values_by_hand():
    # y* = (1, 0, 1), L = 5, EOS = 3.
    tokens = jnp.array([[1, 0, 1, 1, 0], [0, 1, 3, 1, 1], [1, 1, 0, 2, 3]])
    run = trace(TINY, tokens)
    np.testing.assert_array_equal(
        run.states, [[0, 1, 2, 3, 3, 3], [0, 0, 1, 1, 1, 1], [0, 1, 1, 2, 0, 0]]
    )
    np.testing.assert_array_equal(run.step_mask, [[1] * 5, [1, 1, 1, 0, 0], [1] * 5])
    np.testing.assert_array_equal(run.outcome, [1, 0, 0])
    values = automaton_values(TINY, gamma_prover_probs(TINY, 2.0))
    got = np.asarray(prefix_values(TINY, values, run))
    w = np.asarray(values)
    np.testing.assert_allclose(got[0], [w[0, 0], w[1, 1], w[2, 2], 1, 1, 1], rtol=1e-6)
    # Row 1: the EOS at step 3 ends the response unmatched: value 0, then masked.
    np.testing.assert_allclose(got[1], [w[0, 0], w[0, 1], w[1, 2], 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(got[2], [w[0, 0], w[1, 1], w[1, 2], w[2, 3], w[0, 4], 0])


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match="differ from eos"):
        PlantedTask(length=5, vocab_size=4, eos=3, planted=(1, 3))
    with pytest.raises(ValueError, match="planted must hold 1 to length"):
        PlantedTask(length=2, vocab_size=4, eos=3, planted=(1, 0, 1))
    with pytest.raises(ValueError, match="gamma must be > 0"):
        gamma_prover_probs(TINY, 0.0)
    with pytest.raises(ValueError, match="use a smaller task"):
        prefix_tree_values(PlantedTask(), lambda p: np.ones(15) / 15)
