"""Evaluates a checkpoint of a run with its trainer's `evaluate`; writes `eval_<step>.json`.

Usage:
    python -m experiments.eval --workdir=/tmp/toy              # latest checkpoint
    python -m experiments.eval --workdir=/tmp/toy --step=200
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from prm.training.checkpoints import RunError
from prm.training.loop import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        results = evaluate(_WORKDIR.value, _STEP.value)
    except (
        RunError
    ) as error:  # one line, as prm.train prints them; anything else keeps its traceback
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
