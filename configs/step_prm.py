"""A step-level PRM on Math-Shepherd labels of chain arithmetic (experiments/step_prm.py).

    python -m experiments.step_prm --config=configs/step_prm.py --labels=<collect out>/steps.jsonl \
        --workdir=/tmp/step_prm

The verifiers are scalar heads on copies of the chain SFT warm start (`configs/chain_sft.py`, the
same policy that samples the held-out candidates), one per label kind, each fitted for
`train.steps` Adam steps by MSE (`loss=squared`, the default, as Math-Shepherd's regression runs
here first did) or by binary cross-entropy against the labels with class-balanced batches
(`loss=cross_entropy`: half the batch from labels < 0.5, half from ≥ 0.5; the score read as
σ(s)), which keeps a verifier from predicting the majority class when most steps are wrong (the
SFT policy's own labels: 87 % of its steps are wrong). Evaluation: `eval.problems` test-split
problems of 2-6 operations, `eval.n` candidates each at temperature 1 (the policy as collect.py
samples it).

Options: `smoke` (seconds; the chain SFT smoke warm start), `seed=<int>`, `steps=<int>`,
`problems=<int>`, `n=<int>`, `loss=squared|cross_entropy`.
"""

from __future__ import annotations

import ml_collections

from configs import chain_sft
from configs.common import parse_arg
from prm.search.self_train import VALUE_OBJECTIVES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, seed=0, steps=400, problems=128, n=16, loss="squared")
    if opts.loss not in VALUE_OBJECTIVES:
        raise ValueError(f"loss={opts.loss!r}: use one of {', '.join(VALUE_OBJECTIVES)}.")
    c = ml_collections.ConfigDict()
    c.seed = opts.seed
    c.warm_start = chain_sft.get_config("smoke" if opts.smoke else None)
    c.label_kinds = ("hard", "soft", "true", "outcome")
    c.train = ml_collections.ConfigDict(
        {"steps": opts.steps, "batch_size": 32, "lr": 1e-3, "objective": opts.loss,
         "balanced": opts.loss == "cross_entropy"}
    )  # fmt: skip
    c.eval = ml_collections.ConfigDict(
        {
            "problems": opts.problems,
            "n": opts.n,
            "min_ops": 2,
            "max_ops": 6,
            "operators": "+-*",
            "temperature": 1.0,
            "max_step_tokens": 16,
            "max_length": 128,
        }
    )
    if opts.smoke:
        c.train.update({"steps": 3, "batch_size": 4})
        c.eval.update({"problems": 2, "n": 2})
    return c
