"""SLATE ablation: full-trajectory sampling with SLATE's judged step rewards (isolates truncation).

SLATE (Samarinas et al., arXiv 2602.23440; notes: slate.md §4, §6.3): the v3 abstract says
ablations show that truncated sampling and dense judge rewards bring "complementary benefits";
this is the dense-rewards-without-truncation row (the paper's table and its exact advantage are
not in the notes). Trainer `slate_full_trajectory` (`prm/trainers/slate.py`): per question k
full trajectories as GRPO samples them (one prefill, forked k ways; free actions; B = 4 judged
steps, then a forced answer that is neither judged nor trained), every step judged exactly as a
SLATE sibling (the world's reference judge, Eq. 3/4, λ = 0.1; the judge's context is the
trajectory's own earlier steps), and advantages within the question's k trajectories only
(`full_trajectory_advantages`): by default the std-normalised summed step-reward return R^(j)
on every step of trajectory j — the full-trajectory estimator of SLATE's variance theorem
(§4.2, "GRPO with dense rewards"); `advantage=reward_to_go` normalises Σ_{t'≥t} r_t' among the
trajectories that reached step t, `advantage=step` the step rewards r_t themselves. Everything
else is configs/slate.py's: SFT warm start, k = 5, 8 questions per step, 60 steps, PPO clip +
k3 KL. Launch:

    python -m experiments.train --config=configs/slate_full_trajectory.py \
        --workdir=workdirs/slate_full_trajectory
    python -m experiments.train --config=configs/slate_full_trajectory.py:smoke \
        --workdir=/tmp/slate_full_smoke

Against SLATE and Search-R1, 3 seeds each (held-out EM, sampled tokens, judge calls and the
measured advantage variance in one table):

    python -m experiments.compare --seeds=3 --results=results/slate_ablations \
        --configs=configs/search_r1.py,configs/slate.py,configs/slate_full_trajectory.py,configs/slate_mc.py
    python -m experiments.compare --seeds=3 --results=results/slate_full_advantage \
        --configs=configs/slate_full_trajectory.py,configs/slate_full_trajectory.py:advantage=reward_to_go,configs/slate_full_trajectory.py:advantage=step

What it should show: with the same judge and the same k, `advantage_variance/step` measured
against SLATE's is the theorem's quantity (the advantages are std-normalised, so the T-fold gap
shows as signal-to-noise: SLATE's sibling advantages depend on step t's action only, these on
every step's); held-out EM at the end below SLATE's if truncation matters beyond the dense
reward, and above Search-R1's if the dense reward helps on its own. It samples k whole
trajectories per question where SLATE samples k siblings per step, so compare at matched
sampled tokens (compare's em_vs_tokens.png), not only at matched steps.

Options: `smoke` (2 steps of 2 questions, k = 2, B = 2, tiny world, for tests), `steps=<int>`,
`seed=<int>`, `k=<int>` (trajectories per question), `budget=<int>` (B), `judge_error=<float>`,
`questions=<int>`, `advantage=return|reward_to_go|step`.
"""

from __future__ import annotations

import ml_collections

from configs import slate
from configs.common import parse_arg

OPTIONS = {
    **{name: slate.OPTIONS[name]
       for name in ("smoke", "steps", "seed", "k", "budget", "judge_error", "questions")},
    "advantage": "return",
}  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, **OPTIONS)
    c = slate.world_config("slate_full_trajectory", ml_collections.ConfigDict(
        {**slate.OPTIONS, **opts.to_dict(), "action_choice": "free"}
    ))  # fmt: skip
    c.rollout.full_advantage = opts.advantage  # prm.trainers.slate.FULL_ADVANTAGES
    return c
