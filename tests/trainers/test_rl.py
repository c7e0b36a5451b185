"""What the RL trainers share: the measured advantage variances they log."""

import numpy as np
import pytest

from prm.trainers.rl import centred_advantage_variances


def test_centred_advantage_variances_by_hand():
    rewards = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, 3.0]])
    # Centred: (±0.5), (0, 0), (∓1.5); squares 0.25, 0.25, 0, 0, 2.25, 2.25.
    metrics = centred_advantage_variances(rewards, np.array([0, 0, 1]))
    assert metrics == pytest.approx(
        {
            "centred_advantage_variance/step": 5.0 / 6.0,
            "centred_advantage_variance/t1": 0.5 / 4.0,
            "groups/t1": 2.0,
            "centred_advantage_variance/t2": 4.5 / 2.0,
            "groups/t2": 1.0,
        }
    )
    assert centred_advantage_variances(rewards) == {"centred_advantage_variance/step": 5.0 / 6.0}


def test_centred_advantage_variance_is_one_minus_inverse_k_times_the_group_variance():
    rewards = np.random.default_rng(0).normal(size=(7, 5)) * np.arange(1, 8)[:, None]
    expected = (1 - 1 / 5) * np.mean(np.var(rewards, axis=1, ddof=1))
    measured = centred_advantage_variances(rewards)["centred_advantage_variance/step"]
    assert measured == pytest.approx(expected)


def test_centred_advantage_variances_rejects_groups_of_one():
    with pytest.raises(ValueError, match="k >= 2"):
        centred_advantage_variances(np.zeros((3, 1)))
