"""Stop sequences: token-id sequences that end a row's step when its generated tokens end with one.

The env owns the tags (`</search>`, `</answer>`, a blank line); the sampler only sees token ids.
Sequences are packed once on the host into a right-aligned table so that, inside the decode loop,
matching every stop against every row is one comparison of the row's last L generated tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax.numpy as jnp
import numpy as np

# Fills the table's unused cells and the tail before any token is generated. Never a token id.
NO_TOKEN = -1


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def pack_stops(
    stops_per_row: Sequence[Sequence[Sequence[int]]],
) -> tuple[np.ndarray, np.ndarray]:
    """Packs each row's stop sequences into (table int32[S, L], row_stop_ids int32[B, S]).

    stops_per_row[b] lists row b's stop sequences (each a non-empty list of token ids). The
    table holds the union of all sequences, right-aligned and left-filled with NO_TOKEN;
    row_stop_ids[b, s] is the index of table row s in row b's own list, or -1 if row b does not
    stop on it. S and L are rounded up to powers of two so that changing the stops rarely
    changes the decode jit's shapes.
    """
    union: dict[tuple[int, ...], int] = {}
    for row_stops in stops_per_row:
        for stop in row_stops:
            if not isinstance(stop, Sequence | np.ndarray):
                raise TypeError(
                    f"Stops must be token-id sequences (a list of lists), got {row_stops!r}."
                )
            stop = tuple(int(t) for t in stop)
            if not stop or min(stop) < 0:
                raise ValueError(
                    f"A stop sequence must be a non-empty list of token ids >= 0, got {stop}."
                )
            union.setdefault(stop, len(union))
    num_stops = _next_power_of_two(max(len(union), 1))
    max_len = _next_power_of_two(max((len(s) for s in union), default=1))
    table = np.full((num_stops, max_len), NO_TOKEN, np.int32)
    for stop, s in union.items():
        table[s, max_len - len(stop) :] = stop
    row_stop_ids = np.full((len(stops_per_row), num_stops), -1, np.int32)
    for b, row_stops in enumerate(stops_per_row):
        # Reversed so that a sequence listed twice for one row keeps its first index.
        for i, stop in reversed(list(enumerate(row_stops))):
            row_stop_ids[b, union[tuple(int(t) for t in stop)]] = i
    return table, row_stop_ids


def push_tail(tail: chex.Array, tokens: chex.Array, mask: chex.Array) -> chex.Array:
    """Shifts `tokens` into the rows' last-L-tokens window where `mask` is set.

    tail: int32[B, L], oldest first; tokens: int32[B]; mask: bool[B].
    """
    chex.assert_rank([tail, tokens, mask], [2, 1, 1])
    shifted = jnp.concatenate([tail[:, 1:], tokens[:, None]], axis=1)
    return jnp.where(mask[:, None], shifted, tail)


def match_stops(tail: chex.Array, table: chex.Array, row_stop_ids: chex.Array) -> chex.Array:
    """The stop that row b's generated tokens now end with: its index in row b's list, else -1.

    tail: int32[B, L] the last L generated tokens (NO_TOKEN before the first); table: int32[S, L];
    row_stop_ids: int32[B, S]. When several of a row's stops match at once (one is a suffix of
    another), the one listed first for that row wins.
    """
    chex.assert_rank([tail, table, row_stop_ids], 2)
    chex.assert_equal_shape_suffix([tail, table], 1)
    agree = (tail[:, None, :] == table[None, :, :]) | (table[None, :, :] == NO_TOKEN)
    matched = jnp.all(agree, axis=-1) & (row_stop_ids >= 0)  # [B, S]
    big = jnp.iinfo(jnp.int32).max
    first = jnp.min(jnp.where(matched, row_stop_ids, big), axis=-1)
    return jnp.where(first == big, -1, first).astype(jnp.int32)
