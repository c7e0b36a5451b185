"""The PAV verifier experiment runs as typed on its smoke config and writes its three blocks."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_config_runs_as_typed(tmp_path):
    workdir = os.path.relpath(tmp_path / "run", ROOT)  # a workdir relative to the repo root
    command = [
        sys.executable, "-m", "experiments.pav_verifier",
        "--config=configs/pav_verifier.py:smoke", f"--workdir={workdir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["provers"]) == {"pi", "Bo4(pi)", "pi at T=0.5"}
    assert results["verifier"]["held_out"]["prefixes"] > 0
    beams = results["beam"]
    assert len(beams) == 3
    for b in beams.values():
        assert 0.0 <= b["accuracy"] <= b["some_finished_candidate_right"] <= 1.0
        assert b["sampled_steps_per_problem"] > 0
    assert 0.0 <= results["policy_alone"]["greedy_accuracy"] <= 1.0
