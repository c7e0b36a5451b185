import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.rewards import progress


def test_best_of_k_values():
    # 1 − (1 − Q)^4: Q = 0.1 -> 1 − 0.6561 = 0.3439; Q = 0.5 -> 1 − 0.0625 = 0.9375.
    values = jnp.array([0.0, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(
        progress.best_of_k_values(values, 4), [0.0, 0.3439, 0.9375, 1.0], atol=1e-6
    )
    # K = 2, Q = 0.3: 1 − 0.49 = 0.51. K = 1 is the identity.
    np.testing.assert_allclose(progress.best_of_k_values(jnp.array(0.3), 2), 0.51, atol=1e-6)
    np.testing.assert_allclose(progress.best_of_k_values(values, 1), values, atol=1e-6)


@pytest.mark.parametrize("k", [0, -2, 1.5, True, "4"])
def test_best_of_k_rejects_non_positive_integer_k(k):
    with pytest.raises(ValueError, match="k must be an integer"):
        progress.best_of_k_values(jnp.array([0.5]), k)


def test_prover_advantages_are_differences_of_consecutive_prefixes():
    # Row 0: V(x) = 0.2, Q after steps 1..3 = 0.5, 0.4, 0.9 -> A = [0.3, −0.1, 0.5].
    # Row 1: one step; the values after it are padding (NaN) and must not leak.
    values = jnp.array([[0.2, 0.5, 0.4, 0.9], [0.1, 0.3, jnp.nan, jnp.nan]])
    step_mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(
        progress.prover_advantages(values, step_mask),
        [[0.3, -0.1, 0.5], [0.2, 0.0, 0.0]],
        atol=1e-6,
    )


def test_best_of_four_prover_effective_rewards_by_hand():
    # Q^π of the prefixes (problem, step 1, step 2) = 0.1, 0.2, 0.05. Bo4 prover values:
    # 1 − 0.9^4 = 0.3439, 1 − 0.8^4 = 0.5904, 1 − 0.95^4 = 0.18549375.
    # A^μ = [0.5904 − 0.3439, 0.18549375 − 0.5904] = [0.2465, −0.40490625].
    # Effective reward with Q^π of the steps [0.2, 0.05], α = 0.5:
    # [0.2 + 0.12325, 0.05 − 0.202453125] = [0.32325, −0.152453125].
    policy_prefix_values = jnp.array([0.1, 0.2, 0.05])
    step_mask = jnp.ones(2)
    advantages = progress.prover_advantages(
        progress.best_of_k_values(policy_prefix_values, 4), step_mask
    )
    np.testing.assert_allclose(advantages, [0.2465, -0.40490625], atol=1e-6)
    rewards = progress.effective_rewards(policy_prefix_values[1:], advantages, step_mask, 0.5)
    np.testing.assert_allclose(rewards, [0.32325, -0.152453125], atol=1e-6)


def test_effective_rewards_alpha_zero_is_outcome_only_and_masks():
    q = jnp.array([0.7, 0.4, jnp.nan])
    advantages = jnp.array([0.1, -0.3, jnp.inf])
    step_mask = jnp.array([1, 1, 0])
    np.testing.assert_allclose(
        progress.effective_rewards(q, advantages, step_mask, 0.0), [0.7, 0.4, 0.0]
    )
    # α = 2: [0.7 + 0.2, 0.4 − 0.6] = [0.9, −0.2].
    np.testing.assert_allclose(
        progress.effective_rewards(q, advantages, step_mask, 2.0), [0.9, -0.2, 0.0], atol=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(values=hnp.arrays(np.float32, (2, 6), elements=st.floats(0, 1, width=32)))
def test_advantages_telescope_to_total_progress(values):
    # Σ_h A^μ_h = Q^μ(final prefix) − V^μ(x) when every step is present.
    advantages = _jit_advantages(jnp.asarray(values), jnp.ones((2, 5)))
    np.testing.assert_allclose(advantages.sum(-1), values[:, -1] - values[:, 0], atol=1e-5)


_jit_advantages = jax.jit(progress.prover_advantages)


def test_jit_and_vmap_match_eager():
    values = jax.random.uniform(jax.random.key(1), (4, 6))
    q = jax.random.uniform(jax.random.key(2), (4, 5))
    step_mask = jnp.arange(5) < jnp.array([5, 3, 0, 1])[:, None]

    def rewards(values, q, step_mask):
        advantages = progress.prover_advantages(progress.best_of_k_values(values, 4), step_mask)
        return progress.effective_rewards(q, advantages, step_mask, 0.5)

    eager = rewards(values, q, step_mask)
    np.testing.assert_allclose(jax.jit(rewards)(values, q, step_mask), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(rewards)(values, q, step_mask), eager, atol=1e-6)
    assert (eager[~step_mask] == 0).all()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="one more value"):
        progress.prover_advantages(jnp.zeros((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(AssertionError):
        progress.prover_advantages(jnp.zeros((2, 4)), jnp.ones((3, 3)))
    with pytest.raises(AssertionError):
        progress.effective_rewards(jnp.zeros(3), jnp.zeros(2), jnp.ones(3), 1.0)
