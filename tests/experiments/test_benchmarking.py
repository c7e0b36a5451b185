"""Interleaved timing and the load rule that decides whether a ratio is printed."""

import argparse
import math
import os
import subprocess
import sys
import time

import pytest

from experiments.benchmarking import (
    Case,
    LoadRule,
    Rounds,
    Timing,
    _process_cpu_seconds,
    add_load_rule_arguments,
    format_ratio,
    interleave,
    load_rule,
    repeated,
    torch_peer,
    verdict,
)


def test_rounds_alternate_after_one_warm_up_each():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    result = interleave(cases, rounds=3)
    # Warm-up a b c, then rounds a b c | c b a | a b c.
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc"
    assert set(result.timings) == {"a", "b", "c"} and len(result.loads) == 4
    for t in result.timings.values():
        assert t.seconds > 0 and (t.others >= 0 or math.isnan(t.others))


def test_setup_is_untimed_and_feeds_the_case():
    seen = []
    result = interleave({"x": Case(lambda v: seen.append(v), setup=lambda: (len(seen),))}, rounds=2)
    assert seen == [0, 1, 2]  # each run gets fresh arguments from its own setup call
    assert result["x"].seconds < 0.01


def test_repeated_calls_a_short_function_enough_times_to_fill_a_run():
    calls = []
    run, count = repeated(lambda: calls.append(len(calls)) or len(calls), seconds=0.01)
    # Two calibration calls (warm-up, timed); an append takes far less than 10 ms.
    assert len(calls) == 2 and count > 1
    assert run() == 2 + count and len(calls) == 2 + count  # returns the last call's output
    slow, slow_count = repeated(lambda: time.sleep(0.02), seconds=0.01)
    assert slow_count == 1


def test_ratio_is_refused_when_the_load_moves_or_others_are_busy():
    quiet, busy = Timing(2.0, 0.3, 0.1), Timing(1.0, 0.3, 0.9)
    steady = Rounds({"a": quiet, "b": quiet}, loads=(0.2, 0.5, 0.4), rule=LoadRule())
    assert steady.ratio(quiet, Timing(0.5, 0.3, 0.0)) == pytest.approx(4.0)
    assert steady.refusal(quiet, busy) == (
        "other processes kept 0.90 cores busy during a compared run (> 0.5)"
    )
    assert steady.ratio(quiet, busy) is None
    moving = Rounds({}, loads=(0.2, 1.5), rule=LoadRule(max_load_change=1.0))
    assert moving.ratio(quiet, quiet) is None
    assert "moved 0.20..1.50" in format_ratio(None, moving, quiet, quiet)
    assert format_ratio(2.0, steady, quiet) == "2.00x"


def test_best_picks_the_fastest_and_verdicts_read_targets():
    rounds = Rounds({"hf1": Timing(3.0, 0, 0), "hf2": Timing(2.0, 0, 0)}, (0.0,), LoadRule())
    assert rounds.best(["hf1", "hf2"])[0] == "hf2"
    assert verdict(1.6, 1.5) == "(target >= 1.5: met)"
    assert verdict(1.2, 1.15, at_most=True) == "(target <= 1.15: MISSED)"
    assert verdict(None, 1.5) == ""
    with pytest.raises(ValueError, match="rounds >= 1"):
        interleave({}, rounds=0)


def test_torch_peer_pins_each_thread_count_in_its_untimed_setup():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    seen = []
    cases = torch_peer("HF", lambda: seen.append(torch.get_num_threads()), threads=(1, 2))
    assert list(cases) == ["HF 1 thread", "HF 2 threads"]
    result = interleave(cases, rounds=1)
    torch.set_num_threads(threads)
    assert seen == [1, 2, 1, 2]  # warm-up, then round 0 (in order)
    assert result.best(list(cases))[0] in cases


def test_load_rule_arguments_take_both_spellings():
    parser = argparse.ArgumentParser()
    add_load_rule_arguments(parser)
    assert load_rule(parser.parse_args([])) == LoadRule()
    args = parser.parse_args(["--max-load-change=2.5", "--max_others=0.25"])
    assert load_rule(args) == LoadRule(max_load_change=2.5, max_others=0.25)


def test_a_helper_processes_cpu_time_is_read_from_proc():
    # A child spins for 0.3 s of CPU, says so, then waits: its CPU time is what a Case naming
    # it counts as its own work rather than as other processes' load.
    spin = (
        "import time, sys\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('spun', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "spun"
        spent = _process_cpu_seconds(child.pid)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc on this system")
    assert 0.25 <= spent < 5.0  # /proc counts in 10 ms ticks
    assert _process_cpu_seconds(child.pid) == 0.0  # reaped: nothing left to count
