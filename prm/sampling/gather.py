"""Rows of several sessions in one batch: one decode call serves them all (tree search).

    a = sampler.start(prompts_a)                          # e.g. one question's tree
    b = sampler.start(prompts_b)                          # another question's
    batch = gather([Row(a, 2), Row(b, 0), Row(a, 0)])     # a new session of 3 rows
    batch.generate(16, key=keys, sampling=sampling)       # one decode for all three

A gathered session is a copy: decoding or appending to it never changes `a` or `b`, so a tree
node keeps its row while its children continue from copies of it. A row's cache is copied, not
re-prefilled: the gathered rows hold the same keys and values at the same slots, so they
continue exactly as their sources would (and as a from-scratch prefill of the same context
would, up to float rounding; tests/sampling/test_gather.py). Rows from caches of different
capacities are padded to the largest (`KVCache.resize`: zero slots past each row's length).

Freeing rows is the caller's: a `Session` is freed when nothing references it, so a search
that drops the `Row`s of finished or expanded nodes frees their sessions; `compact` copies the
rows still in use out of a session that is mostly dead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prm.models import KVCache
from prm.sampling.sampler import Session, _resize, _take


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
    """A handle on one row of a session: its context, KV cache and pending token."""

    session: Session
    index: int

    def __post_init__(self):
        if not 0 <= self.index < self.session.batch_size:
            raise ValueError(
                f"Row index {self.index} is outside the session's {self.session.batch_size} rows."
            )


def gather(rows: Sequence[Row], *, pad_to: int | None = None) -> Session:
    """A new session whose row i is a copy of rows[i] (any sessions, any order, repeats allowed).

    pad_to: pad the batch to this many rows with copies of the last row (callers mark them
    inactive in `generate`), so batches of varying size share a few compiled shapes.

    Every row must come from sessions of one `Sampler` sampling one set of parameters.
    """
    if not rows:
        raise ValueError("gather() needs at least one row.")
    if pad_to is not None and pad_to < len(rows):
        raise ValueError(f"pad_to={pad_to} is smaller than the {len(rows)} rows gathered.")
    first = rows[0].session
    first_params = jax.tree.leaves(first._params)
    sessions: dict[int, tuple[Session, list[int]]] = {}
    for row in rows:
        session = row.session
        if id(session) not in sessions:
            if session.sampler is not first.sampler or not all(
                a is b for a, b in zip(jax.tree.leaves(session._params), first_params)
            ):
                raise ValueError(
                    "gather() rows come from sessions with different samplers or parameters; "
                    "gather rows of sessions started from one sampler and one model state."
                )
            sessions[id(session)] = (session, [])
        sessions[id(session)][1].append(row.index)
    capacity = max(session.cache.max_len for session, _ in sessions.values())
    caches, pendings, slot = [], [], {}
    for session, indices in sessions.values():
        unique = list(dict.fromkeys(indices))
        cache, pending = _take(session.cache, session.pending, jnp.asarray(unique, jnp.int32))
        if cache.max_len < capacity:
            cache = _resize(cache, max_len=capacity)
        for index in unique:
            slot[(id(session), index)] = len(slot)
        caches.append(cache)
        pendings.append(pending)
    cache = caches[0] if len(caches) == 1 else KVCache.concatenate(caches)
    pending = pendings[0] if len(pendings) == 1 else jnp.concatenate(pendings)
    order = [slot[(id(row.session), row.index)] for row in rows]
    order += [order[-1]] * ((pad_to or len(rows)) - len(rows))
    if order != list(range(len(slot))):
        cache, pending = _take(cache, pending, jnp.asarray(order, jnp.int32))
    return Session(first.sampler, first._graphdef, first._params, cache, pending)


def compact(rows: Sequence[Row]) -> list[Row]:
    """The same rows moved into fresh sessions holding only them (one per source session).

    Use when most of a session's rows are dead: the old session is freed once the caller drops
    its other references. Rows keep their order; repeats stay shared.
    """
    moved: dict[int, Session] = {}
    by_session: dict[int, list[int]] = {}
    for row in rows:
        by_session.setdefault(id(row.session), [])
        if row.index not in by_session[id(row.session)]:
            by_session[id(row.session)].append(row.index)
    sources = {id(row.session): row.session for row in rows}
    for key, indices in by_session.items():
        moved[key] = sources[key].select(indices)
    return [Row(moved[id(r.session)], by_session[id(r.session)].index(r.index)) for r in rows]


def live_cache_bytes(rows: Sequence[Row]) -> int:
    """Bytes of KV cache held by the distinct sessions these rows keep alive."""
    sessions = {id(row.session): row.session for row in rows}
    return sum(session.cache.nbytes for session in sessions.values())


def row_lengths(rows: Sequence[Row]) -> np.ndarray:
    """Context length of each row (waits for pending device work)."""
    lengths = {id(r.session): r.session.lengths() for r in rows}
    return np.array([lengths[id(r.session)][r.index] for r in rows], np.int64)
