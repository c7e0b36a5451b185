"""experiments/best_of_n_compare.py: the Math-Shepherd PRM's step logits, rows and loss by hand."""

import math
import types

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.best_of_n_compare import math_shepherd_loss, step_end_logits, step_label_rows

STEP_ID = np.array([[-1, 0, 0, -1, 1, 1], [-1, -1, 0, 0, 0, -1]], np.int32)
SCORES = np.array([[9.0, 1.0, 3.0, 9.0, 2.0, -6.0], [9.0, 9.0, 0.5, 0.0, 4.0, 9.0]], np.float32)


def test_step_logits_are_the_scores_at_each_steps_last_token():
    logits, present = step_end_logits(jnp.asarray(SCORES), jnp.asarray(STEP_ID), 2)
    np.testing.assert_array_equal(np.asarray(logits), [[3.0, -6.0], [4.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(present), [[True, True], [True, False]])


def _episodes(num_turns):
    shape = STEP_ID.shape
    return types.SimpleNamespace(tokens=np.zeros(shape, np.int32), input_mask=np.ones(shape, bool),
                                 step_id=STEP_ID, num_turns=np.asarray(num_turns))  # fmt: skip


def test_rows_carry_one_label_per_turn_and_the_loss_is_ce_over_labelled_steps():
    rows = step_label_rows(_episodes([2, 1]), [np.array([1.0, 0.0]), np.array([0.0])])
    np.testing.assert_array_equal(rows["step_labels"], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(rows["label_mask"], [[1, 1], [1, 0]])
    model = lambda tokens, input_mask: jnp.asarray(SCORES)
    loss, _ = math_shepherd_loss(model, {k: jnp.asarray(v) for k, v in rows.items()})
    # Labelled steps: logit 3 (label 1), −6 (label 0), 4 (label 0).
    expected = math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-6.0)) + math.log1p(math.exp(4))
    assert float(loss) == pytest.approx(expected / 3, rel=1e-6)


def test_a_label_count_unequal_to_the_turns_is_an_error():
    with pytest.raises(ValueError, match="Row 1 has 1 turns, 2 labels"):
        step_label_rows(_episodes([2, 1]), [np.array([1.0, 0.0]), np.array([0.0, 1.0])])
