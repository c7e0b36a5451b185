"""Interleaved timing and the load rule that decides whether a ratio is printed."""

import math

import pytest

from experiments.benchmarking import (
    Case,
    LoadRule,
    Rounds,
    Timing,
    format_ratio,
    interleave,
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
