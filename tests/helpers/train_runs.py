"""`python -m experiments.train` runs as a user types them, for the trainers' smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_as_typed(config: str, workdir: str | os.PathLike[str], timeout: float = 900) -> None:
    """Runs `python -m experiments.train --config=configs/<config> --workdir=<workdir>` from the
    repository root and checks that it succeeds and ends by printing the held-out EM."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--config=configs/{config}",
         f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("held-out EM: ")
