import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prm.masked import masked_count, masked_mean, masked_sum, masked_var, masked_whiten

VALUES = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = jnp.array([[1, 1, 0], [1, 0, 0]])


def test_sum_count_mean_by_hand():
    # unmasked: 1, 2 | 4  ->  sum 7, count 3, mean 7/3
    assert masked_sum(VALUES, MASK) == 7.0
    assert masked_count(MASK) == 3.0
    np.testing.assert_allclose(masked_mean(VALUES, MASK), 7.0 / 3.0, rtol=1e-6)
    # per row: sums (3, 4), counts (2, 1), means (1.5, 4)
    np.testing.assert_allclose(masked_sum(VALUES, MASK, axis=-1), [3.0, 4.0])
    np.testing.assert_allclose(masked_mean(VALUES, MASK, axis=-1), [1.5, 4.0])


def test_empty_mask_gives_zero_not_nan():
    empty = jnp.zeros_like(MASK)
    assert masked_mean(VALUES, empty) == 0.0
    assert masked_var(VALUES, empty) == 0.0
    np.testing.assert_array_equal(
        masked_mean(VALUES, jnp.array([[1, 0, 0], [0, 0, 0]]), -1), [1, 0]
    )


def test_var_by_hand_population_and_unbiased():
    # unmasked 1, 2, 4: mean 7/3; squared deviations 16/9, 1/9, 25/9 -> sum 42/9
    np.testing.assert_allclose(masked_var(VALUES, MASK), 42.0 / 9.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(masked_var(VALUES, MASK, ddof=1), 42.0 / 9.0 / 2.0, rtol=1e-6)
    # row 0: (1, 2) -> unbiased 0.5; row 1: one entry, ddof=1 leaves no degrees of freedom -> 0
    np.testing.assert_allclose(masked_var(VALUES, MASK, axis=-1, ddof=1), [0.5, 0.0])


def test_nan_and_inf_under_the_mask_never_leak():
    poisoned = VALUES.at[0, 2].set(jnp.nan).at[1, 1].set(-jnp.inf)
    assert masked_sum(poisoned, MASK) == 7.0
    np.testing.assert_allclose(masked_var(poisoned, MASK), 42.0 / 27.0, rtol=1e-6)
    whitened = masked_whiten(poisoned, MASK)
    assert np.isfinite(np.asarray(whitened)).all()
    grad = jax.grad(lambda v: masked_mean(v, MASK))(poisoned)
    np.testing.assert_allclose(grad, np.asarray(MASK) / 3.0)


def test_whiten_by_hand():
    # unmasked 1, 2, 4: mean 7/3, population var 14/9
    mean, std = 7.0 / 3.0, np.sqrt(14.0 / 9.0 + 1e-8)
    expected = np.array([[1 - mean, 2 - mean, 0.0], [4 - mean, 0.0, 0.0]]) / std
    np.testing.assert_allclose(masked_whiten(VALUES, MASK), expected, rtol=1e-5)
    # unbiased variance (verl): 42/9/2 = 7/3
    std1 = np.sqrt(7.0 / 3.0 + 1e-8)
    expected1 = np.array([[1 - mean, 2 - mean, 0.0], [4 - mean, 0.0, 0.0]]) / std1
    np.testing.assert_allclose(masked_whiten(VALUES, MASK, ddof=1), expected1, rtol=1e-5)
    # shift_mean=False adds the mean back to unmasked entries only
    kept = masked_whiten(VALUES, MASK, shift_mean=False)
    np.testing.assert_allclose(kept, (expected + mean) * np.asarray(MASK), rtol=1e-5)


def test_whitened_unmasked_entries_have_zero_mean_unit_variance():
    rng = np.random.default_rng(0)
    values = jnp.asarray(rng.normal(3.0, 2.0, (4, 7)), jnp.float32)
    mask = jnp.asarray(rng.random((4, 7)) < 0.6)
    whitened = masked_whiten(values, mask)
    np.testing.assert_allclose(masked_mean(whitened, mask), 0.0, atol=1e-5)
    np.testing.assert_allclose(masked_var(whitened, mask), 1.0, rtol=1e-4)
    assert (np.asarray(whitened)[~np.asarray(mask)] == 0).all()


def test_jit_matches_eager():
    for fn in (masked_sum, masked_mean, masked_var):
        np.testing.assert_allclose(jax.jit(fn)(VALUES, MASK), fn(VALUES, MASK), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(masked_whiten)(VALUES, MASK), masked_whiten(VALUES, MASK))


def test_shape_mismatch_raises():
    with pytest.raises(AssertionError, match="shape"):
        masked_sum(VALUES, MASK[:, :2])
