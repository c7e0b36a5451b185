"""The ReST-MCTS* experiment runs end to end on its smoke config and writes its records."""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

from configs.rest_mcts import get_config
from experiments import rest_mcts
from experiments.rest_mcts import fit_steps, run, sampled_traces
from prm.envs.chain_arithmetic import ChainConfig, generate_problems, noisy_expert_steps

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_run_writes_one_record_per_evaluation(tmp_path, monkeypatch):
    # The smoke warm start (4 SFT steps of configs/chain_sft.py:smoke) is trained into tmp_path.
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    config = get_config("smoke")
    records = run(config, str(tmp_path / "run"))
    assert [r["iteration"] for r in records] == [0, 1]
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["records"] == json.loads(json.dumps(records))
    for record in records:
        for name in ("greedy_accuracy", "mcts_accuracy", "best_of_n_accuracy"):
            assert 0.0 <= record[name] <= 1.0
        assert record["mcts_tokens"] > 0 and record["n"] >= 1


def test_fit_steps_are_epochs_over_the_data_unless_fixed():
    assert fit_steps(0, 10, 16, 3.0) == 2  # ceil(30 / 16)
    assert fit_steps(0, 64, 16, 3.0) == 12
    assert fit_steps(0, 1, 16, 0.5) == 1  # at least one step
    assert fit_steps(60, 10, 16, 3.0) == 60


def test_sampled_traces_keep_distinct_verified_rows_and_rate_their_steps(monkeypatch):
    # Two problems x 3 samples; rows 0 and 1 are the same verified solution (kept once), row 2
    # is wrong, row 3 reaches the right answer through a wrong step, row 4 is right throughout,
    # row 5 is unverified. So 3 traces, of which 2 are process-correct.
    problems = generate_problems(2, seed=0, config=ChainConfig(min_ops=2, max_ops=2))
    rng = np.random.default_rng(0)
    gold = [noisy_expert_steps(p, rng, 0.0) for p in problems]
    wrong_step = ["x" + gold[1][0]] + gold[1][1:]  # a first line that does not parse as step 0
    steps = [gold[0], gold[0], gold[0], wrong_step, gold[1], gold[1]]
    reward = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    tokens = np.array([[5, 6, 7, 0], [5, 6, 7, 0], [5, 6, 8, 0], [9, 1, 2, 3], [9, 1, 3, 0],
                       [9, 1, 4, 0]], np.int32)  # fmt: skip
    input_mask = tokens > 0
    loss_mask = np.where(input_mask, 1.0, 0.0) * (np.arange(4) >= 1)
    batch = types.SimpleNamespace(
        reward=reward, tokens=tokens, input_mask=input_mask, loss_mask=loss_mask,
        steps=[[types.SimpleNamespace(step_text=t) for t in row] for row in steps],
    )  # fmt: skip
    monkeypatch.setattr(rest_mcts, "sample", lambda *args: batch)
    config = get_config("samples=3")
    traces, process_correct = sampled_traces(None, None, None, problems, config, None)
    assert [t.tokens for t in traces] == [(5, 6, 7), (9, 1, 2, 3), (9, 1, 3)]
    assert traces[1].loss_mask == (0.0, 1.0, 1.0, 1.0)
    assert process_correct == pytest.approx(2 / 3)


@pytest.mark.slow
def test_rest_em_runs_as_typed(tmp_path):
    # README: `python -m experiments.rest_mcts --config=configs/rest_mcts.py:traces=sampling
    # --workdir=...`, here with the smoke option and a workdir relative to the repo root.
    workdir = os.path.relpath(tmp_path / "run", ROOT)
    command = [
        sys.executable, "-m", "experiments.rest_mcts",
        "--config=configs/rest_mcts.py:smoke,traces=sampling", f"--workdir={workdir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "run" / "results.json").read_text())["records"]
    assert [r["iteration"] for r in records] == [0, 1]
    assert "value_mse" not in records[1]  # ReST^EM trains no value model
    assert records[1]["traces"] >= 0
