"""experiments/collect.py: datasets, schema and summaries, with the oracle completer standing in
for the policy (exact labels, so every accuracy is 1 and the located first errors are the true
ones), and one end-to-end smoke run with a real (smoke) warm start."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest

from configs import math_shepherd as math_shepherd_config
from configs import omegaprm as omegaprm_config
from experiments import collect
from tests.helpers.chain_oracle import OracleCompleter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def oracle_config(module, **overrides):
    config = module.get_config("smoke")
    config.problems.operators = "+-"  # no collisions: the oracle's MC is exact
    config.problems.num = 4
    config.update(overrides)
    return config


def test_label_accuracy_by_hand():
    predicted = np.array([1, 1, 0, 0, 1])
    truth = np.array([1, 0, 0, 1, 1])
    got = collect.label_accuracy(predicted, truth)
    assert got == {
        "accuracy": 3 / 5,
        "accuracy_on_correct_steps": 2 / 3,
        "accuracy_on_incorrect_steps": 1 / 2,
    }


def test_math_shepherd_rows_and_summary(tmp_path):
    config = oracle_config(math_shepherd_config)
    records, summary = collect.collect_math_shepherd(config, OracleCompleter())
    assert summary["solutions"] == 8 and summary["solution_accuracy"] == 0.5
    for n in config.eval_completions:
        assert summary["label_accuracy_by_num_completions"][n]["hard"]["accuracy"] == 1.0
        assert summary["label_accuracy_by_num_completions"][n]["soft>=0.5"]["accuracy"] == 1.0
    # Sampling asked 4 prefixes once; labelling asked every proper prefix of 8 solutions.
    steps = sum(len(r["steps"]) - 1 for r in records)
    assert summary["labelling_cost"]["estimates"] == steps
    for r in records:
        assert r["hard_labels"] == r["true_labels"]
        assert r["soft_labels"][-1] == r["outcome"]
        assert len(r["steps"]) == len(r["soft_labels"]) == len(r["hard_labels"])
    path = collect.write(records, str(tmp_path / "steps"), "parquet")
    loaded = datasets.load_dataset("parquet", data_files=path, split="train")
    assert loaded.column_names == [
        "problem_id", "prompt", "steps", "soft_labels", "hard_labels", "outcome", "true_labels",
        "method",
    ]  # fmt: skip
    assert loaded[0]["steps"] == records[0]["steps"]


def test_omegaprm_rows_pairs_and_summary(tmp_path):
    config = oracle_config(omegaprm_config)
    records, pairs, summary = collect.collect_omegaprm(config, OracleCompleter())
    assert summary["located_first_error_equals_true"] == 1.0
    assert summary["hard_label_accuracy (labelled steps)"]["accuracy"] == 1.0
    per_error = summary["estimates_per_first_error"]
    assert per_error["binary_search"] <= per_error["brute_force_all_prefixes (M-1)"]
    check = summary["first_error_check"]
    assert check["binary_equals_true"] == check["brute_force_equals_true"] == 1.0
    for r in records:
        first = r["hard_labels"].index(0)
        assert r["true_labels"][: first + 1] == r["hard_labels"][: first + 1]
        assert all(label is None for label in r["hard_labels"][first + 1 :])
    assert pairs and all(p["preference"] == 0.5 * (1 + p["mc_a"] - p["mc_b"]) for p in pairs)
    path = collect.write(pairs, str(tmp_path / "pairs"), "jsonl")
    with open(path) as f:
        first = json.loads(f.readline())
    assert set(first) == {
        "problem_id", "prompt", "prefix", "steps_a", "steps_b", "mc_a", "mc_b", "preference"
    }  # fmt: skip
    with pytest.raises(ValueError, match="format"):
        collect.write(pairs, str(tmp_path / "pairs"), "csv")


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path, monkeypatch):
    # As typed in README (with the smoke option): the absl program, its config file and --out.
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.collect", "--config=configs/math_shepherd.py:smoke",
         f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "math_shepherd" and summary["solutions"] == 6
    assert os.path.isfile(out / "steps.jsonl")
