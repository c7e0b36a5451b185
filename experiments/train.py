r"""Trains (or resumes) one run; the workdir holds everything the run needs.

    python -m experiments.train --config=configs/toy.py:smoke --workdir=/tmp/toy
    python -m experiments.train --config=configs/toy.py --config.optim.lr=1e-3 --workdir=/tmp/toy
    python -m experiments.train --workdir=/tmp/toy     # resume with the stored config

Multi-host (TPU pod slice): run the same command on every host with `--config.multihost=True`;
each host loads its own slice of every batch.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from prm.training.checkpoints import RunError
from prm.training.loop import Interrupted, config_from_workdir, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with options: path.py:opt1,opt2=v.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config, checkpoints, metrics).")
flags.mark_flag_as_required("workdir")


def _load_config_file(argv: Sequence[str]):
    spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def unknown_override(argv: Sequence[str], config) -> str | None:
    """The error message for the first `--config.a.b=v` naming a key `config` lacks, or None."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0].split(".")
        node = config
        for depth, key in enumerate(path):
            if not hasattr(node, "keys") or key not in node:
                parent = ".".join(path[:depth]) or "the config"
                valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none)"
                return f"Unknown config key {'.'.join(path)!r}; valid keys of {parent}: {valid}."
            node = node[key]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a misspelt `--config.key` into one clear flags error."""
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError):
        message = unknown_override(argv, _load_config_file(argv))
        if message is None:
            raise
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
        sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax logs every file operation at INFO; keep the console to the progress bar.
        logging.set_verbosity(logging.WARNING)
    try:
        config = _CONFIG.value
        if config is None:
            config = config_from_workdir(_WORKDIR.value)
            config.lock()
        train(config, _WORKDIR.value)
    except RunError as e:
        # Errors the user can fix are one line; anything else keeps its traceback.
        sys.stderr.write(f"{'' if isinstance(e, Interrupted) else 'error: '}{e}\n")
        sys.exit(getattr(e, "exit_code", 1))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
