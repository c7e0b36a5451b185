r"""Trains (or resumes) one run; the workdir holds everything the run needs.

    python -m prm.train --config=my_config.py:smoke --workdir=/tmp/run
    python -m prm.train --config=my_config.py --config.optim.lr=1e-3 --workdir=/tmp/run
    python -m prm.train --workdir=/tmp/run     # resume with the stored config
    python -m prm.train --config=my_config.py  # workdir: workdirs/my_config
    python -m prm.train --config=my_config.py --config.dry_run=True  # memory per device only

In the prm repository `python -m experiments.train` runs this with the repository's
`configs/`; a project that installs prm writes its own config files (`prm.training.config`).
A mistake on the command line (a config file or option that does not exist, an override of the
wrong type, a workdir that cannot be written) is one line on stderr saying what to do, and
nothing is created.

Multi-host (TPU pod slice): run the same command on every host with `--config.multihost=True`;
each host loads its own slice of every batch.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from prm.training.checkpoints import RunError
from prm.training.config import ConfigFileError, load_config
from prm.training.loop import Interrupted, config_from_workdir, train
from prm.training.memory_plan import check_fits, format_plan, memory_plan

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with options: path.py:opt1,opt2=v.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (config, checkpoints, metrics). Default with --config: workdirs/<config name>"
    "[-<options>] under the current directory.",
)

_CONFIG_FLAG = re.compile(r"^--?config(=|$)")
_BAD_OVERRIDE = re.compile(r"^flag --config\.([\w.]+)=(.*?): (.*)$", re.S)


def fail(message: str) -> NoReturn:
    """Ends the program with `message` as one `error:` line on stderr (exit status 2)."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def _config_position(argv: Sequence[str]) -> tuple[int, str] | None:
    """(index in argv of the --config value, its text), or None without --config."""
    for i, arg in enumerate(argv):
        match = _CONFIG_FLAG.match(arg)
        if match and match.group(1) == "=":
            return i, arg[match.end() :]
        if match and i + 1 < len(argv):  # `--config path.py`
            return i + 1, argv[i + 1]
    return None


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


def flag_error_message(error: Exception, argv: Sequence[str], config) -> str:
    """One line for a flag-parsing failure: an unknown config key, a value of the wrong type
    (saying the field's type and current value), a missing --workdir, else absl's first line."""
    if config is not None and (message := unknown_override(argv, config)):
        return message
    text = str(error)
    bad = _BAD_OVERRIDE.match(text)
    if config is not None and bad:
        field, value, reason = bad.groups()
        current = config
        for key in field.split("."):
            current = current[key]
        if isinstance(current, ml_collections.ConfigDict):
            first = next(iter(current.keys()), "FIELD")
            remedy = f"set its fields one by one, e.g. --config.{field}.{first}=VALUE"
            return f"--config.{field}={value}: config.{field} is a group of fields; {remedy}."
        if isinstance(current, bool):
            reason = "pass True or False"
        return (
            f"--config.{field}={value}: config.{field} is of type {type(current).__name__} "
            f"(now {current!r}); {reason.splitlines()[0].rstrip('.')}."
        )
    if "Flag --workdir must have a value" in text:
        return "--workdir is required: the run's directory, e.g. --workdir=workdirs/NAME."
    return f"{text.splitlines()[0]} (--helpshort lists the flags)"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a mistake on the command line is one line, not a traceback.

    The config file is loaded once before absl parses the flags, so a missing file, a failed
    import in it or an unknown option gets a message naming the file (`load_config`); `~` in the
    path is expanded.
    """
    config = None
    position = _config_position(argv)
    if position is not None:
        index, spec = position
        try:
            config = load_config(spec)
        except ConfigFileError as error:
            fail(str(error))
        argv = [*argv[:index], _expanded(argv[index], spec.partition(":")[0]), *argv[index + 1 :]]
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError) as error:
        fail(flag_error_message(error, argv, config))


def _expanded(arg: str, path: str) -> str:
    """`arg` (a --config flag or its value) with `~` in the config path expanded."""
    return arg.replace(path, os.path.expanduser(path), 1)


def default_workdir(config_spec: str) -> str:
    """`workdirs/<config file stem>[-<options>]` (relative to the current directory) for a run
    started without --workdir: `configs/slate.py:k=3,smoke` → `workdirs/slate-k=3-smoke`."""
    path, _, options = config_spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    if options:
        name += "-" + re.sub(r"[^\w.=+-]", "-", options.replace(",", "-"))
    return os.path.join("workdirs", name)


def workdir_problem(workdir: str) -> str | None:
    """Why `workdir` cannot hold a run (not a directory, or not writable), or None.

    Probes by creating and removing a directory inside it (or inside its deepest existing
    parent), so permissions, read-only mounts and special filesystems all count.
    """
    if not workdir:
        return "--workdir is empty; pass the run's directory, e.g. --workdir=~/prm-runs/NAME."
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    remedy = "pass a --workdir in a directory you can write to (e.g. --workdir=~/prm-runs/NAME)"
    if not os.path.isdir(existing):
        return f"--workdir={workdir}: {existing} is a file, not a directory; {remedy}."
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".prm-write-test-", dir=existing))
    except OSError as error:
        return f"--workdir={workdir}: cannot write in {existing} ({error.strerror}); {remedy}."
    return None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; flags are --config=FILE.py[:options], "
             "--config.FIELD=VALUE and --workdir=DIR.")  # fmt: skip
    workdir = _WORKDIR.value
    if workdir is None:
        position = _config_position(sys.argv)
        if position is None:
            fail("pass --config=FILE.py to start a run (its workdir defaults to workdirs/NAME), "
                 "or --workdir=DIR to resume one.")  # fmt: skip
        workdir = default_workdir(position[1])
    workdir = os.path.expanduser(workdir)
    if problem := workdir_problem(workdir):
        fail(problem)
    workdir = os.path.abspath(workdir)  # orbax needs absolute checkpoint paths
    if not flags.FLAGS["verbosity"].present:
        # Orbax logs every file operation at INFO; keep the console to the progress bar.
        logging.set_verbosity(logging.WARNING)
    try:
        config = _CONFIG.value
        if config is None:
            config = config_from_workdir(workdir)
            config.lock()
        if config.get("dry_run"):  # the memory plan only: no workdir, data, world or trainer
            plan = memory_plan(config)
            print(format_plan(plan))
            check_fits(plan, config)
            return
        train(config, workdir)
    except Interrupted as stop:  # SIGINT/SIGTERM: a checkpoint was saved; say how to resume
        sys.stderr.write(f"{stop}\n")
        sys.exit(stop.exit_code)
    except RunError as error:  # one line; anything else keeps its traceback
        fail(str(error))


def run() -> None:
    """`python -m prm.train` (and `python -m experiments.train` in the repository)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
