"""Timing shared by the benchmark scripts (experiments/bench_*.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def best_seconds(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int,
    setup: Callable[[], tuple] | None = None,
) -> float:
    """Best wall time of `fn(*args)` over `repeats` runs, after one untimed warm-up (compile).

    With `setup`, each run calls `fn(*setup())` and setup is not timed (e.g. to build a fresh
    donated input). Outputs are waited on with `jax.block_until_ready`, so asynchronous dispatch
    is not mistaken for speed. The best run is the least disturbed by other load on the machine.
    """
    make_args = setup if setup is not None else (lambda: args)
    jax.block_until_ready(fn(*make_args()))
    times = []
    for _ in range(repeats):
        call_args = make_args()
        start = time.perf_counter()
        jax.block_until_ready(fn(*call_args))
        times.append(time.perf_counter() - start)
    return min(times)
