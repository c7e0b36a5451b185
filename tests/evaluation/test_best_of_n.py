"""Best-of-N bookkeeping: answer ids, picks among the first n, sizes, and the table's round trip."""

import numpy as np
import pytest

from prm.evaluation.best_of_n import (
    answer_ids,
    candidate_scores,
    flatten,
    powers_of_two_up_to,
    selection_accuracy,
    table_from_metrics,
)


def test_answer_ids_pool_equal_normalised_answers_and_never_missing_ones():
    ids = answer_ids(["Paris", "the paris", "Rome", None, None, "x"], 3)
    np.testing.assert_array_equal(ids, [[0, 0, 1], [0, 1, 2]])


def test_selection_accuracy_by_hand():
    em = np.array([[0, 1, 1], [1, 0, 0]], np.float32)
    ids = np.array([[0, 1, 1], [0, 1, 2]])
    scores = {"s": np.array([[0.1, 0.5, 0.2], [0.3, 0.9, 0.2]])}
    table = selection_accuracy(em, ids, scores, [1, 2, 3])
    # n=1: every method picks candidate 0 (EM 0 and 1).
    assert {m: by_n[1] for m, by_n in table.items()} == dict.fromkeys(table, 0.5)
    assert table["random"] == {1: 0.5, 2: 0.5, 3: 0.5}
    assert table["oracle"] == {1: 0.5, 2: 1.0, 3: 1.0}
    # Ties of votes go to the first candidate; at n=3, answer 1 of question 0 has two votes.
    assert table["majority"] == {1: 0.5, 2: 0.5, 3: 1.0}
    # The top score is candidate 1 for both questions from n=2 on (EM 1 and 0).
    assert table["prm_s"] == {1: 0.5, 2: 0.5, 3: 0.5}
    # σ(0.5) + σ(0.2) > σ(0.1): question 0's vote goes to answer 1 at n=3.
    assert table["vote_s"] == {1: 0.5, 2: 0.5, 3: 0.5}


def test_score_ties_pick_the_first_candidate_so_zero_scores_are_random_in_expectation():
    em = np.array([[1, 0], [0, 1]], np.float32)
    table = selection_accuracy(em, np.array([[0, 1], [0, 1]]), {"z": np.zeros((2, 2))}, [2])
    assert table["prm_z"][2] == 0.5 == table["random"][2]


def test_candidate_scores_of_the_notes_worked_example():
    # Step rewards [0.1, −0.1, 0.1] (notes §1.4) and a padded fourth step.
    step_values = np.array([[0.1, -0.1, 0.1, 7.0]])
    scores = candidate_scores(step_values, np.array([[1, 1, 1, 0]]))
    expected = {"min": -0.1, "sum": 0.1, "last": 0.1,
                "min_cumulative": 0.0, "sum_cumulative": 0.2, "last_cumulative": 0.1}  # fmt: skip
    for name, value in expected.items():
        assert scores[name][0] == pytest.approx(value, abs=1e-6), name


def test_sizes_and_table_round_trip():
    assert powers_of_two_up_to(16) == [1, 2, 4, 8, 16]
    assert powers_of_two_up_to(12) == [1, 2, 4, 8, 12]
    table = {"random": {1: 0.25, 4: 0.5}, "prm_min": {1: 0.25, 4: 0.75}}
    assert table_from_metrics({**flatten(table), "prm/heldout_ce": 0.7}) == table
