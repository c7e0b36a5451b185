"""Best-of-N table of a trained implicit PRM: EM of the pick against N, PRM vs outcome-free picks.

    python -m experiments.best_of_n --workdir=workdirs/implicit_prm --n=16 --questions=200
    python -m experiments.best_of_n --workdir=workdirs/prime --step=100

The run's frozen reference (the SFT policy) samples `n` episodes per question of `--split`; the
run's implicit PRM — part "prm" of a PRIME run, else the "policy" slot of an implicit PRM run —
scores every step (the run's `prm.delimiters`, or the policy's turns) and the table
(`prm.evaluation.best_of_n`: min/sum/last and cumulative scores, weighted majority vote,
random pick, majority vote, pass@N) is printed and written to
`<workdir>/best_of_n_<split>_n<n>_step<step>.md`.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging

from prm.evaluation.best_of_n import best_of_n_table, format_table
from prm.training.checkpoints import RunError
from prm.training.loop import build_run, config_from_workdir, restore

_WORKDIR = flags.DEFINE_string("workdir", None, "An implicit_prm or prime run directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_N = flags.DEFINE_integer("n", 16, "Candidates per question.")
_QUESTIONS = flags.DEFINE_integer("questions", 100, "Questions of the split (0: all).")
_SPLIT = flags.DEFINE_string("split", "test", "World split: train, dev or test.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed of the candidates.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_workdir(_WORKDIR.value)
        if config.trainer not in ("implicit_prm", "prime") or config.get("reference") != "copy":
            raise RunError(
                f"{_WORKDIR.value} is a {config.trainer!r} run; best-of-N needs an implicit_prm "
                "or prime run (an implicit PRM and its frozen SFT reference)."
            )
        run = build_run(config, _WORKDIR.value)
        step = restore(run, _STEP.value)
        run.checkpointer.close()
    except RunError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(2)
    models = run.models()
    prm = models.get("prm", models["policy"])
    prm_config = config.get("prm") or config.prime
    questions = run.trainer.assets.world.split(_SPLIT.value)
    questions = questions[: _QUESTIONS.value] if _QUESTIONS.value > 0 else questions
    with jax.set_mesh(run.mesh):
        table, metrics = best_of_n_table(
            run.trainer, prm, models["reference"], models["reference"],
            beta=prm_config.beta, delimiters=tuple(prm_config.get("delimiters", ())),
            n=_N.value, questions=questions, seed=_SEED.value,
        )  # fmt: skip
    markdown = format_table(table)
    path = os.path.join(_WORKDIR.value, f"best_of_n_{_SPLIT.value}_n{_N.value}_step{step}.md")
    with open(path, "w") as f:
        f.write(markdown + "\n")
    print(markdown)
    print("\n".join(f"{k}: {v:.4f}" for k, v in sorted(metrics.items())))
    print(f"written to {path}")


if __name__ == "__main__":
    app.run(main)
