import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prm.rewards import spa

# Row 0: prompt (−1 −1), step 0 (2 tokens), observation (−1), step 1 (3 tokens), padding.
# Row 1: prompt, one step of 1 token, padding. Row 2: all context (a row with no step).
STEP_ID = jnp.array(
    [
        [-1, -1, 0, 0, -1, 1, 1, 1, -1],
        [-1, 0, -1, -1, -1, -1, -1, -1, -1],
        [-1, -1, -1, -1, -1, -1, -1, -1, -1],
    ]
)
NAN = jnp.nan
# Estimator outputs per token; only step ends (positions 3 and 7 of row 0, 1 of row 1) count,
# everything else (NaN included) must not leak.
SCORES = jnp.array(
    [
        [NAN, 9.0, 9.0, 0.25, NAN, 9.0, 9.0, 0.5, NAN],
        [NAN, -0.25, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
        [NAN] * 9,
    ]
)


def test_step_end_mask_marks_the_last_token_of_each_step():
    ends = np.zeros(STEP_ID.shape, bool)
    ends[0, [3, 7]] = ends[1, 1] = True
    np.testing.assert_array_equal(spa.step_end_mask(STEP_ID), ends)
    # Adjacent steps with no context between them, and a step running to the last position.
    np.testing.assert_array_equal(
        spa.step_end_mask(jnp.array([0, 0, 1, 2, 2])), [False, True, True, False, True]
    )


def test_step_end_mask_rejects_float_step_ids():
    with pytest.raises(ValueError, match="step_id must be integers"):
        spa.step_end_mask(jnp.array([0.0, 1.0]))


def test_progress_regression_loss_by_hand():
    # Row 0: c = [0.25, 0.5], R̂ = 0.75, R = 1 → (1 − 0.75)² = 0.0625.
    # Row 1: c = [−0.25], R̂ = −0.25, R = 0 → 0.0625. Row 2: no step → 0 (its R is ignored).
    np.testing.assert_allclose(spa.progress_prediction(SCORES, STEP_ID), [0.75, -0.25, 0.0])
    outcomes = jnp.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(
        spa.progress_loss(SCORES, STEP_ID, outcomes), [0.0625, 0.0625, 0.0], atol=1e-7
    )


def test_progress_loss_gradient_reaches_only_step_ends():
    # ∂/∂c_t (R − Σc)² = −2(R − Σc) at every step end of the row, 0 elsewhere: −0.5 on row 0.
    scores = jnp.where(jnp.isnan(SCORES), 0.0, SCORES)
    grad = jax.grad(lambda s: spa.progress_loss(s, STEP_ID, jnp.array([1.0, 0.0, 1.0])).sum())(
        scores
    )
    expected = np.zeros(STEP_ID.shape)
    expected[0, [3, 7]] = -2 * (1.0 - 0.75)
    expected[1, 1] = -2 * (0.0 - (-0.25))
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_spa_token_rewards_sit_on_step_ends_by_hand():
    # Row 0: step 0 valid, step 1 invalid; row 1: its step valid. α = 1, β = 0.5:
    # row 0: 0.25 + 0.5 = 0.75 at position 3, 0.5 + 0 = 0.5 at position 7; row 1: −0.25 + 0.5.
    grounding = jnp.array(
        [[0, 0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0], [0] * 9], jnp.float32
    )
    rewards = spa.spa_token_rewards(SCORES, grounding, STEP_ID)
    expected = np.zeros(STEP_ID.shape)
    expected[0, 3], expected[0, 7], expected[1, 1] = 0.75, 0.5, 0.25
    np.testing.assert_allclose(rewards, expected, atol=1e-7)
    # α = 2, β = 0: progress only; the rewards of a row add up to α·R̂.
    progress_only = spa.spa_token_rewards(SCORES, grounding, STEP_ID, alpha=2.0, beta=0.0)
    np.testing.assert_allclose(progress_only.sum(-1), 2 * spa.progress_prediction(SCORES, STEP_ID))


def test_steptool_weighting_zeroes_the_last_step():
    # Row 0 has n = 2 steps: weights n − k − 1 = [1, 0]; row 1 (n = 1): [0].
    weights = spa.steptool_step_weights(STEP_ID)
    np.testing.assert_array_equal(weights[0], [0, 0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(weights[1], np.zeros(9))
    three = jnp.array([0, -1, 1, 1, -1, 2])  # n = 3: [2, 1, 0]
    np.testing.assert_array_equal(spa.steptool_step_weights(three), [2, 0, 1, 1, 0, 0])
    grounding = jnp.ones(STEP_ID.shape)
    rewards = spa.spa_token_rewards(SCORES, grounding, STEP_ID, weighting="steptool")
    expected = np.zeros(STEP_ID.shape)
    expected[0, 3] = 1 * (0.25 + 0.5)
    np.testing.assert_allclose(rewards, expected, atol=1e-7)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="weighting must be one of"):
        spa.spa_token_rewards(SCORES, SCORES, STEP_ID, weighting="linear")
