import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from prm import advantages as eager
from prm.masked import masked_whiten

PROPERTY = settings(max_examples=25, deadline=None)
finite_rewards = st.floats(-10, 10, allow_nan=False, width=32)

# Tests call the compiled functions (one compile per shape instead of op-by-op dispatch, and
# the path trainers use); `eager.*` is used where trace-time errors or jit == eager are tested.
grpo_advantages = jax.jit(
    eager.grpo_advantages, static_argnames=("num_groups", "scale_by_std", "ddof", "eps")
)
rloo_advantages = jax.jit(eager.rloo_advantages, static_argnames=("num_groups",))
sibling_step_advantages = jax.jit(eager.sibling_step_advantages, static_argnames=("eps",))
generalized_advantage_estimation = jax.jit(eager.generalized_advantage_estimation)
discounted_returns = jax.jit(eager.discounted_returns)
prime_advantages = jax.jit(eager.prime_advantages, static_argnames=("baseline",))
broadcast_step_values_to_tokens = jax.jit(eager.broadcast_step_values_to_tokens)

# ---------------------------------------------------------------------------------------------
# Group advantages


def test_grpo_by_hand():
    # [1, 0, 1, 0]: mean 0.5; unbiased var = 4·0.25/3 = 1/3, std 0.57735 -> ±0.5/(0.57735+1e-6)
    a = grpo_advantages(jnp.array([[1.0, 0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(a, [[0.866024, -0.866024, 0.866024, -0.866024]], rtol=1e-5)
    # population std 0.5: ±0.5/(0.5+1e-6) = ±0.999998
    a = grpo_advantages(jnp.array([1.0, 0.0, 1.0, 0.0]), ddof=0)
    np.testing.assert_allclose(a, [0.999998, -0.999998, 0.999998, -0.999998], rtol=1e-6)
    # Dr. GRPO: no std, just r − mean
    a = grpo_advantages(jnp.array([1.0, 0.0, 1.0, 0.0]), scale_by_std=False)
    np.testing.assert_allclose(a, [0.5, -0.5, 0.5, -0.5])


def test_integer_and_bfloat16_rewards_are_promoted_to_float32():
    a = grpo_advantages(jnp.array([1, 0, 1, 0]), scale_by_std=False)
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, [0.5, -0.5, 0.5, -0.5])
    assert grpo_advantages(jnp.array([1.0, 0.0], jnp.bfloat16)).dtype == jnp.float32
    # G = (1 + 0.5·1.5, 1 + 0.5·1, 1)
    g = discounted_returns(jnp.ones(3, jnp.bfloat16), jnp.ones(3, bool), gamma=0.5)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, [1.75, 1.5, 1.0])


def test_all_equal_group_is_exactly_zero_in_float32():
    # 0.7 is not representable; a naive mean leaves ~1e-8 residues that /(std + 1e-6) inflates.
    rewards = jnp.full((3, 5), 0.7, jnp.float32)
    assert (grpo_advantages(rewards) == 0).all()
    assert (rloo_advantages(rewards) == 0).all()
    assert (sibling_step_advantages(rewards) == 0).all()
    ragged = grpo_advantages(
        jnp.full((5,), 0.7, jnp.float32), group_ids=jnp.array([0, 0, 1, 1, 1]), num_groups=2
    )
    assert (ragged == 0).all()


def test_masked_member_is_excluded_and_gets_zero():
    # valid 3, 1, 5: mean 3, unbiased var (0+4+4)/2 = 4, std 2 -> (0, -1, 1)·2/(2+1e-6)
    expected = np.array([0.0, -1.0, 1.0, 0.0]) * 2.0 / (2.0 + 1e-6)
    rewards = jnp.array([3.0, 1.0, 5.0, 100.0])
    a = grpo_advantages(rewards, jnp.array([True, True, True, False]))
    np.testing.assert_allclose(a, expected, rtol=1e-6)


def test_non_finite_reward_is_treated_as_missing():
    expected = np.array([0.0, -1.0, 1.0, 0.0]) * 2.0 / (2.0 + 1e-6)
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        a = grpo_advantages(jnp.array([3.0, 1.0, 5.0, bad]))
        np.testing.assert_allclose(a, expected, rtol=1e-6)
        # RLOO of (3, 1, 5): 3 − 3 = 0, 1 − 4 = −3, 5 − 2 = 3
        np.testing.assert_allclose(rloo_advantages(jnp.array([3.0, 1.0, 5.0, bad])), [0, -3, 3, 0])


def test_groups_with_fewer_than_two_valid_members_get_zero():
    rewards = jnp.array([[4.0, 9.0], [2.0, 8.0]])
    mask = jnp.array([[True, False], [False, False]])
    for fn in (grpo_advantages, rloo_advantages):
        np.testing.assert_array_equal(fn(rewards, mask), np.zeros((2, 2)))
    ragged = rloo_advantages(
        jnp.array([5.0, 1.0, 2.0]), group_ids=jnp.array([0, 1, 1]), num_groups=3
    )
    # group 0 is a singleton, group 1 = (1, 2): ∓1, group 2 is empty
    np.testing.assert_allclose(ragged, [0.0, -1.0, 1.0])


def test_rloo_by_hand():
    # r_i − mean of the others: 1 − 11/3, 2 − 10/3, 3 − 9/3, 6 − 6/3
    a = rloo_advantages(jnp.array([1.0, 2.0, 3.0, 6.0]))
    np.testing.assert_allclose(a, [-8 / 3, -4 / 3, 0.0, 4.0], rtol=1e-6)


@PROPERTY
@given(hnp.arrays(np.float32, (3, 4), elements=finite_rewards))
def test_rloo_is_rescaled_dr_grpo(rewards):
    # r_i − (S − r_i)/(k−1) = k/(k−1)·(r_i − S/k)
    dr_grpo = grpo_advantages(jnp.asarray(rewards), scale_by_std=False)
    np.testing.assert_allclose(rloo_advantages(jnp.asarray(rewards)), dr_grpo * 4 / 3, atol=1e-4)


@PROPERTY
@given(
    hnp.arrays(np.float32, (4, 5), elements=finite_rewards),
    hnp.arrays(np.bool_, (4, 5)),
)
def test_group_advantages_sum_to_zero_and_respect_the_mask(rewards, mask):
    for a in (
        grpo_advantages(jnp.asarray(rewards), jnp.asarray(mask)),
        grpo_advantages(jnp.asarray(rewards), jnp.asarray(mask), scale_by_std=False),
        rloo_advantages(jnp.asarray(rewards), jnp.asarray(mask)),
    ):
        a = np.asarray(a)
        assert np.isfinite(a).all()
        assert (a[~mask] == 0).all()
        np.testing.assert_allclose(a.sum(-1), 0.0, atol=1e-3)


@PROPERTY
@given(
    hnp.arrays(np.float32, (3, 4), elements=finite_rewards),
    hnp.arrays(np.bool_, (3, 4)),
    st.randoms(use_true_random=False),
)
def test_ragged_layout_matches_dense_in_any_order(rewards, mask, rnd):
    perm = np.arange(12)
    rnd.shuffle(perm)
    group_ids = np.repeat(np.arange(3), 4)[perm]
    flat_rewards, flat_mask = rewards.reshape(-1)[perm], mask.reshape(-1)[perm]
    for fn, kwargs in (
        (grpo_advantages, {}),
        (grpo_advantages, {"ddof": 0}),
        (rloo_advantages, {}),
    ):
        dense = np.asarray(fn(jnp.asarray(rewards), jnp.asarray(mask), **kwargs)).reshape(-1)
        ragged = fn(
            jnp.asarray(flat_rewards),
            jnp.asarray(flat_mask),
            group_ids=jnp.asarray(group_ids),
            num_groups=3,
            **kwargs,
        )
        np.testing.assert_allclose(ragged, dense[perm], rtol=1e-5, atol=1e-5)


def test_ragged_ids_out_of_range_get_zero():
    a = grpo_advantages(
        jnp.array([1.0, 3.0, 7.0, 9.0]), group_ids=jnp.array([0, 0, 2, -1]), num_groups=2
    )
    # group 0 = (1, 3): ±1/(sqrt(2)+1e-6); ids 2 and −1 are outside [0, 2)
    np.testing.assert_allclose(a, [-1 / (np.sqrt(2) + 1e-6), 1 / (np.sqrt(2) + 1e-6), 0, 0])


def test_group_advantages_jit_and_vmap():
    rewards = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5)), jnp.float32)
    expected = eager.grpo_advantages(rewards)
    np.testing.assert_allclose(grpo_advantages(rewards), expected, rtol=1e-6)
    vmapped = jax.jit(jax.vmap(eager.grpo_advantages))(rewards)
    np.testing.assert_allclose(vmapped, expected, rtol=1e-6)
    ids = jnp.array([0, 0, 1, 1, 1])
    np.testing.assert_allclose(
        rloo_advantages(rewards[0, 0], group_ids=ids, num_groups=2),
        eager.rloo_advantages(rewards[0, 0], group_ids=ids, num_groups=2),
        rtol=1e-6,
    )


def test_group_layout_errors():
    with pytest.raises(ValueError, match="at least 2 members"):
        eager.grpo_advantages(jnp.ones((4, 1)))
    with pytest.raises(ValueError, match="at least 2 members"):
        eager.rloo_advantages(jnp.ones((3, 0)))
    with pytest.raises(ValueError, match="num_groups"):
        eager.grpo_advantages(jnp.ones(4), group_ids=jnp.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="integers"):
        eager.grpo_advantages(jnp.ones(2), group_ids=jnp.array([0.0, 1.0]), num_groups=2)
    with pytest.raises(ValueError, match="only used with group_ids"):
        eager.grpo_advantages(jnp.ones((2, 3)), num_groups=2)
    with pytest.raises(AssertionError):
        eager.grpo_advantages(jnp.ones((2, 3)), jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="non-negative"):
        eager.grpo_advantages(jnp.ones((2, 3)), eps=-1.0)


def test_sibling_step_advantages_by_hand():
    # SLATE Eq. 5, k = 5 judge scores (2, 0, −1, 1, 2): mean 0.8, deviations (1.2, −0.8, −1.8,
    # 0.2, 1.2), squares sum 6.8, unbiased var 1.7, std 1.303840
    deviations = np.array([1.2, -0.8, -1.8, 0.2, 1.2])
    a = sibling_step_advantages(jnp.array([2.0, 0.0, -1.0, 1.0, 2.0]))
    np.testing.assert_allclose(a, deviations / (np.sqrt(1.7) + 1e-6), rtol=1e-5)


def test_sibling_step_advantages_with_missing_steps():
    # [questions=1, steps=2, k=3]; the trajectory answered at step 0, step 1 does not exist.
    rewards = jnp.array([[[1.0, -1.0, 0.0], [5.0, 5.0, 9.0]]])
    mask = jnp.array([[[True] * 3, [False] * 3]])
    a = sibling_step_advantages(rewards, mask)
    # step 0: mean 0, unbiased std 1 -> (1, −1, 0)/(1 + 1e-6)
    np.testing.assert_allclose(a[0, 0], np.array([1.0, -1.0, 0.0]) / (1 + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(a[0, 1], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Returns and GAE


def _reference_gae(rewards, values, mask, gamma, lam, bootstrap):
    """Textbook GAE loop on the compacted sequence (masked tokens cut out), scattered back."""
    advantages = np.zeros_like(rewards, dtype=np.float64)
    for row in np.ndindex(rewards.shape[:-1]):
        keep = np.flatnonzero(mask[row])
        r, v = rewards[row][keep], values[row][keep]
        next_value, running = bootstrap[row], 0.0
        out = np.zeros(len(keep))
        for t in reversed(range(len(keep))):
            running = r[t] + gamma * next_value - v[t] + gamma * lam * running
            out[t], next_value = running, v[t]
        advantages[row][keep] = out
    return advantages


def test_gae_by_hand():
    # γ = 0.9, λ = 0.8, r = (0, 0, 1), V = (0.5, 0.6, 0.7), terminal after t = 2:
    # δ2 = 1 − 0.7 = 0.3                     A2 = 0.3
    # δ1 = 0.9·0.7 − 0.6 = 0.03              A1 = 0.03 + 0.72·0.3 = 0.246
    # δ0 = 0.9·0.6 − 0.5 = 0.04              A0 = 0.04 + 0.72·0.246 = 0.21712
    rewards, values = jnp.array([0.0, 0.0, 1.0]), jnp.array([0.5, 0.6, 0.7])
    adv, ret = generalized_advantage_estimation(
        rewards, values, jnp.ones(3, bool), gamma=0.9, lam=0.8
    )
    np.testing.assert_allclose(adv, [0.21712, 0.246, 0.3], rtol=1e-5)
    np.testing.assert_allclose(ret, [0.71712, 0.846, 1.0], rtol=1e-5)


def test_gae_skips_observation_tokens():
    # Same trajectory with an observation token (reward 9, value 99, mask 0) inserted after
    # t = 0 and right padding: outputs equal the hand numbers above, 0 on masked tokens.
    rewards = jnp.array([0.0, 9.0, 0.0, 1.0, 4.0])
    values = jnp.array([0.5, 99.0, 0.6, 0.7, 3.0])
    mask = jnp.array([1, 0, 1, 1, 0])
    adv, ret = generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv, [0.21712, 0.0, 0.246, 0.3, 0.0], rtol=1e-5)
    np.testing.assert_allclose(ret, [0.71712, 0.0, 0.846, 1.0, 0.0], rtol=1e-5)


def test_gae_bootstrap_value():
    # γ = 0.5, λ = 1, r = (0, 1), V = (0.2, 0.4), V_after = 1:
    # δ1 = 1 + 0.5·1 − 0.4 = 1.1 = A1; δ0 = 0.5·0.4 − 0.2 = 0, A0 = 0.5·1.1 = 0.55
    # returns = A + V = (0.75, 1.5) = the bootstrapped discounted returns
    adv, ret = generalized_advantage_estimation(
        jnp.array([0.0, 1.0]),
        jnp.array([0.2, 0.4]),
        jnp.ones(2, bool),
        gamma=0.5,
        lam=1.0,
        bootstrap_value=jnp.array(1.0),
    )
    np.testing.assert_allclose(adv, [0.55, 1.1], rtol=1e-6)
    np.testing.assert_allclose(ret, [0.75, 1.5], rtol=1e-6)


@PROPERTY
@given(
    hnp.arrays(np.float32, (3, 6), elements=finite_rewards),
    hnp.arrays(np.float32, (3, 6), elements=finite_rewards),
    hnp.arrays(np.bool_, (3, 6)),
    hnp.arrays(np.float32, (3,), elements=finite_rewards),
    st.sampled_from([0.0, 0.5, 0.99, 1.0]),
    st.sampled_from([0.0, 0.95, 1.0]),
)
def test_gae_matches_compacted_reference(rewards, values, mask, bootstrap, gamma, lam):
    adv, ret = generalized_advantage_estimation(
        jnp.asarray(rewards),
        jnp.asarray(values),
        jnp.asarray(mask),
        gamma=gamma,
        lam=lam,
        bootstrap_value=jnp.asarray(bootstrap),
    )
    expected = _reference_gae(rewards, values, mask, gamma, lam, bootstrap)
    np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ret, np.where(mask, expected + values, 0.0), rtol=1e-4, atol=1e-3)


def test_gae_lambda_limits():
    rng = np.random.default_rng(2)
    rewards, values = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    mask = jnp.ones((2, 5), bool)
    # λ = 0: A_t = δ_t = r_t + γ V_{t+1} − V_t
    adv0, _ = generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=0.0)
    next_values = np.concatenate([values[:, 1:], np.zeros((2, 1))], axis=1)
    np.testing.assert_allclose(adv0, rewards + 0.9 * next_values - values, rtol=1e-5, atol=1e-6)
    # λ = 1: A_t = G_t − V_t
    adv1, _ = generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=1.0)
    returns = discounted_returns(rewards, mask, gamma=0.9)
    np.testing.assert_allclose(adv1, returns - values, rtol=1e-5, atol=1e-5)


def test_discounted_returns_by_hand():
    # γ = 0.5, r = (1, [2 masked], 3, 4): G3 = 4, G2 = 3 + 0.5·4 = 5, G0 = 1 + 0.5·5 = 3.5
    g = discounted_returns(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1, 0, 1, 1]), gamma=0.5)
    np.testing.assert_allclose(g, [3.5, 0.0, 5.0, 4.0])


def test_returns_jit_and_vmap_match():
    rng = np.random.default_rng(3)
    rewards = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
    mask = jnp.asarray(rng.random((4, 7)) < 0.7)

    def gae(r, v, m):
        return eager.generalized_advantage_estimation(r, v, m, gamma=0.97, lam=0.9)

    batched = gae(rewards, values, mask)
    for other in (jax.jit(gae)(rewards, values, mask), jax.vmap(gae)(rewards, values, mask)):
        np.testing.assert_allclose(other[0], batched[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other[1], batched[1], rtol=1e-5, atol=1e-6)


def test_gae_ignores_nan_under_the_mask():
    rewards = jnp.array([1.0, jnp.nan, 2.0])
    values = jnp.array([0.0, jnp.inf, 0.0])
    adv, ret = generalized_advantage_estimation(
        rewards, values, jnp.array([1, 0, 1]), gamma=1.0, lam=1.0
    )
    np.testing.assert_allclose(adv, [3.0, 0.0, 2.0])
    grad = jax.grad(
        lambda v: generalized_advantage_estimation(
            rewards, v, jnp.array([1, 0, 1]), gamma=1.0, lam=0.5
        )[0].sum()
    )(values)
    assert np.isfinite(np.asarray(grad)).all()


def test_returns_errors():
    with pytest.raises(ValueError, match="gamma"):
        eager.discounted_returns(jnp.ones(3), jnp.ones(3), gamma=1.5)
    with pytest.raises(ValueError, match="lam"):
        eager.generalized_advantage_estimation(
            jnp.ones(3), jnp.ones(3), jnp.ones(3), gamma=1, lam=-0.1
        )
    with pytest.raises(AssertionError):
        eager.generalized_advantage_estimation(
            jnp.ones(3), jnp.ones(4), jnp.ones(3), gamma=1, lam=1
        )
    with pytest.raises(AssertionError):
        eager.discounted_returns(
            jnp.ones((2, 3)), jnp.ones((2, 3)), gamma=1, bootstrap_value=jnp.ones(3)
        )


# ---------------------------------------------------------------------------------------------
# PRIME


def test_prime_tiny_by_hand():
    # K = 2, T = 2; row 1's second token is masked. Token means m0 = 1.5, m1 = 3.
    # outcome (1, 0) -> RLOO (+1, −1).
    process = jnp.array([[1.0, 2.0], [3.0, 7.0]])
    mask = jnp.array([[1, 1], [1, 0]])
    outcome = jnp.array([1.0, 0.0])
    # paper: r − mean of the others' m: row 0 (1−3, 2−3) = (−2, −1) -> returns (−3, −1);
    # row 1 (3 − 1.5) = 1.5 -> return 1.5. Plus outcome: (−2, 0), (0.5, 0).
    paper = prime_advantages(process, outcome, mask)
    np.testing.assert_allclose(paper, [[-2.0, 0.0], [0.5, 0.0]])
    # public code: 2·r − (m0 + m1)/1 = 2r − 4.5: row 0 (−2.5, −0.5) -> returns (−3, −0.5);
    # row 1: 1.5. Plus outcome: (−2, 0.5), (0.5, 0). Equal to the paper at t = 0.
    code = prime_advantages(process, outcome, mask, baseline="public_code")
    np.testing.assert_allclose(code, [[-2.0, 0.5], [0.5, 0.0]])


PRIME_Q = np.array(
    [
        [0.127, -0.749, 0.653, -0.124, -0.72],
        [0.134, 1.024, 0.935, 0.0, 0.0],
        [0.193, 0.126, -1.083, -0.379, 0.0],
        [-0.544, 0.055, 0.0, 0.0, 0.0],
    ]
)
PRIME_MASK = np.arange(5)[None, :] < np.array([5, 3, 4, 2])[:, None]


def _prime_batch_norm(q):
    """The public code's reward rescaling: q / (max |reverse cumsum| + 1e-6)."""
    reverse_cumsum = np.cumsum(q[:, ::-1], axis=1)[:, ::-1]
    return q / (np.abs(reverse_cumsum).max() + 1e-6)


def test_prime_matches_reference_vectors():
    # Test vectors of /work/shared/papers/implicit_prm_prime.md §4.4 (K = 4, L = 5, acc 1,0,1,0).
    rewards = _prime_batch_norm(PRIME_Q)
    np.testing.assert_allclose(
        rewards[0], [0.060678, -0.357859, 0.311992, -0.059245, -0.344004], atol=1e-6
    )
    np.testing.assert_allclose(rewards[3], [-0.259914, 0.026278, 0, 0, 0], atol=1e-6)
    mask = jnp.asarray(PRIME_MASK)
    acc = jnp.array([1.0, 0.0, 1.0, 0.0])
    code = prime_advantages(jnp.asarray(rewards, jnp.float32), acc, mask, baseline="public_code")
    expected_code = [
        [0.144915, 0.064777, 0.54269, 0.127467, 0.207228],
        [0.664365, 0.579768, -0.071798, 0.0, 0.0],
        [-0.064543, -0.186725, -0.266226, 0.42446, 0.0],
        [-0.979715, -0.632396, 0.0, 0.0, 0.0],
    ]
    np.testing.assert_allclose(code, expected_code, atol=3e-6)
    whitened = masked_whiten(code, mask, ddof=1)
    np.testing.assert_allclose(
        whitened[0], [0.227373, 0.054373, 1.086088, 0.189708, 0.361895], atol=5e-6
    )
    np.testing.assert_allclose(whitened[1, :3], [1.348759, 1.166132, -0.240464], atol=5e-6)
    np.testing.assert_allclose(
        whitened[2, :4], [-0.224802, -0.488569, -0.660194, 0.830854], atol=5e-6
    )
    np.testing.assert_allclose(whitened[3, :2], [-2.200471, -1.450681], atol=5e-6)
    paper = prime_advantages(jnp.asarray(rewards, jnp.float32), acc, mask)
    np.testing.assert_allclose(paper[:, 0], np.asarray(expected_code)[:, 0], atol=3e-6)
    np.testing.assert_allclose(paper[0], [0.144915, 0.110899, 0.495421, 0.210092, 0.296], atol=3e-6)


@PROPERTY
@given(
    hnp.arrays(np.float32, (2, 3, 4), elements=st.floats(-2, 2, width=32)),
    hnp.arrays(np.float32, (2, 3), elements=st.floats(0, 1, width=32)),
    hnp.arrays(np.bool_, (2, 3, 4)),
)
def test_prime_variants_agree_at_the_first_token_when_undiscounted(process, outcome, mask):
    mask[..., 0] = True  # the first response token always exists
    args = (jnp.asarray(process), jnp.asarray(outcome), jnp.asarray(mask))
    paper = np.asarray(prime_advantages(*args))
    code = np.asarray(prime_advantages(*args, baseline="public_code"))
    np.testing.assert_allclose(paper[..., 0], code[..., 0], atol=1e-4)
    assert (paper[~mask] == 0).all() and (code[~mask] == 0).all()


def test_prime_paper_form_by_brute_force():
    # Independent evaluation of Eq. 5 term by term with γ = 0.9.
    rng = np.random.default_rng(4)
    process = rng.normal(size=(3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], bool)
    outcome = np.array([1.0, 0.0, 0.5])
    means = np.array([process[j][mask[j]].mean() for j in range(3)])
    expected = np.zeros((3, 4))
    for i in range(3):
        baseline = np.mean([means[j] for j in range(3) if j != i])
        valid = np.flatnonzero(mask[i])
        for t in valid:
            expected[i, t] = sum(0.9 ** (s - t) * (process[i, s] - baseline) for s in valid[t:])
            expected[i, t] += outcome[i] - np.mean([outcome[j] for j in range(3) if j != i])
    got = prime_advantages(jnp.asarray(process), jnp.asarray(outcome), jnp.asarray(mask), gamma=0.9)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_prime_errors():
    with pytest.raises(ValueError, match="K >= 2"):
        eager.prime_advantages(jnp.ones((1, 3)), jnp.ones(1), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="baseline"):
        eager.prime_advantages(jnp.ones((2, 3)), jnp.ones(2), jnp.ones((2, 3)), baseline="verl")
    with pytest.raises(AssertionError):
        eager.prime_advantages(jnp.ones((2, 3)), jnp.ones(3), jnp.ones((2, 3)))


# ---------------------------------------------------------------------------------------------
# Step -> token broadcast


def test_broadcast_step_values_by_hand():
    step_values = jnp.array([[10.0, 20.0, 30.0], [1.0, 2.0, 3.0]])
    step_id = jnp.array([[-1, -1, 0, 0, -1, 1, 1, 2, -1], [0, 0, 5, 2, 2, -1, -1, -1, -1]])
    out = broadcast_step_values_to_tokens(step_values, step_id)
    np.testing.assert_array_equal(
        out, [[0, 0, 10, 10, 0, 20, 20, 30, 0], [1, 1, 0, 3, 3, 0, 0, 0, 0]]
    )


def test_broadcast_jit_vmap_and_grad():
    step_values = jnp.array([[0.5, -1.0], [2.0, 4.0]])
    step_id = jnp.array([[0, 1, 1, -1], [1, 1, 0, -1]])
    expected = eager.broadcast_step_values_to_tokens(step_values, step_id)
    np.testing.assert_array_equal(broadcast_step_values_to_tokens(step_values, step_id), expected)
    vmapped = jax.vmap(eager.broadcast_step_values_to_tokens)(step_values, step_id)
    np.testing.assert_array_equal(vmapped, expected)
    # d Σ out / d step_values = number of tokens of each step
    grad = jax.grad(lambda v: eager.broadcast_step_values_to_tokens(v, step_id).sum())(step_values)
    np.testing.assert_array_equal(grad, [[1, 2], [1, 2]])


def test_broadcast_errors_and_empty_steps():
    with pytest.raises(ValueError, match="integers"):
        eager.broadcast_step_values_to_tokens(jnp.ones((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(AssertionError):
        eager.broadcast_step_values_to_tokens(jnp.ones((2, 3)), jnp.zeros((3, 4), int))
    with pytest.raises(AssertionError):
        eager.broadcast_step_values_to_tokens(jnp.ones((2, 3)), jnp.zeros((4,), int))
    out = eager.broadcast_step_values_to_tokens(jnp.ones((2, 0)), jnp.zeros((2, 4), int))
    np.testing.assert_array_equal(out, np.zeros((2, 4)))
