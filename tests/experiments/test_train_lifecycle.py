"""A run's life as a user types it: relative workdirs, interrupts, reruns, corrupt checkpoints,
evaluation of missing steps, and the end-of-run summary (subprocesses, exactly as typed)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from prm.training.metrics_writer import TIMING_METRICS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# toy.py:smoke saves at steps 3, 6, 9 and 12 and keeps two; 40 steps give a kill time to land.
SMOKE = ["--config=configs/toy.py:smoke", "--config.export_hf=False"]
LONG = [*SMOKE, "--config.total_steps=40", "--config.data.batch_size=64"]


def _train(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS} for line in f
        ]


def _line_count(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


@pytest.fixture
def relative_workdir():
    """A workdir typed relative to the repository root, as the Makefile passes it."""
    name = os.path.join("workdirs", f"test-{uuid.uuid4().hex[:8]}")
    yield name
    shutil.rmtree(os.path.join(ROOT, name), ignore_errors=True)


def test_relative_workdir_sigterm_and_rerun_lose_no_metrics(tmp_path, relative_workdir):
    straight = str(tmp_path / "straight")
    reference = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *LONG, f"--workdir={straight}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    victim = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *LONG, f"--workdir={relative_workdir}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = os.path.join(ROOT, relative_workdir, "metrics.jsonl")
    deadline = time.monotonic() + 300
    # Past two checkpoint saves (steps 3 and 6) before the signal.
    while _line_count(metrics) < 8 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert victim.poll() is None, "the run finished before it could be interrupted"
    victim.send_signal(signal.SIGTERM)
    out, err = victim.communicate(timeout=120)
    assert victim.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = _records(os.path.join(ROOT, relative_workdir))[-1]["step"]
    assert 7 <= stopped_at < 40
    assert "Traceback" not in err
    assert f"stopped at step {stopped_at} of 40" in err
    assert f"Resume with: python -m experiments.train --workdir={os.path.join(ROOT, relative_workdir)}" in err  # fmt: skip
    # The interrupt saved the step it stopped at: nothing to recompute, nothing dropped.
    assert str(stopped_at) in os.listdir(os.path.join(ROOT, relative_workdir, "checkpoints"))

    resumed = _train(*LONG, f"--workdir={relative_workdir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from step {stopped_at} of 40" in resumed.stdout
    assert reference.wait(timeout=300) == 0
    assert _records(os.path.join(ROOT, relative_workdir)) == _records(straight)
    assert "== Run finished: step 40 of 40 ==" in resumed.stdout


@pytest.mark.slow  # ~26 s; the SIGTERM rerun test above covers metrics in the default suite
def test_rerun_after_sigkill_keeps_replaced_lines(tmp_path):
    workdir = str(tmp_path / "w")
    victim = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *LONG, f"--workdir={workdir}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + 300
    while _line_count(metrics) < 11 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    before = _records(workdir)
    last = before[-1]["step"]
    resumed = _train(*LONG, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    start = int(resumed.stdout.split("Resuming from step ")[1].split()[0])
    assert start % 3 == 0 and start <= last
    replaced = os.path.join(workdir, "metrics.replaced.jsonl")
    with open(replaced) as f:
        moved = [json.loads(line)["step"] for line in f]
    # Every line the killed run logged is still somewhere, and the resumed run recomputed the
    # replaced steps bitwise.
    assert sorted(set(moved)) == list(range(start + 1, last + 1))
    after = _records(workdir)
    assert sorted({r["step"] for r in after}) == list(range(1, 41))
    assert after[: len(before)] == before


def test_old_outputs_without_checkpoint_are_moved_aside(tmp_path):
    workdir = tmp_path / "w"
    first = _train(*SMOKE, f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(workdir / "checkpoints")  # e.g. checkpoints deleted to save space
    old_metrics = (workdir / "metrics.jsonl").read_text()
    rerun = _train(*SMOKE, f"--workdir={workdir}")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    aside = [p for p in os.listdir(workdir) if p.startswith("previous-")]
    assert len(aside) == 1
    assert f"moved them to {workdir / aside[0]}" in rerun.stdout
    assert (workdir / aside[0] / "metrics.jsonl").read_text() == old_metrics
    assert [r["step"] for r in _records(workdir) if "loss" in r] == list(range(1, 13))


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for workdir in (straight, broken):
        done = _train(*SMOKE, f"--workdir={workdir}")
        assert done.returncode == 0, done.stderr[-2000:]
    state = broken / "checkpoints" / "12" / "state"
    for root, _, files in os.walk(state):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(os.path.getsize(f.name) // 3, 1))
    rerun = _train(*SMOKE, f"--workdir={broken}")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Checkpoint 12 is unreadable" in rerun.stdout
    assert "Resuming from step 9 of 12" in rerun.stdout
    kept = os.listdir(str(broken / "checkpoints") + ".unreadable")
    assert any(name.startswith("12-") for name in kept)  # moved aside, not deleted
    assert _records(broken) == _records(straight)


def test_eval_errors_name_steps_and_flags_that_exist(tmp_path):
    workdir = tmp_path / "w"
    done = _train(*SMOKE, f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-2000:]
    missing_step = subprocess.run(
        [sys.executable, "-m", "experiments.eval", f"--workdir={workdir}", "--step=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing_step.returncode == 2
    assert "No checkpoint at step 5" in missing_step.stderr
    assert "the steps there are [9, 12]" in missing_step.stderr
    assert "Traceback" not in missing_step.stderr
    nowhere = subprocess.run(
        [sys.executable, "-m", "experiments.eval", f"--workdir={tmp_path / 'nothing'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert nowhere.returncode == 2
    assert "Traceback" not in nowhere.stderr
    # The hint names a command and flags that exist.
    assert "python -m experiments.train --config=<file.py> --workdir=" in nowhere.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_train_with_the_readmes_overrides(relative_workdir):
    # README: `make train WORKDIR=DIR CONFIG=configs/x.py` (a relative DIR, as typed).
    done = subprocess.run(
        ["make", "-s", "train", "CONFIG=configs/toy.py:smoke", f"WORKDIR={relative_workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    workdir = os.path.join(ROOT, relative_workdir)
    assert f"Starting a run of 12 steps in {workdir}." in done.stdout
    assert "== Run finished: step 12 of 12 ==" in done.stdout
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "9"]
