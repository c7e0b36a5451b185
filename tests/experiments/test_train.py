"""End-to-end runs of `python -m experiments.train` / `experiments.eval` in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from prm.training.metrics_writer import TIMING_METRICS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 60 steps of a 64-row batch: long enough (~seconds) for the kill to land mid-run.
FLAGS = [
    "--config=configs/toy.py:smoke",
    "--config.export_hf=False",
    "--config.total_steps=60",
    "--config.data.batch_size=64",
]


def _command(*args):
    return [sys.executable, "-m", "experiments.train", *args]


def _run(args, module="experiments.train"):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True
    )


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS} for line in f
        ]


def _arrays(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)


def _line_count(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _kill_and_resume(tmp_path, flags):
    """Runs `flags` straight and, beside it, SIGKILLed after 20 steps then resumed; asserts
    their metrics and final checkpoints are bitwise the same. Returns the two workdirs."""
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    reference = subprocess.Popen(_command(*flags, f"--workdir={straight}"), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    victim = subprocess.Popen(_command(*flags, f"--workdir={killed}"), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.monotonic() + 300
    while _line_count(metrics) < 20 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = _line_count(metrics)
    assert 20 <= killed_at < 60
    resumed = _run([*flags, f"--workdir={killed}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert reference.wait() == 0

    assert _records(killed) == _records(straight)
    final_a, final_b = _arrays(straight, 60), _arrays(killed, 60)
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        np.testing.assert_array_equal(final_a[name], final_b[name], err_msg=name)
    return straight, killed


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    straight, _ = _kill_and_resume(tmp_path, FLAGS)
    evaluated = _run([f"--workdir={straight}"], module="experiments.eval")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    with open(os.path.join(straight, "eval_60.json")) as f:
        assert json.load(f)["step"] == 60


@pytest.mark.slow
def test_sigkill_and_resume_with_reference_and_value_part_is_bitwise_identical(tmp_path):
    # A frozen reference (a copy), a trainable value part with its own optimiser, and host
    # metrics drawn from the rollout key (tests/helpers/parts_trainer.py).
    flags = ["--config=tests/helpers/parts_config.py:smoke", *FLAGS[1:]]
    straight, _ = _kill_and_resume(tmp_path, flags)
    final = _arrays(straight, 60)
    assert {name.split(".")[1] for name in final if name.startswith("params.")} == {
        "policy",
        "value",
    }
    train_records = [r for r in _records(straight) if "grad_norm" in r]  # not the eval ones
    assert len({r["rollout/uniform"] for r in train_records}) == 60


def test_bad_config_options_and_keys_are_clear_errors(tmp_path):
    unknown_option = _run(["--config=configs/toy.py:smok", f"--workdir={tmp_path}/a"])
    assert unknown_option.returncode != 0
    assert "Unknown config option 'smok'; valid options are" in unknown_option.stderr
    unknown_key = _run(["--config=configs/toy.py:smoke", "--config.optim.lrr=1",
                        f"--workdir={tmp_path}/b"])  # fmt: skip
    assert unknown_key.returncode != 0
    assert "Unknown config key 'optim.lrr'; valid keys of optim: b1, b2," in unknown_key.stderr
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
