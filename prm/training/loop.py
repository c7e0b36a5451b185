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
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
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
from prm.training.optim import count_params, make_part_optimizer, updates_per_step
from prm.training.sharding import (
    DEFAULT_RULES,
    global_batch,
    make_mesh,
    tree_shardings,
)
from prm.training.state import TrainState, build_parts, merge_parts
from prm.training.trainer import Trainer
from prm.training.update import (
    DEFAULT_UPDATES,
    check_update_config,
    make_prepare_fn,
    make_update_fn,
    minibatch_orders,
)

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
        "eval_at_start",
        "dry_run",
        "dry_run_devices",
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
    """A built run: named model parts split into trainable state and frozen params, plus tools.

    Parts (`Run.parts`): "policy" always; "reference" when `config.reference` asks for one (a
    frozen copy of the initial policy, or the policy with its LoRA adapters zeroed — no second
    copy of the base weights); and every extra trainable part of `config.parts` (an implicit
    PRM, a value model), each with its own optimiser settings. All trainable parts live in one
    `TrainState`, so one checkpoint holds them and resume stays exact.
    """

    config: Any
    workdir: str
    mesh: jax.sharding.Mesh
    trainer: Trainer
    model_config: ModelConfig
    graphdefs: dict[str, nnx.GraphDef]
    frozen: dict[str, nnx.State]
    state: TrainState
    state_shardings: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    checkpointer: Checkpointer

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.graphdefs)

    def models(self, state: TrainState | None = None) -> dict[str, nnx.Module]:
        """Every part as a module with the params of `state` (default: the current state)."""
        state = self.state if state is None else state
        return merge_parts(self.graphdefs, state.params, self.frozen)

    def model(self, state: TrainState | None = None) -> nnx.Module:
        """The policy with the params of `state` (default: the run's current state)."""
        return self.models(state)["policy"]


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
    """Mesh (over `devices`, default all), sharded model parts, optimiser state, trainer and
    checkpointer; nothing is restored yet. The trainer is built last, with the initial parts."""
    initialize_distributed(config)
    mesh = make_mesh(config.mesh, devices)
    rules = tuple(tuple(rule) for rule in config.sharding_rules) or DEFAULT_RULES
    with jax.set_mesh(mesh):
        if config.get("warm_start"):
            config = _with_warm_start(config)
        graphdefs, params, frozen, model_config = build_parts(config, mesh, rules)
        tx, schedule = make_part_optimizer(config, updates_per_step(config))

        def init_state(params: dict[str, nnx.State]) -> TrainState:
            return TrainState(
                step=jnp.zeros((), jnp.int32),
                params=params,
                opt_state=tx.init(params),
                rng=jax.random.PRNGKey(config.seed),
            )

        abstract = jax.eval_shape(init_state, params)
        state_shardings = tree_shardings(abstract, mesh, rules)
        state = jax.jit(init_state, out_shardings=state_shardings)(params)
        trainer = TRAINERS.get(config.trainer)(config, mesh, workdir)
        trainer.setup(merge_parts(graphdefs, state.params, frozen))
    logging.info(
        "Parts %s: %d trainable / %d frozen parameters; mesh %s.",
        list(graphdefs),
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
        graphdefs=graphdefs,
        frozen=frozen,
        state=state,
        state_shardings=state_shardings,
        tx=tx,
        schedule=schedule,
        checkpointer=checkpointer,
    )


def _with_warm_start(config: Any) -> Any:
    """`config` with `model.init_from` set to the HF export of its `warm_start` run (a whole
    config, e.g. the SFT warm start), trained first if no earlier run left it."""
    hf_dir = ensure_warm_start(config.warm_start, config.get("warm_start_dir", ""))
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.model.init_from = hf_dir
    resolved.lock()
    return resolved


# Warm starts shipped with the package (`prm/assets/warm_starts/<warm_start_name>/hf`): used
# instead of training when the config matches, so a fresh clone's RL run starts at once.
SHIPPED_WARM_STARTS = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "assets", "warm_starts"
)


def warm_start_name(warm_start: Any) -> str:
    """`<trainer>-<hash>` of a warm-start config; keys that only steer how a run is driven
    (`RUN_CONTROL_KEYS`) do not count, so the same training gives the same name."""
    spec = {k: v for k, v in _config_json(warm_start).items() if k not in RUN_CONTROL_KEYS}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"{warm_start.trainer}-{digest}"


def ensure_warm_start(warm_start: Any, directory: str = "") -> str:
    """The HF export of the run `warm_start` (a config): the one shipped with prm when its name
    matches (`SHIPPED_WARM_STARTS`), else trained once into `directory` (default
    `$PRM_CACHE_DIR/warm_starts/<warm_start_name>`, shared by every run that names the same warm
    start). A run interrupted before its export resumes from its checkpoint."""
    if not directory:
        shipped = os.path.join(SHIPPED_WARM_STARTS, warm_start_name(warm_start), "hf")
        if os.path.isfile(os.path.join(shipped, "config.json")):
            return shipped
        root = os.environ.get("PRM_CACHE_DIR") or os.path.join("~", ".cache", "prm")
        directory = os.path.join(root, "warm_starts", warm_start_name(warm_start))
    directory = resolve_workdir(directory)
    export = os.path.join(directory, "hf")
    if not os.path.isfile(os.path.join(export, "config.json")):
        _say(f"Training the warm start ({warm_start.trainer}) into {directory} (once).")
        train(warm_start, directory)
    return export


def load_warm_start(warm_start: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of the warm-start run's HF export (`ensure_warm_start`: shipped,
    cached, or trained now): a `prm.models.Transformer` and its Hugging Face tokenizer."""
    import transformers  # noqa: PLC0415 - slow to import

    from prm.models import from_pretrained  # noqa: PLC0415

    hf_dir = ensure_warm_start(warm_start)
    model, _ = from_pretrained(hf_dir)
    return model, transformers.AutoTokenizer.from_pretrained(hf_dir)


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


class Stepper:
    """Runs train steps: the trainer's batch, `prepare`, then the optimiser updates of
    `prm.training.update` (jitted once per batch shape)."""

    def __init__(self, run: Run):
        self.run = run
        self.updates = run.config.get("updates") or ml_collections.ConfigDict(DEFAULT_UPDATES)
        self._prepare = make_prepare_fn(run)
        self._update_fns: dict[int, Any] = {}
        self._advance = jax.jit(
            lambda state: state.replace(step=state.step + 1),
            in_shardings=(run.state_shardings,),
            out_shardings=run.state_shardings,
            donate_argnums=0,
        )

    def __call__(self, step: int) -> dict[str, float]:
        run, config = self.run, self.run.config
        rollout_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step)
        started = time.perf_counter()
        with jax.set_mesh(run.mesh):
            local, host_metrics = run.trainer.next_batch(run.models(), step, rollout_rng)
            batch_s = time.perf_counter() - started
            started = time.perf_counter()
            batch = global_batch(local, run.mesh)
            if self._prepare is not None:
                batch = self._prepare(run.state.params, run.frozen, batch)
            rows = next(iter(batch.values())).shape[0]
            _, micro = check_update_config(self.updates, rows)
            if micro not in self._update_fns:
                self._update_fns[micro] = make_update_fn(run, micro)
            update = self._update_fns[micro]
            per_update = []
            for order in minibatch_orders(self.updates, rows, config.seed, step):
                run.state, device_metrics = update(run.state, run.frozen, batch, order)
                per_update.append(device_metrics)
            run.state = self._advance(run.state)
            per_update = jax.device_get(per_update)
        update_s = time.perf_counter() - started
        metrics = {k: float(np.mean([m[k] for m in per_update])) for k in per_update[0]}
        metrics.update(host_metrics)
        # The learning rate of this step's first update.
        metrics["learning_rate"] = float(run.schedule((step - 1) * updates_per_step(config)))
        metrics["batch_time_s"], metrics["update_time_s"] = batch_s, update_s
        metrics["step_time_s"] = batch_s + update_s
        metrics["tokens_per_s"] = self.updates.ppo_epochs * local["tokens"].size / update_s
        return metrics


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
    stepper = Stepper(run)
    metrics: dict[str, float] = {}
    eval_results: dict[str, float] = {}
    saved_step = start
    try:
        if start == 0 and config.get("eval_at_start"):
            with jax.set_mesh(run.mesh):
                eval_results = run.trainer.evaluate(run.models(), 0)
            writer.write(0, eval_results, prefix="eval/")
        with _StopOnSignal() as stop:
            for step in range(start + 1, config.total_steps + 1):
                metrics = stepper(step)
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
                        eval_results = run.trainer.evaluate(run.models(), step)
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
        results = {k: float(v) for k, v in run.trainer.evaluate(run.models(), step).items()}
    run.checkpointer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{step}.json"), "w") as f:
            json.dump({"step": step, **results}, f, indent=2)
    return results
