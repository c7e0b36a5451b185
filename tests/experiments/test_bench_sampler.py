import pytest

from experiments import bench_sampler


@pytest.mark.slow
def test_quick_run_prints_every_section_and_agrees_with_hf(capsys):
    bench_sampler.main(["--quick"])
    out = capsys.readouterr().out
    assert "measured read bandwidth" in out
    assert "prm/HF" in out and "roofline" in out
    # Same weights, greedy, float32: prm and transformers pick the same tokens.
    assert "greedy prefix agreement with HF 100.0%" in out
    assert "speed-up vs re-prefill" in out and "fraction of ideal" in out
    # Carrying the cache across turns and re-prefilling every turn give the same rollout.
    assert "same tokens: True" in out
