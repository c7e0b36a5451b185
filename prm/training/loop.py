"""The generic train loop and evaluation run; a workdir is all a run needs to resume.

    workdir/
      config.json          the run's config (a resumed run must match it)
      checkpoints/<step>/  orbax: trainable params, optimiser state, step, PRNG key, data position
      metrics.jsonl        one JSON record per step (and "eval/…" records)
      tensorboard/         event files
      eval_<step>.json     results of `evaluate` runs
      hf/                  final Hugging Face export (LoRA merged, with the trainer's tokenizer)
      previous-<time>/     outputs of an earlier run that left no checkpoint, moved aside

Any workdir a user types works (relative, `~`, symlinked): it is made absolute first. A rerun
never loses data: it resumes (announced, appending to the metrics), or, when there is no
checkpoint to resume from, moves the old outputs aside. SIGINT/SIGTERM (TPU preemption) save a
checkpoint of the current step and say how to resume; an unreadable latest checkpoint is moved
aside and the run falls back to the newest good one. Errors a user can fix are `RunError`s,
printed by the entry points as one line.

Determinism: on a fixed device set, a run killed at any point (even SIGKILL mid-save) and
restarted from its workdir computes bitwise the same parameters and metrics as an uninterrupted
run: every source of randomness is in the checkpoint (PRNG key, data position) and orbax only
exposes fully written checkpoints.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from prm.models import ModelConfig, save_pretrained
from prm.registry import TRAINERS
from prm.training.checkpoints import Checkpointer, IncompatibleCheckpointError, RunError
from prm.training.lora import merge_lora
from prm.training.metrics_writer import MetricsWriter
from prm.training.optim import count_params, make_optimizer, trainable_filter
from prm.training.sharding import (
    DEFAULT_RULES,
    global_batch,
    make_mesh,
    replicated,
    tree_shardings,
)
from prm.training.state import TrainState, build_model
from prm.training.trainer import Trainer

# Config keys that only steer how a run is driven; a resumed run may change them. (`total_steps`
# is not one: it sets the learning-rate schedule.)
RUN_CONTROL_KEYS = frozenset(
    {
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "progress",
        "export_hf",
    }
)
CONFIG_FILE = "config.json"
# What a run writes into its workdir besides its config and checkpoints (moved aside, never
# deleted, when a run restarts from step 0 in a workdir that holds them).
RUN_OUTPUTS = ("metrics.jsonl", "metrics.replaced.jsonl", "tensorboard", "hf", "eval_*.json",
               "qa_*.md", "qa_*.csv")  # fmt: skip

# Scalars of an RL step worth a place in the final summary line, when a trainer logs them.
RL_SUMMARY_METRICS = ("reward", "exact_match", "kl", "entropy")


class Interrupted(RunError):
    """SIGINT/SIGTERM stopped the run after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def resolve_workdir(workdir: str) -> str:
    """The absolute path of a workdir as typed (relative, `~`, symlinks kept)."""
    if not workdir:
        raise RunError("No workdir given: pass --workdir=<directory>.")
    return os.path.abspath(os.path.expanduser(workdir))


@dataclasses.dataclass
class Run:
    """A built run: the model split into trainable state and frozen params, plus its tools."""

    config: Any
    workdir: str
    mesh: jax.sharding.Mesh
    trainer: Trainer
    model_config: ModelConfig
    graphdef: nnx.GraphDef
    frozen: nnx.State
    state: TrainState
    state_shardings: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    checkpointer: Checkpointer

    def model(self, state: TrainState | None = None) -> nnx.Module:
        """The full model with the params of `state` (default: the run's current state)."""
        state = self.state if state is None else state
        return nnx.merge(self.graphdef, state.params, self.frozen)


def config_from_workdir(
    workdir: str, hint: str = "Pass --config=<file.py> to start one there."
) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with; `hint` ends the error when there is none."""
    workdir = resolve_workdir(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        what = "does not exist" if not os.path.exists(workdir) else f"has no {CONFIG_FILE}"
        raise RunError(f"{workdir} {what}: it holds no run. {hint}")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _config_json(config: Any) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def check_or_write_config(config: Any, workdir: str) -> None:
    """Writes `config.json`, or checks a resumed run's config against the stored one.

    Raises `IncompatibleCheckpointError` listing every differing key (run-control keys such as
    `total_steps` may change); nothing in the workdir is modified in that case.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    current = _config_json(config)
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        diffs = _diff(stored, current)
        diffs = [d for d in diffs if d.split(":")[0] not in RUN_CONTROL_KEYS]
        if diffs:
            raise IncompatibleCheckpointError(
                f"The workdir {workdir} holds a run with a different config ({'; '.join(diffs)}). "
                "Use a fresh --workdir, or resume with the stored config "
                f"({path}) by passing only --workdir."
            )
        return
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in old or key not in new:
                out.append(f"{name}: only in {'stored' if key in old else 'new'} config")
            else:
                out.extend(_diff(old[key], new[key], name))
        return out
    return [] if old == new else [f"{prefix}: stored {old!r}, new {new!r}"]


def initialize_distributed(config: Any) -> None:
    """`jax.distributed.initialize()` once, for multi-host runs (`config.multihost`).

    Must run before anything touches a JAX backend. On TPU pod slices (and SLURM / Open MPI
    clusters) the coordinator address, process count and process id come from the environment.
    """
    if config.multihost and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def build_run(config: Any, workdir: str, devices: Sequence[jax.Device] | None = None) -> Run:
    """Mesh (over `devices`, default all), trainer, sharded model and optimiser state, and
    checkpointer; nothing is restored yet."""
    initialize_distributed(config)
    mesh = make_mesh(config.mesh, devices)
    rules = tuple(tuple(rule) for rule in config.sharding_rules) or DEFAULT_RULES
    with jax.set_mesh(mesh):
        trainer = TRAINERS.get(config.trainer)(config, mesh, workdir)
        model, model_config = build_model(config, mesh, rules)
        is_trainable = trainable_filter(config.optim.freeze, lora=config.lora.rank > 0)
        graphdef, params, frozen = nnx.split(model, is_trainable, ...)
        if not jax.tree.leaves(params):
            raise ValueError(
                f"No trainable parameters: optim.freeze={tuple(config.optim.freeze)} freezes "
                "every parameter."
            )
        tx, schedule = make_optimizer(config.optim, config.total_steps)

        def init_state(params: nnx.State) -> TrainState:
            return TrainState(
                step=jnp.zeros((), jnp.int32),
                params=params,
                opt_state=tx.init(params),
                rng=jax.random.PRNGKey(config.seed),
            )

        abstract = jax.eval_shape(init_state, params)
        state_shardings = tree_shardings(abstract, mesh, rules)
        state = jax.jit(init_state, out_shardings=state_shardings)(params)
    logging.info(
        "Model: %d trainable / %d frozen parameters; mesh %s.",
        count_params(params),
        count_params(frozen),
        dict(mesh.shape),
    )
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints, async_save=True
    )
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        trainer=trainer,
        model_config=model_config,
        graphdef=graphdef,
        frozen=frozen,
        state=state,
        state_shardings=state_shardings,
        tx=tx,
        schedule=schedule,
        checkpointer=checkpointer,
    )


def restore(run: Run, step: int | None = None) -> int:
    """Restores checkpoint `step` into `run`; returns its step, 0 if there is none.

    Without `step`, the newest readable checkpoint: one that fails to load (a truncated or
    corrupted file) is moved aside (`Checkpointer.set_aside`) and the next older one is tried,
    saying so. A checkpoint of another model or config (`IncompatibleCheckpointError`) is not
    corruption and stops the run. An explicit `step` that does not exist is a `RunError` listing
    the steps that do.
    """
    steps = run.checkpointer.all_steps()
    if step is not None and step not in steps:
        raise RunError(
            f"No checkpoint at step {step} in {run.checkpointer.directory}; the steps there are "
            f"{steps or 'none'}. Pass one of them, or no --step for the latest."
        )
    for candidate in [step] if step is not None else reversed(steps):
        try:
            with jax.set_mesh(run.mesh):
                run.state, meta = run.checkpointer.restore(candidate, run.state)
        except IncompatibleCheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is set aside
            if step is not None:
                raise RunError(f"Checkpoint {candidate} cannot be read: {_first_line(e)}") from e
            where = run.checkpointer.set_aside(candidate, f"{type(e).__name__}: {e}")
            _say(
                f"Checkpoint {candidate} is unreadable ({_first_line(e)}); moved it to {where} "
                "and falling back to the previous checkpoint."
            )
            continue
        run.trainer.restore_data_state(meta["data"])
        return candidate
    return 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _say(message: str) -> None:
    """A line for the person running the job (process 0 only, on stdout)."""
    if jax.process_index() == 0:
        print(message, flush=True)


def make_train_step(run: Run, batch_shardings: Any) -> Callable:
    """The jitted update `(state, frozen, batch) -> (state, metrics)`; `state` is donated."""
    graphdef, tx, schedule, trainer = run.graphdef, run.tx, run.schedule, run.trainer

    def train_step(state: TrainState, frozen: nnx.State, batch: dict[str, jax.Array]):
        rng, step_rng = jax.random.split(state.rng)

        def loss_of(params):
            return trainer.loss(nnx.merge(graphdef, params, frozen), batch, step_rng)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state.step),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    frozen_shardings = jax.tree.map(lambda x: x.sharding, run.frozen)
    return jax.jit(
        train_step,
        in_shardings=(run.state_shardings, frozen_shardings, batch_shardings),
        out_shardings=(run.state_shardings, replicated(run.mesh)),
        donate_argnums=0,
    )


def train(config: Any, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run in `workdir` to `config.total_steps`; returns last metrics.

    Prints where the run is (start or resume), and at the end a summary: final metrics, the
    trainer's results table, and where the workdir, HF export and TensorBoard logs are.
    """
    workdir = resolve_workdir(workdir)
    initialize_distributed(config)
    check_or_write_config(config, workdir)
    run = build_run(config, workdir)
    start = restore(run)
    if start:
        _say(f"Resuming from step {start} of {config.total_steps}, workdir {workdir}.")
    else:
        moved = set_aside_old_outputs(workdir)
        if moved:
            _say(
                f"{workdir} held outputs of an earlier run but no checkpoint: moved them to {moved}."
            )
        _say(f"Starting a run of {config.total_steps} steps in {workdir}.")
    _say(f"Config ({config.trainer} trainer): {os.path.join(workdir, CONFIG_FILE)}")
    writer = MetricsWriter(workdir, config.total_steps, start, progress=config.progress)
    if replaced := writer.truncate_after(start):
        _say(
            f"{replaced} metric lines logged after step {start} by the interrupted run are "
            f"recomputed; the old lines are kept in {writer.replaced_path}."
        )
    train_step = None
    metrics: dict[str, float] = {}
    eval_results: dict[str, float] = {}
    saved_step = start
    try:
        with _StopOnSignal() as stop:
            for step in range(start + 1, config.total_steps + 1):
                with jax.set_mesh(run.mesh):
                    batch = global_batch(run.trainer.next_batch(run.model()), run.mesh)
                    if train_step is None:
                        train_step = make_train_step(run, jax.tree.map(lambda x: x.sharding, batch))
                    started = time.perf_counter()
                    run.state, device_metrics = train_step(run.state, run.frozen, batch)
                    metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
                elapsed = time.perf_counter() - started
                metrics["step_time_s"] = elapsed
                metrics["tokens_per_s"] = batch["tokens"].size / elapsed
                if step % config.log_every == 0 or not _finite(metrics):
                    writer.write(step, metrics)
                writer.advance(step, metrics)
                if not _finite(metrics):
                    run.checkpointer.wait()
                    raise FloatingPointError(
                        f"Non-finite loss ({metrics['loss']}) or gradient norm "
                        f"({metrics['grad_norm']}) at step {step}; stopped without saving this "
                        f"state. The last good checkpoint is step "
                        f"{run.checkpointer.latest_step()} in {run.checkpointer.directory}. Lower "
                        f"optim.lr or inspect the batch of step {step}."
                    )
                if config.eval_every and (
                    step % config.eval_every == 0 or step == config.total_steps
                ):
                    with jax.set_mesh(run.mesh):
                        eval_results = run.trainer.evaluate(run.model(), step)
                    writer.write(step, eval_results, prefix="eval/")
                if step % config.checkpoint_every == 0 or step == config.total_steps:
                    run.checkpointer.save(step, run.state, {"data": run.trainer.data_state()})
                    saved_step = step
                run.checkpointer.check_for_errors()
                if stop.signum is not None:
                    if saved_step != step:
                        run.checkpointer.save(step, run.state, {"data": run.trainer.data_state()})
                    run.checkpointer.wait()
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(
                        f"{name}: stopped at step {step} of {config.total_steps} with a "
                        f"checkpoint in {run.checkpointer.directory}. Resume with: python -m "
                        f"experiments.train --workdir={workdir}",
                        stop.signum,
                    )
        run.checkpointer.wait()
        if config.export_hf:
            export_hf(run, os.path.join(workdir, "hf"))
    finally:
        writer.close()
        run.checkpointer.close()
    _say(run_summary(run, metrics, eval_results, writer))
    return metrics


class _StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step (so it can save
    a checkpoint); a second one acts as the previous handler would (Ctrl-C twice kills)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.signum = signum
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        _say(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step.")

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def set_aside_old_outputs(workdir: str) -> str | None:
    """Moves an earlier run's outputs (`RUN_OUTPUTS`) into `workdir/previous-<time>/`; returns
    that directory, or None when there was nothing to move. Only process 0 moves files."""
    found = sorted(
        {p for pattern in RUN_OUTPUTS for p in glob.glob(os.path.join(workdir, pattern))}
    )
    if not found or jax.process_index() != 0:
        return None
    target = os.path.join(workdir, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 0
    while os.path.exists(target + (f"-{suffix}" if suffix else "")):
        suffix += 1
    target += f"-{suffix}" if suffix else ""
    os.makedirs(target)
    for path in found:
        os.rename(path, os.path.join(target, os.path.basename(path)))
    return target


def run_summary(
    run: Run, metrics: dict[str, float], eval_results: dict[str, float], writer: MetricsWriter
) -> str:
    """What a finished run prints: final metrics, the trainer's results, and where things are."""
    config, workdir = run.config, run.workdir
    shown = ("loss", "grad_norm", *RL_SUMMARY_METRICS)
    final = "  ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
    lines = [f"== Run finished: step {config.total_steps} of {config.total_steps} =="]
    if final:
        lines.append(f"final metrics: {final}")
    if table := run.trainer.results_table(eval_results):
        lines += ["", table.rstrip(), ""]
    lines.append(f"workdir      {workdir}")
    lines.append(f"metrics      {writer.path}")
    lines.append(
        f"checkpoints  {run.checkpointer.directory} (steps {run.checkpointer.all_steps()})"
    )
    hf = os.path.join(workdir, "hf")
    if config.export_hf and os.path.isdir(hf):
        with_tokenizer = os.path.exists(os.path.join(hf, "tokenizer_config.json"))
        loads = (
            "AutoModelForCausalLM and AutoTokenizer" if with_tokenizer else "AutoModelForCausalLM"
        )
        lines.append(f"HF export    {hf} (transformers {loads}.from_pretrained load it)")
    if writer.tensorboard_dir:
        lines.append(f"TensorBoard  tensorboard --logdir {writer.tensorboard_dir}")
    if headline := run.trainer.headline(eval_results):
        lines.append(headline)
    return "\n".join(lines)


def _finite(metrics: dict[str, float]) -> bool:
    return bool(np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]))


def export_hf(run: Run, path: str) -> None:
    """Saves the current model (LoRA merged into the base weights) as a Hugging Face dir.

    Every process must call it: on several hosts the shards are first gathered to each host.
    """
    model = run.model()
    merge_lora(model)
    if jax.process_count() > 1:
        nnx.update(model, multihost_utils.process_allgather(nnx.state(model), tiled=True))
    if jax.process_index() == 0:
        # Written beside `path` and renamed into place, so a run killed mid-export never leaves a
        # directory that looks complete (ensure_sft_checkpoint trusts `hf/config.json`), and an
        # earlier export is only replaced once the new one is whole.
        partial = f"{path}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_pretrained(model, run.model_config, partial)
        if (tokenizer := run.trainer.tokenizer()) is not None:
            tokenizer.save_pretrained(partial)
        if os.path.exists(path):
            previous = f"{path}.previous"
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(path, previous)
            os.rename(partial, path)
            shutil.rmtree(previous)
        else:
            os.rename(partial, path)


def evaluate(workdir: str, step: int | None = None) -> dict[str, float]:
    """Evaluates checkpoint `step` (default latest) of the run in `workdir`.

    Writes `workdir/eval_<step>.json`.
    """
    workdir = resolve_workdir(workdir)
    config = config_from_workdir(
        workdir,
        hint=f"Train one first: python -m experiments.train --config=<file.py> --workdir={workdir}",
    )
    run = build_run(config, workdir)
    step = restore(run, step)
    if step == 0:
        run.checkpointer.close()
        raise RunError(
            f"No checkpoint in {run.checkpointer.directory} to evaluate: the run has not saved "
            f"one yet. Resume it with: python -m experiments.train --workdir={workdir}"
        )
    with jax.set_mesh(run.mesh):
        results = {k: float(v) for k, v in run.trainer.evaluate(run.model(), step).items()}
    run.checkpointer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{step}.json"), "w") as f:
            json.dump({"step": step, **results}, f, indent=2)
    return results
