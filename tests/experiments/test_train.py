"""End-to-end runs of `python -m experiments.train` / `experiments.eval` in subprocesses."""

import json
import os
import shlex
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


# A subprocess killed mid-run (~40-55 s); the in-process resume tests of tests/training/test_loop.py
# run in the default suite.
@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    straight, _ = _kill_and_resume(tmp_path, FLAGS)
    evaluated = _run([f"--workdir={straight}"], module="experiments.eval")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    with open(os.path.join(straight, "eval_60.json")) as f:
        assert json.load(f)["step"] == 60


# (what a user types after `python -m experiments.train`, what the one error line must say)
CONFIG_FILES = sorted(
    name
    for name in os.listdir(os.path.join(ROOT, "configs"))
    if name.endswith(".py") and name not in ("__init__.py", "common.py")
)
MISTAKES = [
    (
        "--config=configs/sft.py:smok --workdir={tmp}/run",
        "error: configs/sft.py:smok: Unknown config option 'smok'; valid options are "
        "smoke=False, steps=600.",
    ),
    (
        "--config=configs/toy.py:smoke --config.optim.lrr=1 --workdir={tmp}/run",
        "error: Unknown config key 'optim.lrr'; valid keys of optim: b1, b2,",
    ),
    (
        "--config=configs/sft.py --config.optim.lr=abc --workdir={tmp}/run",
        "error: --config.optim.lr=abc: config.optim.lr is of type float (now 0.002); could not "
        "convert string to float: 'abc'.",
    ),
    (
        "--config=configs/nope.py --workdir={tmp}/run",
        f"error: Config file configs/nope.py does not exist (relative to the current directory, "
        f"{ROOT}). Config files there: "
        + ", ".join(f"configs/{name}" for name in CONFIG_FILES)
        + ".",
    ),
    (
        "--config=configs/toy.py:smoke --workdir={tmp}/a_file/run",
        "error: --workdir={tmp}/a_file/run: {tmp}/a_file is a file, not a directory; pass a "
        "--workdir in a directory you can write to",
    ),
    ("", "error: pass --config=FILE.py to start a run (its workdir defaults to workdirs/NAME)"),
    (
        "--workdir={tmp}/run",
        "error: {tmp}/run does not exist: it holds no run. Pass --config",
    ),
]
if os.path.isdir("/proc/self"):  # Linux: a filesystem nobody, root included, can create dirs in
    MISTAKES.append(
        (
            "--config=configs/toy.py:smoke --workdir=/proc/prm-run",
            "error: --workdir=/proc/prm-run: cannot write in /proc (",
        )
    )


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    """{typed: (its tmp dir, stderr, exit status)}, all commands run at once (each is mostly
    imports)."""
    started = {}
    for typed, _ in MISTAKES:
        tmp = tmp_path_factory.mktemp("mistake")
        (tmp / "a_file").write_text("")
        started[typed] = tmp, subprocess.Popen(
            _command(*shlex.split(typed.format(tmp=tmp))), cwd=ROOT, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    return {typed: (tmp, p.communicate()[1], p.returncode) for typed, (tmp, p) in started.items()}


@pytest.mark.parametrize(("typed", "expected"), MISTAKES, ids=[t for t, _ in MISTAKES])
def test_command_line_mistakes_are_one_line_with_the_remedy(mistakes, typed, expected):
    tmp, stderr, returncode = mistakes[typed]
    assert returncode == 2
    assert stderr.splitlines() == [stderr.strip()], stderr  # one line, no traceback
    assert stderr.startswith(expected.format(tmp=tmp)), stderr
    assert sorted(os.listdir(tmp)) == ["a_file"]  # nothing was created


# A subprocess killed mid-run (~40-55 s); the in-process resume tests of tests/training/test_loop.py
# run in the default suite.
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


def test_default_workdir_is_named_after_the_config(tmp_path):
    from prm.train import default_workdir

    assert default_workdir("configs/slate.py") == os.path.join("workdirs", "slate")
    assert default_workdir("configs/slate.py:k=3,smoke") == os.path.join(
        "workdirs", "slate-k=3-smoke"
    )
    # As typed, without --workdir, from another directory: the run lands in ./workdirs/<name>.
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        _command(f"--config={ROOT}/configs/toy.py:smoke", "--config.total_steps=2"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    workdir = tmp_path / "workdirs" / "toy-smoke"
    assert f"Starting a run of 2 steps in {workdir}." in done.stdout
    assert (workdir / "checkpoints" / "2").is_dir()
