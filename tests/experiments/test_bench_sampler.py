import re

import pytest

from experiments import bench_sampler


@pytest.mark.slow
def test_quick_run_prints_every_section_and_agrees_with_hf(capsys):
    # A huge load allowance so the ratios print (and are checked for form) on a busy machine.
    bench_sampler.main(["--quick", "--max-load-change=1000", "--max-others=1000"])
    out = capsys.readouterr().out
    assert "prm/HF" in out and "roofline" in out and "REFUSED" not in out
    # Same weights, greedy, float32: prm and transformers pick the same tokens, on outputs that
    # are not one repeated token, and give them the same log-probs.
    assert "greedy prefix 100.0%" in out
    assert int(re.search(r">= (\d+) distinct tokens", out).group(1)) >= 4
    assert float(re.search(r"log-prob gap on prm's tokens ([0-9.e+-]+)", out).group(1)) < 1e-3
    assert "step time capacity 1024 / 96" in out
    assert "vs re-prefill" in out and "of ideal" in out
    # Carrying the cache across turns and re-prefilling every turn give the same rollout.
    assert "same tokens: True" in out and "same trajectories: True" in out
