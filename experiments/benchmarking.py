"""Timing shared by the benchmark scripts (experiments/bench_*.py).

`best_seconds` times one function. `interleave` times several side by side the way a ratio
between them can be trusted on a shared machine: the candidates run in alternating rounds
(A B C, C B A, ...), so a burst of outside load hits every candidate rather than one; every
timed run records the 1-minute load average and the cores other processes kept busy during it;
and `Rounds.ratio` refuses to compare two figures when the load moved too much between rounds
or when other processes were busy during either figure (`LoadRule`). A torch peer runs pinned
to 1 and to 2 threads (`torch_peer`) and its faster figure is taken (`Rounds.best`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
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


def load_average() -> float:
    """The 1-minute load average (runnable + running tasks, all processes)."""
    return os.getloadavg()[0]


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat; nan elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` has spent (user + system; Linux /proc; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the parenthesised name: utime and stime are the 12th and 13th.
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Timing:
    """One candidate's best run of an `interleave`.

    seconds: wall time of the best run. load: 1-minute load average right after it.
    others: cores kept busy by other processes during it (busy CPU time of the whole machine
    minus this process's, over the wall time; /proc/stat has 10 ms ticks, so short runs read
    coarsely); nan where /proc/stat is missing.
    """

    seconds: float
    load: float
    others: float

    def describe(self) -> str:
        return f"load {self.load:.2f}, others {self.others:.2f} cores"


@dataclasses.dataclass(frozen=True)
class LoadRule:
    """When a ratio of two timings is printed.

    max_load_change: largest allowed spread (max - min) of the 1-minute load average over the
        rounds; this process's own work counts in it too, which the default leaves room for.
    max_others: most cores other processes may have kept busy during either best run.
    """

    max_load_change: float = 1.0
    max_others: float = 0.5


@dataclasses.dataclass(frozen=True)
class Case:
    """A candidate: `fn(*setup())` is timed; `setup` (untimed) builds fresh inputs per run.

    processes: ids of the processes the case's work runs in besides this one (a server, a
    peer's worker): their CPU time counts as the case's own, not as other processes' load.
    """

    fn: Callable[..., Any]
    setup: Callable[[], tuple] | None = None
    processes: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Rounds:
    """The outcome of `interleave`: the best timing per candidate and the load of each round."""

    timings: dict[str, Timing]
    loads: tuple[float, ...]  # 1-minute load average at the start and after each round
    rule: LoadRule

    def __getitem__(self, name: str) -> Timing:
        return self.timings[name]

    def best(self, names: Sequence[str]) -> tuple[str, Timing]:
        """The fastest of `names` (e.g. a peer run at several thread counts)."""
        name = min(names, key=lambda n: self.timings[n].seconds)
        return name, self.timings[name]

    def refusal(self, *figures: Timing) -> str | None:
        """Why a ratio of `figures` cannot be trusted under `rule`, or None when it can."""
        spread = max(self.loads) - min(self.loads)
        if spread > self.rule.max_load_change:
            return (
                f"load average moved {min(self.loads):.2f}..{max(self.loads):.2f} across rounds "
                f"(> {self.rule.max_load_change:g})"
            )
        others = max(f.others for f in figures)
        if others > self.rule.max_others:
            return (
                f"other processes kept {others:.2f} cores busy during a compared run "
                f"(> {self.rule.max_others:g})"
            )
        return None

    def ratio(self, numerator: Timing, denominator: Timing) -> float | None:
        """numerator.seconds / denominator.seconds, or None when `refusal` objects."""
        if self.refusal(numerator, denominator) is not None:
            return None
        return numerator.seconds / denominator.seconds


def interleave(
    cases: Mapping[str, Case | Callable[[], Any]], *, rounds: int, rule: LoadRule = LoadRule()
) -> Rounds:
    """Times every case in `rounds` alternating rounds after one untimed warm-up each.

    Round r runs the cases in order when r is even and in reverse when odd. Each run's output
    is waited on with `jax.block_until_ready` (a no-op for host values such as torch tensors).
    """
    if rounds < 1:
        raise ValueError(f"interleave() needs rounds >= 1, got {rounds}.")
    cases = {n: c if isinstance(c, Case) else Case(c) for n, c in cases.items()}

    def own_cpu_seconds(case: Case) -> float:
        return time.process_time() + sum(map(_process_cpu_seconds, case.processes))

    def run(case: Case) -> tuple[float, float]:
        args = case.setup() if case.setup is not None else ()
        busy, own = _busy_cpu_seconds(), own_cpu_seconds(case)
        start = time.perf_counter()
        jax.block_until_ready(case.fn(*args))
        wall = time.perf_counter() - start
        others = (_busy_cpu_seconds() - busy - (own_cpu_seconds(case) - own)) / wall
        return wall, max(others, 0.0)

    for case in cases.values():
        run(case)
    best: dict[str, Timing] = {}
    loads = [load_average()]
    names = list(cases)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, others = run(cases[name])
            if name not in best or seconds < best[name].seconds:
                best[name] = Timing(seconds, load_average(), others)
        loads.append(load_average())
    return Rounds(best, tuple(loads), rule)


def format_ratio(
    value: float | None, rounds: Rounds, *figures: Timing, fmt: str = "{:.2f}x"
) -> str:
    """`value` formatted with `fmt`, or why it was refused."""
    if value is None:
        return f"REFUSED ({rounds.refusal(*figures)})"
    return fmt.format(value)


def verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    """Whether `value` meets `target` (>= target, or <= with at_most); '' when refused."""
    if value is None:
        return ""
    met = value <= target if at_most else value >= target
    return f"(target {'<=' if at_most else '>='} {target:g}: {'met' if met else 'MISSED'})"


def repeated(fn: Callable[[], Any], seconds: float = 0.1) -> tuple[Callable[[], Any], int]:
    """`fn` called often enough per timed run to last about `seconds`, and that call count.

    For sub-millisecond work: /proc/stat counts in 10 ms ticks, so one short call would read
    the other processes' load coarsely. The count comes from one timed call after a warm-up;
    the run returns the last call's output (waited on by `interleave`). Divide a timing by the
    count for the time per call.
    """
    jax.block_until_ready(fn())
    start = time.perf_counter()
    jax.block_until_ready(fn())
    calls = max(1, math.ceil(seconds / max(time.perf_counter() - start, 1e-9)))

    def run() -> Any:
        out = None
        for _ in range(calls):
            out = fn()
        return out

    return run, calls


# The peer's thread counts: on a shared 2-core machine 2-thread torch can collapse when another
# process takes a core, while 1 thread holds up; the peer's figure is the faster of the two.
PEER_THREADS = (1, 2)


def torch_peer(
    name: str, fn: Callable[[], Any], threads: Sequence[int] = PEER_THREADS
) -> dict[str, Case]:
    """`fn` (a torch workload) as one case per thread count, pinned by its untimed setup.

    Take the peer's figure with `Rounds.best(list(cases))`. The last run leaves torch at its
    thread count; callers restore `torch.set_num_threads` when they use torch afterwards.
    """
    import torch

    def pin(count: int) -> Callable[[], tuple]:
        def setup() -> tuple:
            torch.set_num_threads(count)
            return ()

        return setup

    return {f"{name} {n} thread{'s' if n > 1 else ''}": Case(fn, setup=pin(n)) for n in threads}


def add_load_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-load-change and --max-others (also spelt with underscores), see `LoadRule`."""
    for field in dataclasses.fields(LoadRule):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            f"--{field.name}",
            dest=field.name,
            type=float,
            default=field.default,
            help=f"LoadRule.{field.name}: above it a ratio is refused",
        )


def load_rule(args: argparse.Namespace) -> LoadRule:
    """The `LoadRule` of arguments added by `add_load_rule_arguments`."""
    return LoadRule(max_load_change=args.max_load_change, max_others=args.max_others)


def figure(label: str, timing: Timing, value: str) -> str:
    """`label value [load .., others .. cores]`: a figure printed with the load it ran under."""
    return f"{label} {value} [{timing.describe()}]"
