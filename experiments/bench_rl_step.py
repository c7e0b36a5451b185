r"""Where an RL step's time goes: rollout (sampling with the retriever in the loop) vs update.

    python -m experiments.bench_rl_step --config=configs/search_r1.py --steps=6

Builds the run of `--config` in a temporary workdir (the warm start is trained once if it is
not cached yet), runs `--steps` train steps with the loop's own `Stepper`, and prints per step
the sampled policy tokens, rollout seconds, sampled tokens/s, update seconds and the rollout's
share of the step; then the medians over the steps after the first (which compiles). The load
average is printed with the figures: on a shared machine they are only comparable at similar
load.
"""

from __future__ import annotations

import os
import statistics
import tempfile

from absl import app, flags
from ml_collections import config_flags

from prm.training.loop import Stepper, build_run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/search_r1.py", "RL config to time.")
_STEPS = flags.DEFINE_integer("steps", 6, "Train steps to run (the first one compiles).")


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    run = build_run(config, tempfile.mkdtemp(prefix="bench_rl_step-"))
    run.checkpointer.close()
    stepper = Stepper(run)
    rows = []
    print(f"config: {config.trainer}, load average before: {os.getloadavg()[0]:.2f}")
    print("step  sampled  rollout_s  sampled_tok/s  update_s  rollout_share")
    for step in range(1, _STEPS.value + 1):
        m = stepper(step)
        share = m["rollout_time_s"] / m["step_time_s"]
        rows.append((m["sampled_tokens"], m["rollout_time_s"], m["sampled_tokens_per_s"],
                     m["update_time_s"], share))  # fmt: skip
        print(f"{step:4d}  {rows[-1][0]:7.0f}  {rows[-1][1]:9.2f}  {rows[-1][2]:13.0f}  "
              f"{rows[-1][3]:8.2f}  {share:13.1%}")  # fmt: skip
    steady = rows[1:] or rows
    medians = [statistics.median(column) for column in zip(*steady)]
    print(
        f"median over steps 2-{_STEPS.value}: {medians[2]:.0f} sampled tokens/s, rollout "
        f"{medians[1]:.2f} s, update {medians[3]:.2f} s, rollout share {medians[4]:.1%}; "
        f"load average after: {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    app.run(main)
