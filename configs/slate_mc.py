"""SLATE ablation: truncated step-level sampling without a judge (isolates the judge).

SLATE (Samarinas et al., arXiv 2602.23440; notes: slate.md §2.2, §6.3): the truncated-sampling-
alone row of the paper's ablation (its table and reward are not in the notes; here the judge is
replaced by Monte Carlo values). Trainer `slate_mc` (`prm/trainers/slate.py`): as
configs/slate.py — one trajectory per question grown step by step, k = 5 siblings per step from
one fork of the KV cache, advantages among the siblings only (Eq. 5), the next step drawn from
softmax(A/η), η = 0.7, every sibling's action trained — but a sibling's reward is its Monte
Carlo value: its action is executed and m = 4 completions are played from its own cache to the
episode's end (remaining budget, then the forced answer), value = mean EM of the m outcomes (an
answer sibling: its own EM; a sibling without a valid action: 0). No judge is called; the
completions are sampled, not trained. Launch:

    python -m experiments.train --config=configs/slate_mc.py --workdir=workdirs/slate_mc
    python -m experiments.train --config=configs/slate_mc.py:m=8 --workdir=workdirs/slate_mc_m8
    python -m experiments.train --config=configs/slate_mc.py:smoke --workdir=/tmp/slate_mc_smoke

Against SLATE, its full-trajectory ablation and Search-R1 (3 seeds each), and over m:

    python -m experiments.compare --seeds=3 --results=results/slate_ablations \
        --configs=configs/search_r1.py,configs/slate.py,configs/slate_full_trajectory.py,configs/slate_mc.py
    python -m experiments.compare --seeds=3 --results=results/slate_mc_m \
        --configs=configs/slate_mc.py:m=1,configs/slate_mc.py:m=4,configs/slate_mc.py:m=8

What it should show: whether SLATE's gain comes from the judge. The MC value is an unbiased,
outcome-grounded estimate of the sibling's worth under the current policy (noisy for small m,
and 0/1 ties are frequent: watch `tied_group_fraction`), where the judge scores the step itself
from the gold chain; `judge/candidates` is 0, and the price is in `sampled_tokens` (each step
also samples k·m completions), so compare held-out EM at matched sampled tokens
(em_vs_tokens.png). Held-out EM near SLATE's means truncated sampling carries the gain; well
below it, the judge's dense signal does.

Options: `smoke` (2 steps of 2 questions, k = 2, B = 2, tiny world; tests add `m=2`),
`steps=<int>`, `seed=<int>`, `k=<int>`, `eta=<float>|argmax`, `budget=<int>` (B),
`action_choice=free|constrained`, `questions=<int>`, `m=<int>` (completions per sibling).
"""

from __future__ import annotations

import ml_collections

from configs import slate
from configs.common import parse_arg

OPTIONS = {
    **{name: slate.OPTIONS[name]
       for name in ("smoke", "steps", "seed", "k", "eta", "budget", "action_choice", "questions")},
    "m": 4,
}  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, **OPTIONS)
    c = slate.world_config(
        "slate_mc", ml_collections.ConfigDict({**slate.OPTIONS, **opts.to_dict()})
    )
    del c.judge  # values come from completions, not a judge
    c.rollout.completions = opts.m
    return c
