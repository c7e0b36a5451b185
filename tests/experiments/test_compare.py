"""The comparison report: tables from run metrics, computed by hand."""

import json

import pytest
from absl import flags

from experiments import compare


def _write_run(workdir, records, total_steps):
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"total_steps": total_steps}))
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _records(start_em, end_em, tokens_per_step):
    return [
        {"step": 0, "eval/qa/policy/synthetic_bridge/em": start_em, "eval/qa/policy/all/em": start_em},
        {"step": 1, "loss": 1.0, "sampled_tokens": tokens_per_step, "step_time_s": 2.0,
         "advantage_variance/step": 0.5, "judge/candidates": 10.0},
        {"step": 2, "loss": 1.0, "sampled_tokens": tokens_per_step, "step_time_s": 2.0,
         "advantage_variance/step": 1.5},
        {"step": 2, "eval/qa/policy/synthetic_bridge/em": end_em, "eval/qa/policy/all/em": end_em},
    ]  # fmt: skip


def test_names_and_seeds():
    assert compare.run_name("configs/slate.py") == "slate"
    assert compare.run_name("configs/slate.py:k=3,eta=0") == "slate-k=3-eta=0"
    assert compare.with_seed("configs/slate.py", 2) == "configs/slate.py:seed=2"
    assert compare.with_seed("configs/slate.py:k=3", 2) == "configs/slate.py:k=3,seed=2"


def test_configs_flag_keeps_each_configs_options():
    # What absl's DEFINE_list (the --configs flag) makes of one flag value.
    items = flags.ListParser().parse(
        "configs/slate.py:k=2,eta=argmax,configs/slate.py:k=8,configs/search_r1.py,"
        "configs/slate_mc.py:m=2"
    )
    assert compare.config_specs(items) == [
        "configs/slate.py:k=2,eta=argmax", "configs/slate.py:k=8", "configs/search_r1.py",
        "configs/slate_mc.py:m=2",
    ]  # fmt: skip
    assert compare.config_specs(["configs/slate.py", "smoke"]) == ["configs/slate.py:smoke"]
    with pytest.raises(ValueError, match="config file"):
        compare.config_specs(["k=2", "configs/slate.py"])


def test_report_means_and_stds_over_seeds(tmp_path):
    runs = {}
    for seed, (start, end) in enumerate([(0.4, 0.5), (0.4, 0.7)]):
        workdir = tmp_path / "runs" / f"m-seed{seed}"
        _write_run(workdir, _records(start, end, 100.0), total_steps=2)
        assert compare.is_finished(str(workdir))
        runs.setdefault("m", []).append(compare.summarize_run(compare.read_metrics(str(workdir))))
    summary = runs["m"][0]
    assert summary["tokens"] == 200.0 and summary["seconds"] == 4.0
    assert summary["judge_calls"] == 10.0
    assert [e["tokens"] for e in summary["evals"]] == [0.0, 200.0]
    table = compare.write_report(str(tmp_path), runs)
    # End EM over seeds: mean 0.6, sample std sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.141.
    assert (
        "| m | 2 | end | 0.600 ± 0.141 | 0.600 ± 0.141 | 200.000 ± 0.000 | 10.000 ± 0.000 |"
        in table
    )
    # Mean per-step advantage variance of each seed: (0.5 + 1.5) / 2 = 1.
    assert table.splitlines()[-1].endswith("| 1.000 ± 0.000 |")
    for name in ("results.md", "results.csv", "em_vs_tokens.png", "advantage_variance.png"):
        assert (tmp_path / name).exists()


def test_unfinished_run_is_not_skipped(tmp_path):
    workdir = tmp_path / "w"
    _write_run(workdir, _records(0.1, 0.2, 10.0)[:3], total_steps=2)
    assert not compare.is_finished(str(workdir))


def test_report_leaves_unfinished_runs_out(tmp_path, capsys):
    _write_run(tmp_path / "runs" / "m-seed0", _records(0.4, 0.5, 100.0), total_steps=2)
    _write_run(tmp_path / "runs" / "m-seed1", _records(0.4, 0.9, 100.0)[:3], total_steps=2)
    table = compare.run_and_report(["configs/m.py"], 2, str(tmp_path), only_report=True)
    assert "m-seed1: not finished, left out of the tables" in capsys.readouterr().out
    assert "| m | 1 | end | 0.500 ± 0.000 |" in table  # seed 1's step-0 EM is not its end
