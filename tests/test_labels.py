import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm import labels


def test_math_shepherd_hard_and_soft_labels():
    correct = jnp.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=bool)
    # Hard: any correct completion. Soft: 1/4, 0/4, 3/4.
    np.testing.assert_array_equal(labels.hard_estimation_labels(correct), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(labels.soft_estimation_labels(correct), [0.25, 0.0, 0.75])


def test_math_shepherd_labels_with_ragged_completions():
    correct = jnp.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=bool)
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    # Row 0: 2 of 3 real completions; row 1: the correct ones are padding; row 2: none -> 0.
    np.testing.assert_array_equal(labels.hard_estimation_labels(correct, mask), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(
        labels.soft_estimation_labels(correct, mask), [2 / 3, 0.0, 0.0], atol=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(correct=hnp.arrays(bool, (4, 8)), mask=hnp.arrays(bool, (4, 8)))
def test_hard_label_is_soft_label_above_zero(correct, mask):
    hard = _jit_hard(correct, mask)
    soft = _jit_soft(correct, mask)
    np.testing.assert_array_equal(hard, (soft > 0).astype(np.float32))
    assert ((soft >= 0) & (soft <= hard)).all()


_jit_hard = jax.jit(labels.hard_estimation_labels)
_jit_soft = jax.jit(labels.soft_estimation_labels)


def test_rest_mcts_correct_path_gains_a_quarter_per_step():
    # A correct path 4 steps from the answer: w = 1/4, 0.75/3, 0.5/2, 0.25/1 = 0.25 each.
    values, weights = labels.rest_mcts_value_targets(
        jnp.zeros(4), jnp.array([3.0, 2.0, 1.0, 0.0]), jnp.ones(4)
    )
    np.testing.assert_allclose(values, [0.25, 0.5, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.25, 0.25], atol=1e-6)


def test_rest_mcts_wrong_branch_falls_and_clips_at_zero():
    # Step 1 correct, m = 2: w = 1/3, v = 1/3. Steps 2–3 wrong, inheriting m = 2:
    # w = −(2/3)/3 = −2/9, v = 1/9; w = −(8/9)/3 = −8/27, v = max(1/9 − 8/27, 0) = 0.
    # Step 4 is padding with garbage inputs.
    values, weights = labels.rest_mcts_value_targets(
        jnp.array([[0.0, 1.0, 1.0, 7.0]]),
        jnp.array([[2.0, 2.0, 2.0, -5.0]]),
        jnp.array([[1, 1, 1, 0]]),
    )
    np.testing.assert_allclose(values, [[1 / 3, 1 / 9, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(weights, [[1 / 3, -2 / 9, -8 / 27, 0.0]], atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    errors=hnp.arrays(np.float32, (3, 6), elements=st.floats(0, 1, width=32)),
    distances=hnp.arrays(np.int32, (3, 6), elements=st.integers(0, 10)),
)
def test_rest_mcts_values_stay_in_unit_interval(errors, distances):
    # The paper's Theorem 1: r_k ∈ [0, 1] and m_k ≥ 0 keep every v_k in [0, 1].
    values, _ = _jit_rest_mcts(errors, distances, jnp.ones((3, 6)))
    assert ((values >= 0) & (values <= 1 + 1e-6)).all()


_jit_rest_mcts = jax.jit(labels.rest_mcts_value_targets)


def test_rest_mcts_jit_and_vmap_match_eager():
    errors = (jax.random.uniform(jax.random.key(0), (3, 5)) > 0.6).astype(jnp.float32)
    distances = jnp.array([[4, 3, 2, 1, 0], [2, 2, 2, 2, 2], [1, 0, 0, 0, 0]])
    step_mask = jnp.arange(5) < jnp.array([5, 3, 1])[:, None]
    eager = labels.rest_mcts_value_targets(errors, distances, step_mask)
    jitted = _jit_rest_mcts(errors, distances, step_mask)
    mapped = jax.vmap(labels.rest_mcts_value_targets)(errors, distances, step_mask)
    for got in (jitted, mapped):
        np.testing.assert_allclose(got[0], eager[0], atol=1e-6)
        np.testing.assert_allclose(got[1], eager[1], atol=1e-6)


def test_omegaprm_rollout_value():
    mc = jnp.array([1.0, 0.5, 0.0])
    length = jnp.array([0.0, 500.0, 1000.0])
    # α^(1−MC)·β^(len/L), α = 0.5, β = 0.9, L = 500:
    # 0.5^0·0.9^0 = 1; 0.5^0.5·0.9^1 = 0.707107·0.9 = 0.636396; 0.5^1·0.9^2 = 0.405.
    np.testing.assert_allclose(
        labels.omegaprm_rollout_value(mc, length), [1.0, 0.636396, 0.405], atol=1e-6
    )


def test_omegaprm_exploration_bonus():
    # c_puct·sqrt(ΣN)/(1 + N) = 0.125·4/1 = 0.5 and 0.125·4/4 = 0.125.
    np.testing.assert_allclose(
        labels.omegaprm_exploration_bonus(jnp.array([0.0, 3.0]), 16.0), [0.5, 0.125]
    )


def test_omegaprm_selection_by_hand():
    # Pool: MC [0.75, 0.25, 0.75], lengths [400, 100, 100], N [0, 0, 2], ΣN = 4 (two states).
    # Q: 0.5^0.25·0.9^0.8 = 0.840896·0.919166 = 0.772923
    #    0.5^0.75·0.9^0.2 = 0.594604·0.979148 = 0.582205
    #    0.5^0.25·0.9^0.2 = 0.840896·0.979148 = 0.823362
    # U: 0.125·2/1 = 0.25, 0.25, 0.125·2/3 = 0.083333 -> Q + U = 1.022923, 0.832205, 0.906695.
    scores = labels.omegaprm_rollout_value(
        jnp.array([0.75, 0.25, 0.75]), jnp.array([400.0, 100.0, 100.0])
    ) + labels.omegaprm_exploration_bonus(jnp.array([0.0, 0.0, 2.0]), 4.0)
    np.testing.assert_allclose(scores, [1.022923, 0.832205, 0.906695], atol=1e-5)
    assert int(jnp.argmax(scores)) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"beta": 1.5}, "beta"),
        ({"length_scale": 0.0}, "length_scale"),
        ({"alpha": math.nan}, "alpha"),
    ],
)
def test_omegaprm_rollout_value_rejects_bad_constants(kwargs, message):
    with pytest.raises(ValueError, match=message):
        labels.omegaprm_rollout_value(jnp.array([0.5]), jnp.array([10.0]), **kwargs)


def test_omegaprm_exploration_bonus_rejects_negative_c_puct():
    with pytest.raises(ValueError, match="c_puct"):
        labels.omegaprm_exploration_bonus(jnp.array([0.0]), 1.0, c_puct=-0.1)


def test_locate_first_error_paper_example():
    # OmegaPRM Fig. 2b: rollouts at the midpoints 4 (MC 0.25), 6 (MC 0.5), 7 (MC 0) place the
    # first error at step 7 after three divide-and-rollouts.
    table = {4: 0.25, 6: 0.5, 7: 0.0}
    result = labels.locate_first_error(8, table.__getitem__)
    assert result.first_error == 7
    assert result.estimates == ((4, 0.25), (6, 0.5), (7, 0.0))


def test_locate_first_error_single_step_needs_no_rollout():
    def never_called(t):
        raise AssertionError(f"unexpected rollout at {t}")

    result = labels.locate_first_error(1, never_called)
    assert result.first_error == 1 and result.estimates == ()


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_steps=st.integers(1, 300))
def test_locate_first_error_matches_linear_scan_in_log_calls(data, num_steps):
    first_error = data.draw(st.integers(1, num_steps))
    mc_values = [
        data.draw(st.floats(0.01, 1.0)) if t < first_error else 0.0 for t in range(num_steps)
    ]
    calls = []

    def mc_estimate(t):
        calls.append(t)
        return mc_values[t]

    result = labels.locate_first_error(num_steps, mc_estimate)
    linear_scan = next((t for t in range(1, num_steps) if mc_values[t] == 0.0), num_steps)
    assert result.first_error == linear_scan == first_error
    assert len(calls) <= math.ceil(math.log2(num_steps))
    assert len(set(calls)) == len(calls) and all(1 <= t < num_steps for t in calls)
    assert [t for t, _ in result.estimates] == calls


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_locate_first_error_rejects_bad_estimates(bad):
    with pytest.raises(ValueError, match=r"mc_estimate\(2\)"):
        labels.locate_first_error(4, lambda t: bad)


@pytest.mark.parametrize("num_steps", [0, -3, 2.0, True])
def test_locate_first_error_rejects_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        labels.locate_first_error(num_steps, lambda t: 0.5)


def test_bisections_in_lockstep_match_one_search_each():
    # Three solutions whose true first errors are 3 (of 8), 1 (of 5) and 6 (of 6); MC > 0 exactly
    # before the first error. Advancing all searches one probe per round gives each the
    # callback search's probes and result, in max ⌈log2 M⌉ = 3 rounds.
    cases = [(8, 3), (5, 1), (6, 6)]
    searches = [labels.FirstErrorBisection(m) for m, _ in cases]
    rounds = 0
    while live := [i for i, s in enumerate(searches) if not s.done]:
        rounds += 1
        for i in live:
            t = searches[i].probe()
            searches[i].record(0.5 if t < cases[i][1] else 0.0)
    assert rounds == 3
    for search, (m, error) in zip(searches, cases):
        alone = labels.locate_first_error(m, lambda t, e=error: 0.5 if t < e else 0.0)
        assert search.result() == alone and alone.first_error == error
    # Probes by hand for M = 8, error 3: 4 (MC 0), 2 (MC > 0), 3 (MC 0).
    assert [t for t, _ in searches[0].result().estimates] == [4, 2, 3]
    with pytest.raises(ValueError, match="done"):
        searches[0].probe()
    with pytest.raises(ValueError, match="not done"):
        labels.FirstErrorBisection(4).result()
