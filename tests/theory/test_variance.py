"""Tests of prm/theory/variance.py: closed forms by hand and by exact enumeration, Monte Carlo
against the closed forms.

Monte Carlo tolerance. `monte_carlo` reports batch-means standard errors over 50 batches, so
(estimate − truth) / stderr follows a Student t with 49 degrees of freedom. A 5-stderr band is
exceeded with probability < 1e-5 per comparison (< 1e-3 over a test's ~100 comparisons); the
seeds are fixed, so a passing test stays passing. Each test also bounds the relative standard
error, so the band is narrow enough to tell the predicted value from the alternatives (for
instance T from (T + 1) / 2).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.theory import (
    SyntheticProcess,
    advantage_variance_ratio,
    full_advantage_variance,
    monte_carlo,
    predict,
    signal_variances,
    step_variances,
    truncated_advantage_variance,
)

Z = 5.0
K = 5
NUM_GROUPS = 50_000


def assert_within(estimate, stderr, expected, max_relative_stderr=0.02):
    estimate, stderr, expected = (np.asarray(x, np.float64) for x in (estimate, stderr, expected))
    np.testing.assert_array_less(np.abs(estimate - expected), Z * stderr + 1e-12)
    np.testing.assert_array_less(stderr, max_relative_stderr * np.abs(expected) + 1e-12)


def two_action_process(gaps, noise_std, logits=None, prefix_coupling=0.0):
    """q_t = [0, gap_t]; with uniform logits Var_π(q_t) = gap_t² / 4."""
    gaps = jnp.asarray(gaps, jnp.float32)
    values = jnp.stack([jnp.zeros_like(gaps), gaps], -1)
    return SyntheticProcess(
        logits=jnp.zeros_like(values) if logits is None else jnp.asarray(logits, jnp.float32),
        values=values,
        noise_std=jnp.asarray(noise_std, jnp.float32),
        prefix_coupling=prefix_coupling,
    )


# Homogeneous: gap 2, σ = 1, so v_t = 2²/4 + 1 = 2 at every step.
def homogeneous(num_steps, prefix_coupling=0.0):
    return two_action_process([2.0] * num_steps, [1.0] * num_steps, prefix_coupling=prefix_coupling)


# Heterogeneous: v_t = gap²/4 + σ² = [1 + 1, 0 + 0.25, 4 + 1, 1 + 4] = [2, 0.25, 5, 5], Σ = 12.25.
HETEROGENEOUS_V = np.array([2.0, 0.25, 5.0, 5.0])
HETEROGENEOUS = two_action_process([2.0, 0.0, 4.0, 2.0], [1.0, 0.5, 1.0, 2.0])

# Non-uniform policy for the gradient checks: logits (0, 1) and (1, −0.5) at two steps.
SKEWED = two_action_process([1.5, -1.0], [0.5, 1.0], logits=[[0.0, 1.0], [1.0, -0.5]])


PROCESSES = {
    "homogeneous": homogeneous,
    "heterogeneous": lambda: HETEROGENEOUS,
    "skewed": lambda: SKEWED,
}


@functools.cache
def simulate(name, *args, group_size=K):
    """(process, Monte Carlo result), shared by the tests that look at the same run."""
    process = PROCESSES[name](*args)
    return process, monte_carlo(process, group_size, NUM_GROUPS, seed=0)


# ---------------------------------------------------------------------------------------------
# Closed forms of the theorem.


def test_closed_forms_by_hand():
    # (1 − 1/4)·[2, 1] = [1.5, 0.75]
    np.testing.assert_allclose(truncated_advantage_variance(jnp.array([2.0, 1.0]), 4), [1.5, 0.75])
    v = jnp.array([1.0, 2.0, 3.0])
    # (1 − 1/2)·(1 + 2 + 3) = 3 at every step; reward-to-go 0.5·[6, 5, 3].
    np.testing.assert_allclose(full_advantage_variance(v, 2), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(full_advantage_variance(v, 2, reward_to_go=True), [3.0, 2.5, 1.5])
    # 6 / [1, 2, 3]; reward-to-go [6/1, 5/2, 3/3].
    np.testing.assert_allclose(advantage_variance_ratio(v), [6.0, 3.0, 2.0])
    np.testing.assert_allclose(advantage_variance_ratio(v, reward_to_go=True), [6.0, 2.5, 1.0])


@pytest.mark.parametrize("num_steps", [2, 4, 8])
def test_equal_step_variances_give_factor_t(num_steps):
    v = jnp.full((num_steps,), 0.7)
    np.testing.assert_allclose(advantage_variance_ratio(v), num_steps, rtol=1e-6)
    np.testing.assert_allclose(
        advantage_variance_ratio(v, reward_to_go=True), np.arange(num_steps, 0, -1), rtol=1e-6
    )


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(0.01, 10.0), min_size=1, max_size=4),
    st.integers(2, 16),
)
def test_ratio_properties(variances, group_size):
    v = jnp.asarray(variances, jnp.float32)
    ratio = advantage_variance_ratio(v)
    to_go = advantage_variance_ratio(v, reward_to_go=True)
    # Ratio = full / truncated, whatever k; reward-to-go never exceeds the total-return ratio
    # and is exactly 1 at the last step.
    np.testing.assert_allclose(
        ratio,
        full_advantage_variance(v, group_size) / truncated_advantage_variance(v, group_size),
        rtol=1e-5,
    )
    assert np.all(np.asarray(to_go) <= np.asarray(ratio) * (1 + 1e-6))
    np.testing.assert_allclose(to_go[-1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(ratio * v, jnp.broadcast_to(jnp.sum(v), v.shape), rtol=1e-5)


def test_ratio_is_batched_and_jit_safe():
    v = jnp.array([[1.0, 2.0, 0.5], [3.0, 3.0, 3.0]])
    loop = jnp.stack([advantage_variance_ratio(row, reward_to_go=True) for row in v])
    np.testing.assert_allclose(advantage_variance_ratio(v, reward_to_go=True), loop, rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(advantage_variance_ratio, static_argnums=1)(v, True), loop, rtol=1e-6
    )


def test_zero_variance_step_gives_infinite_ratio():
    # Step 2 has no variance: its truncated advantage is identically 0, the ratio is +inf.
    ratio = advantage_variance_ratio(jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(ratio, [1.0, np.inf])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        truncated_advantage_variance(jnp.ones(3), 1)
    with pytest.raises(ValueError, match="trailing step axis"):
        advantage_variance_ratio(jnp.float32(1.0))
    with pytest.raises(ValueError, match="multiple of num_batches"):
        monte_carlo(homogeneous(2), K, 1001, 0)
    with pytest.raises(ValueError, match="at least 2 actions"):
        predict(SyntheticProcess(jnp.zeros((2, 1)), jnp.zeros((2, 1)), jnp.ones(2)), K)
    with pytest.raises(AssertionError):
        predict(SyntheticProcess(jnp.zeros((2, 3)), jnp.zeros((2, 2)), jnp.ones(2)), K)


# ---------------------------------------------------------------------------------------------
# Exact statistics of the synthetic process.


def test_step_variances_by_hand():
    # Uniform over two actions, gap g: Var = g²/4; plus σ².
    np.testing.assert_allclose(signal_variances(HETEROGENEOUS), [1.0, 0.0, 4.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(step_variances(HETEROGENEOUS), HETEROGENEOUS_V, rtol=1e-6)


def enumerate_statistics(process, group_size):
    """Exact statistics by summing over every joint action of a group (noise-free process)."""
    logits, values = np.asarray(process.logits, np.float64), np.asarray(process.values, np.float64)
    c = float(process.prefix_coupling)
    policy = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    num_steps, num_actions = values.shape
    trajectories = list(itertools.product(range(num_actions), repeat=num_steps))

    def rewards(actions, previous):
        return values[np.arange(num_steps), actions] + c * np.concatenate(
            [[0.0], values[np.arange(num_steps - 1), previous]]
        )

    moments = {}  # name -> (probability-weighted) sums at each step
    for group in itertools.product(trajectories, repeat=group_size):
        actions = np.array(group)  # [k, T]
        prob = np.prod(policy[np.arange(num_steps), actions])
        step_rewards = np.stack([rewards(a, a[:-1]) for a in actions])
        # Truncated: siblings at step t are this group's actions at t; the shared prefix is
        # the first trajectory (its coupling term is the same constant for every sibling).
        sibling_rewards = np.stack([rewards(a, actions[0, :-1]) for a in actions])
        returns = {
            "truncated": sibling_rewards,
            "full": np.repeat(step_rewards.sum(-1, keepdims=True), num_steps, -1),
            "full_reward_to_go": np.cumsum(step_rewards[:, ::-1], -1)[:, ::-1],
        }
        delta = values[np.arange(num_steps), actions] - (policy * values).sum(-1)
        score = np.eye(num_actions)[actions] - policy  # [k, T, m]
        for name, ret in returns.items():
            advantage = ret - ret.mean(0)
            gradient = (score * advantage[..., None]).mean(0)
            for stat, value in {
                "a2": (advantage**2).mean(0),
                "ad": (advantage * delta).mean(0),
                "d": delta.mean(0),
                "d2": (delta**2).mean(0),
                "g": gradient,
                "g2": (gradient**2).sum(-1),
            }.items():
                moments[name, stat] = moments.get((name, stat), 0.0) + prob * value

    def scheme(name):
        m = {stat: moments[name, stat] for stat in ("a2", "ad", "d", "d2", "g", "g2")}
        return (
            m["a2"],
            m["g2"] - (m["g"] ** 2).sum(-1),
            m["g"],
            m["ad"] ** 2 / (m["a2"] * (m["d2"] - m["d"] ** 2)),
        )

    return {name: scheme(name) for name in ("truncated", "full", "full_reward_to_go")}


@pytest.mark.parametrize("prefix_coupling", [0.0, 0.6])
def test_predict_matches_exact_enumeration(prefix_coupling):
    # 2 steps × 2 actions, k = 3: 4³ = 64 joint groups, summed exactly (σ = 0).
    process = SyntheticProcess(
        logits=jnp.array([[0.3, -0.4], [1.0, 0.2]]),
        values=jnp.array([[1.0, -0.5], [0.2, 2.0]]),
        noise_std=jnp.zeros(2),
        prefix_coupling=prefix_coupling,
    )
    exact = enumerate_statistics(process, 3)
    prediction = predict(process, 3)
    for name, expected in exact.items():
        scheme = getattr(prediction, name)
        for field, value in zip(scheme._fields, expected):
            np.testing.assert_allclose(getattr(scheme, field), value, rtol=1e-4, atol=1e-6)


def expected_return(logits, values, prefix_coupling):
    """E[R] = Σ_t E[q_t] + c·Σ_{t<T} E[q_t]: each q_t[a_t] also enters r_{t+1}."""
    step_means = jnp.sum(jax.nn.softmax(logits, -1) * values, -1)
    return jnp.sum(step_means) + prefix_coupling * jnp.sum(step_means[:-1])


@pytest.mark.parametrize("prefix_coupling", [0.0, 0.6])
def test_predicted_mean_gradients(prefix_coupling):
    process = SKEWED._replace(prefix_coupling=prefix_coupling)
    prediction = predict(process, K)
    true_gradient = jax.grad(expected_return)(process.logits, process.values, prefix_coupling)
    # The k-sample mean baseline includes the sample itself: E[ĝ] = (1 − 1/k)·∇θ E[R].
    np.testing.assert_allclose(
        prediction.full.gradient_mean, (1 - 1 / K) * true_gradient, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        prediction.full_reward_to_go.gradient_mean, prediction.full.gradient_mean, rtol=1e-6
    )
    # Truncated: only r_t is credited, so the step-t gradient misses c·∇E[q_t] of r_{t+1}.
    step_gradient = jax.grad(expected_return)(process.logits, process.values, 0.0)
    np.testing.assert_allclose(
        prediction.truncated.gradient_mean, (1 - 1 / K) * step_gradient, rtol=1e-5, atol=1e-7
    )


def test_pure_noise_gradient_variance_by_hand():
    # q constant: ĝ = (1/k) Σ_j s_j Â_j with s ⟂ Â, so tr Cov = (1 − 1/k)·(1 − ‖π‖²)·B / k.
    # Uniform 2 actions: 1 − ‖π‖² = 1/2; k = 2, σ = 1, T = 2: truncated B = 1 → 0.5·0.5·1/2 =
    # 0.125; full B = 2 → 0.25.
    process = two_action_process([0.0, 0.0], [1.0, 1.0])
    prediction = predict(process, 2)
    np.testing.assert_allclose(prediction.truncated.gradient_variance, [0.125, 0.125], rtol=1e-6)
    np.testing.assert_allclose(prediction.full.gradient_variance, [0.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(prediction.full.signal_to_noise, [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Monte Carlo against the closed forms.


@pytest.mark.parametrize("num_steps", [2, 4, 8])
def test_monte_carlo_ratio_is_t_for_equal_variances(num_steps):
    _, result = simulate("homogeneous", num_steps)
    total = result.ratio(
        lambda s: s.full.advantage_variance, lambda s: s.truncated.advantage_variance
    )
    to_go = result.ratio(
        lambda s: s.full_reward_to_go.advantage_variance, lambda s: s.truncated.advantage_variance
    )
    assert_within(total.value, total.stderr, np.full(num_steps, num_steps))
    assert_within(to_go.value, to_go.stderr, np.arange(num_steps, 0, -1))


def test_monte_carlo_heterogeneous_ratio_exceeds_t():
    _, result = simulate("heterogeneous")
    total = result.ratio(
        lambda s: s.full.advantage_variance, lambda s: s.truncated.advantage_variance
    )
    to_go = result.ratio(
        lambda s: s.full_reward_to_go.advantage_variance, lambda s: s.truncated.advantage_variance
    )
    # 12.25 / [2, 0.25, 5, 5] = [6.125, 49, 2.45, 2.45]; suffix sums [12.25, 10.25, 10, 5] / v.
    assert_within(total.value, total.stderr, [6.125, 49.0, 2.45, 2.45])
    assert_within(to_go.value, to_go.stderr, [6.125, 41.0, 2.0, 1.0])
    assert total.value[1] > 10 * 4  # far above T = 4 at the low-variance step


@pytest.mark.parametrize("group_size", [2, K])
def test_monte_carlo_one_minus_one_over_k(group_size):
    _, result = simulate("heterogeneous", group_size=group_size)
    check = result.get(lambda s: s.truncated.advantage_variance)
    assert_within(check.value, check.stderr, (1 - 1 / group_size) * HETEROGENEOUS_V)


def test_monte_carlo_mean_gradients_agree():
    process, result = simulate("skewed")
    for scheme in ("full", "full_reward_to_go"):
        gap = result.difference(
            lambda s, scheme=scheme: getattr(s, scheme).gradient_mean,
            lambda s: s.truncated.gradient_mean,
        )
        np.testing.assert_array_less(np.abs(gap.value), Z * gap.stderr)
    true_gradient = jax.grad(expected_return)(process.logits, process.values, 0.0)
    mean = result.get(lambda s: s.truncated.gradient_mean)
    assert_within(mean.value, mean.stderr, (1 - 1 / K) * true_gradient, max_relative_stderr=0.05)


def test_monte_carlo_matches_predict_field_by_field():
    for name in ("skewed", "heterogeneous"):
        process, result = simulate(name)
        prediction = predict(process, K)
        for scheme in ("truncated", "full", "full_reward_to_go"):
            expected, value, stderr = (
                getattr(x, scheme) for x in (prediction, result.value, result.stderr)
            )
            for field in ("advantage_variance", "gradient_variance", "signal_to_noise"):
                informative = np.asarray(getattr(expected, field)) > 0
                assert_within(
                    getattr(value, field)[informative],
                    getattr(stderr, field)[informative],
                    np.asarray(getattr(expected, field))[informative],
                    max_relative_stderr=0.05,
                )
            # Step 2 of the heterogeneous process has no signal: corr² is reported as 0.
            if name == "heterogeneous":
                assert value.signal_to_noise[1] == 0.0
                assert value.normalised_signal_to_noise[1] == 0.0


def test_normalised_signal_to_noise_favours_truncated():
    _, result = simulate("homogeneous", 4)
    snr = result.ratio(
        lambda s: s.truncated.normalised_signal_to_noise,
        lambda s: s.full.normalised_signal_to_noise,
    )
    # Std-normalisation changes corr² but keeps the truncated advantage far more informative.
    assert np.all(snr.value - Z * snr.stderr > 2.0)
    norm = result.get(lambda s: s.truncated.normalised_signal_to_noise)
    assert np.all(norm.value > 0) and np.all(norm.value < 1)


def test_prefix_dependence_increases_only_full_variance():
    _, independent = simulate("homogeneous", 4)
    process, coupled = simulate("homogeneous", 4, 1.0)
    # Same seed: the coupling adds one constant per sibling group, which centring removes.
    np.testing.assert_allclose(
        coupled.value.truncated.advantage_variance,
        independent.value.truncated.advantage_variance,
        rtol=1e-5,
    )
    increase = coupled.value.full.advantage_variance - independent.value.full.advantage_variance
    stderr = np.hypot(
        coupled.stderr.full.advantage_variance, independent.stderr.full.advantage_variance
    )
    assert np.all(increase > 10 * stderr)
    # c = 1: Var(R) = Σ_t (1 + [t < T])²·u_t + Σσ² = (4·3 + 1)·1 + 4 = 17 (u_t = 1, σ = 1),
    # against 4·2 = 8 without coupling.
    full = coupled.get(lambda s: s.full.advantage_variance)
    assert_within(full.value, full.stderr, (1 - 1 / K) * np.full(4, 17.0))
    prediction = predict(process, K)
    np.testing.assert_allclose(prediction.full.advantage_variance, (1 - 1 / K) * 17.0, rtol=1e-6)


def test_monte_carlo_is_seeded():
    process, first = simulate("homogeneous", 2)
    again = monte_carlo(process, K, NUM_GROUPS, seed=0)
    other = monte_carlo(process, K, NUM_GROUPS, seed=1)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.allclose(first.value.full.advantage_variance, other.value.full.advantage_variance)
