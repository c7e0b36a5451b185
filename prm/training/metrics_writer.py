"""Per-step metrics to `workdir/metrics.jsonl`, TensorBoard event files and a tqdm bar with ETA.

Only process 0 writes. The loop logs, per step: `loss`, `grad_norm`, `learning_rate`,
`tokens_per_s`, `step_time_s`, plus whatever the trainer's loss returns. RL trainers fill the
names in `RL_METRICS` so runs of different methods share one vocabulary in TensorBoard.

A resumed run appends to `metrics.jsonl`. On resume from step s, `truncate_after(s)` moves the
lines the killed run wrote after its last checkpoint into `metrics.replaced.jsonl` (the resumed
run computes those steps again, bitwise the same) and TensorBoard is told to purge events after
s, so the final logs of a resumed run equal those of an uninterrupted one (except wall-clock
timings, `TIMING_METRICS`) and no line is ever deleted.

TensorBoard files need `tensorboardX` (the `tensorboard` extra, in `prm[dev]`); without it the
writer keeps only the JSONL and says so once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np
import tqdm
from absl import logging

TIMING_METRICS = (
    "tokens_per_s",
    "step_time_s",
    "batch_time_s",
    "update_time_s",
    "rollout_time_s",
    "sampled_tokens_per_s",
)
# Reward (mean per sequence), exact match, KL to the reference policy (per token), policy entropy
# (per token), and the empirical variance of the per-token advantages (the quantity SLATE's
# variance theorem is about).
RL_METRICS = ("reward", "exact_match", "kl", "entropy", "advantage_variance")


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, progress: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.tensorboard_dir: str | None = os.path.join(workdir, "tensorboard")
        try:
            from tensorboardX import SummaryWriter  # optional: the `tensorboard` extra
        except ImportError:
            logging.warning("tensorboardX is not installed: metrics go to %s only.", self.path)
            self.tensorboard_dir, self._tb = None, None
        else:
            self._tb = SummaryWriter(self.tensorboard_dir, purge_step=start_step + 1)
        self._bar = tqdm.tqdm(
            total=total_steps, initial=start_step, disable=not progress, dynamic_ncols=True
        )

    def truncate_after(self, step: int) -> int:
        """Moves logged steps > `step` (left by a run killed after its last checkpoint) to
        `metrics.replaced.jsonl`; returns how many lines moved."""
        if not self.enabled or not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        if len(kept) == len(lines):
            return 0
        with open(self.replaced_path, "a") as f:
            f.writelines(line for line in lines if json.loads(line)["step"] > step)
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)
        return len(lines) - len(kept)

    @property
    def replaced_path(self) -> str:
        return os.path.join(os.path.dirname(self.path), "metrics.replaced.jsonl")

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Appends one record; `prefix` (e.g. "eval/") namespaces the TensorBoard tags."""
        if not self.enabled:
            return
        scalars = {prefix + k: float(np.asarray(v)) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)

    def advance(self, step: int, metrics: Mapping[str, float]) -> None:
        """Moves the console bar to `step`, showing a few headline numbers."""
        if not self.enabled:
            return
        shown = {k: f"{float(metrics[k]):.4g}" for k in ("loss", "tokens_per_s") if k in metrics}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        if self._tb is not None:
            self._tb.close()
