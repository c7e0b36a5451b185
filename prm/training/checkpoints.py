"""Orbax checkpoints of a whole training state: arrays (sharded) plus a JSON side record.

Each checkpoint `workdir/checkpoints/<step>/` holds two items:
  * `state`: every array of the train state (trainable params, optimiser state, step, PRNG key),
    saved by path name (`params.layers.0.attn.q_proj.kernel`, `opt_state.0.mu.…`) so a restore
    can name exactly which array does not fit;
  * `meta`: JSON (data-iterator position, anything else the loop needs to resume exactly).

Orbax's `CheckpointManager` writes into a temporary directory and renames it only once every
host has finished (atomic finalize), so a process killed mid-save leaves no half-written step
that `latest_step()` could return. Saves are asynchronous: the arrays are copied to host memory
and written in a background thread while training continues.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from prm.training.sharding import path_to_str


class RunError(Exception):
    """A run cannot go on for a reason the user can fix; the message says what and how.

    Entry points print these as one line (no traceback).
    """


class IncompatibleCheckpointError(RunError, ValueError):
    """The checkpoint in a workdir does not fit the run's state (another model or config)."""


class CheckpointSaveError(RunError):
    """An (asynchronous) checkpoint save failed; the run stops at once rather than train on
    without checkpoints."""


def flatten_by_name(tree: Any) -> dict[str, Any]:
    """{dotted path: leaf}; raises if two leaves map to the same name."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    flat = {path_to_str(path): leaf for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("Two leaves of the train state have the same dotted path.")
    return flat


def unflatten_by_name(like: Any, flat: Mapping[str, Any]) -> Any:
    """Inverse of `flatten_by_name` for a tree with the structure of `like`."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[path_to_str(p)] for p, _ in paths])


class Checkpointer:
    """Keeps the last `keep` checkpoints of a train state under `directory`."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        # orbax refuses relative paths; a workdir typed as `workdirs/run` or `~/run` must work.
        self.directory = epath.Path(os.path.abspath(os.path.expanduser(directory)))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def set_aside(self, step: int, reason: str) -> str:
        """Moves checkpoint `step` out of the managed directory (kept, never deleted) into
        `<directory>.unreadable/<step>-<time>`; returns where it went."""
        self.wait()
        target = (
            epath.Path(f"{self.directory}.unreadable") / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        (self.directory / str(step)).rename(target)
        (target.parent / "README.txt").write_text(
            "Checkpoints that could not be restored, moved here by prm instead of deleted.\n"
        )
        with open(os.fspath(target) + ".reason.txt", "w") as f:
            f.write(reason + "\n")
        self._manager.reload()
        return os.fspath(target)

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Starts saving `state` (any pytree of arrays) and `meta` (JSON) as `step`."""
        self.check_for_errors()
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(flatten_by_name(state)),
                    meta=ocp.args.JsonSave(dict(meta)),
                ),
            )
        except Exception as e:  # noqa: BLE001 - any failure to start a save ends the run
            raise CheckpointSaveError(self._save_failed(step, e)) from e

    def check_for_errors(self) -> None:
        """Raises `CheckpointSaveError` if a background save has failed since the last call."""
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise CheckpointSaveError(self._save_failed(None, e)) from e

    def _save_failed(self, step: int | None, error: Exception) -> str:
        which = "a checkpoint" if step is None else f"checkpoint {step}"
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"Saving {which} to {self.directory} failed: {detail}. The run stopped so that it "
            "does not train on without checkpoints; fix the cause (disk space, permissions, path) "
            "and rerun the same command to resume from the last good checkpoint."
        )

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Restores `step` into the structure, shapes, dtypes and shardings of `like`.

        `like` may hold arrays or `jax.ShapeDtypeStruct`s with `.sharding`; arrays are read
        directly into their target shardings. Raises `IncompatibleCheckpointError` naming the
        first array whose name, shape or dtype differs.
        """
        target = {
            name: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
            for name, leaf in flatten_by_name(like).items()
        }
        stored = self._manager.item_metadata(step)["state"]
        _check_compatible(stored, target, self.directory / str(step))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return unflatten_by_name(like, restored["state"]), dict(restored["meta"])

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are finalized; raises `CheckpointSaveError`
        if one failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise CheckpointSaveError(self._save_failed(None, e)) from e
        self.check_for_errors()

    def close(self) -> None:
        self._manager.close()


def _check_compatible(stored: Mapping[str, Any], target: Mapping[str, Any], where: Any) -> None:
    missing = sorted(set(target) - set(stored))
    extra = sorted(set(stored) - set(target))
    if missing or extra:
        raise IncompatibleCheckpointError(
            f"Checkpoint {where} does not match this run's state: missing {missing[:5]}, "
            f"unexpected {extra[:5]}. It was written by a different model/trainer config; use a "
            "fresh --workdir or the config the checkpoint was trained with."
        )
    for name, want in target.items():
        have = stored[name]
        if tuple(have.shape) != tuple(want.shape) or have.dtype != want.dtype:
            raise IncompatibleCheckpointError(
                f"Checkpoint {where}: {name!r} is {have.dtype}{list(have.shape)} but this run "
                f"expects {want.dtype}{list(want.shape)}. Use a fresh --workdir or the config "
                "the checkpoint was trained with."
            )
