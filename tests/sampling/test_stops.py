import jax.numpy as jnp
import numpy as np
import pytest

from prm.sampling.stops import NO_TOKEN, match_stops, pack_stops, push_tail

X = NO_TOKEN


def test_pack_stops_right_aligns_the_union_and_maps_each_row_list():
    table, row_ids = pack_stops([[[5, 6, 7], [9]], [[9], [3, 4]], []])
    # Union in first-seen order: (5,6,7)->0, (9,)->1, (3,4)->2; S 3 -> 4, L 3 -> 4.
    np.testing.assert_array_equal(table, [[X, 5, 6, 7], [X, X, X, 9], [X, X, 3, 4], [X, X, X, X]])
    np.testing.assert_array_equal(row_ids, [[0, 1, -1, -1], [-1, 0, 1, -1], [-1, -1, -1, -1]])


def test_pack_stops_errors():
    with pytest.raises(ValueError, match="non-empty"):
        pack_stops([[[]]])
    with pytest.raises(TypeError, match="list of lists"):
        pack_stops([[5, 6]])


def _tails(rows, width):
    return jnp.asarray([[X] * (width - len(r)) + r for r in rows], jnp.int32)


def test_match_stops_multi_token_tail_and_per_row_lists():
    table, row_ids = pack_stops([[[5, 6, 7], [7]], [[6, 7]], [[5, 6, 7]], [[5, 6, 7]]])
    tails = _tails([[1, 5, 6, 7], [5, 6, 7], [6, 7], [5, 6, 8]], table.shape[1])
    # Row 0: both its stops match, the first listed (index 0) wins. Row 1: (6,7) is its only
    # stop. Row 2: only two tokens generated, (5,6,7) cannot match. Row 3: last token differs.
    np.testing.assert_array_equal(
        match_stops(tails, jnp.asarray(table), jnp.asarray(row_ids)), [0, 0, -1, -1]
    )


def test_match_stops_first_listed_wins_in_row_order():
    table, row_ids = pack_stops([[[7], [6, 7]], [[6, 7], [7]]])
    tails = _tails([[6, 7], [6, 7]], table.shape[1])
    np.testing.assert_array_equal(
        match_stops(tails, jnp.asarray(table), jnp.asarray(row_ids)), [0, 0]
    )


def test_push_tail_shifts_only_masked_rows():
    tail = jnp.asarray([[X, 1, 2], [X, X, 3]], jnp.int32)
    out = push_tail(tail, jnp.asarray([4, 5], jnp.int32), jnp.asarray([True, False]))
    np.testing.assert_array_equal(out, [[1, 2, 4], [X, X, 3]])
