"""Implicit PRM on the synthetic multi-hop world, from the SFT warm start; best-of-N evaluation.

Implicit PRM (Yuan et al., arXiv 2412.01981; notes: implicit_prm_prime.md §1-2; trainer:
`prm/trainers/implicit_prm.py`). The PRM starts as a copy of the SFT policy (the run's trained
"policy" slot) next to the frozen SFT reference; per step the frozen SFT policy plays K = 8
rollouts of each of 8 train questions (the paper's 8 responses per instruction), each labelled
by its exact match, and the PRM's response reward r(y) = β·log π_φ(y)/π_ref(y), β = 0.05, is
trained on those labels with CE (Eq. 5; `loss=dpo|nca|kto` for the other objectives).

Why this task: the synthetic QA search world is where prm's SFT warm start, retriever and
evaluation already live, so the PRM learns from the same policy that PRIME, Search-R1 and
SLATE train, and its best-of-N table sits beside their comparison. Steps are the policy's
turns (a search or an answer): a trajectory's `step_id` gives their exact token positions, so
no text heuristic (the paper's "Step k:" regex and `len(ids) − 2` offset) is needed;
`delimiters=<a>;<b>` splits the response at delimiter strings instead, still at exact token
positions. Rows (prompt, response, label) of any jsonl or parquet file train the PRM instead
of rollouts with `source=file,path=<file>` (columns `prompt`, `response`, `label`).

Evaluation (steps 0, 30, 60): the SFT policy samples N = 8 episodes for each of 64 test
questions, the PRM scores each turn, and `best_of_n_step<k>.md` tabulates EM of the pick against
N for min/sum/last (and cumulative) scores, weighted majority vote, and the outcome-free
baselines (random pick, majority vote, and the pass@N ceiling). At step 0 the PRM equals the
reference, so every score is 0 and its pick is the first candidate (= random). Launch:

    python -m experiments.train --config=configs/implicit_prm.py --workdir=workdirs/implicit_prm
    python -m experiments.train --config=configs/implicit_prm.py:loss=dpo
    python -m experiments.train --config=configs/implicit_prm.py:smoke --workdir=/tmp/iprm_smoke
    python -m experiments.best_of_n --workdir=workdirs/implicit_prm --n=16 --questions=200

Options: `smoke`, `steps=<int>`, `seed=<int>`, `loss=ce|dpo|nca|kto`, `beta=<float>`,
`k=<int>` (responses per question), `source=rollouts|file`, `path=<jsonl|parquet>`,
`delimiters=<strings separated by ;>`.
"""

from __future__ import annotations

import ml_collections

from configs import sft
from configs.common import parse_arg


def prm_block(opts) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "beta": opts.beta,
            "loss": opts.loss,
            "source": opts.source,
            "path": opts.path,
            "prompt_key": "prompt",
            "response_key": "response",
            "label_key": "label",
            # Step delimiters (strings); () = steps are the policy's turns.
            "delimiters": tuple(d for d in opts.delimiters.split(";") if d),
        }
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, steps=60, seed=0, loss="ce", beta=0.05, k=8,
                     source="rollouts", path="", delimiters="")  # fmt: skip
    c = sft.rl_config("implicit_prm", smoke=opts.smoke, seed=opts.seed, steps=opts.steps,
                      evaluations=2, questions=8)  # fmt: skip
    c.prm = prm_block(opts)
    c.rollout = ml_collections.ConfigDict(
        {"group_size": opts.k, "temperature": 1.0, "max_step_tokens": 48}
    )
    c.eval.best_of_n = ml_collections.ConfigDict(
        {"n": 8, "max_questions": 64, "split": "test", "seed": 0}
    )
    if opts.smoke:
        c.total_steps = 3
        c.checkpoint_every = 2
        c.eval_every = 3
        c.data.batch_size = 2
        c.rollout.group_size = min(opts.k, 4)
        c.rollout.max_step_tokens = 16
        c.eval.best_of_n.update(n=2, max_questions=3)
    return c
