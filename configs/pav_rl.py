"""PAV-RL on the synthetic multi-hop world: the effective reward Q^π + α·A^μ, from the SFT start.

PAV (Setlur et al., arXiv 2410.08146, "Rewarding Progress"; notes: pav_and_tree_search.md §1.3,
§1.8; trainer: `prm/trainers/pav_rl.py`). Per step, K = 5 trajectories of each of 8 train
questions with the BM25 retriever in the loop, outcome R = EM; the prover μ is the frozen SFT
warm start (the KL reference, never trained) and Q^μ of every turn prefix of every trajectory is
the mean outcome of N = 4 completions of μ from it (V^μ(x) of the question alone, the
trajectory's own outcome for the whole trajectory); step h's advantage is

    (R − mean of the group's other K − 1 outcomes) + α·(Q^μ after step h − Q^μ before it)

on its tokens, α = 1, then the shared PPO clip 0.2 + k3 KL 0.001 step. World, warm start, lr
1e-4, steps, questions per step and evaluation are those of configs/search_r1.py, so the run
joins its comparison.

Why α = 1: the outcome term and A^μ are both differences of success probabilities in [−1, 1],
and over a trajectory the A^μ telescope to R − V^μ(x), so α = 1 gives the prover's credit
assignment the same total weight as the outcome. The paper's didactic RL used α = 1; its LLM RL
used α = 3 (9B) and 5 (2B), with any α in 0.5–6 beating ORM-RL, but with a trained PAV's
smooth predictions; here A^μ is an N = 4 Monte Carlo estimate (each Q^μ has std up to 0.25), so
a large α would let prover noise outweigh the outcome.

    python -m experiments.train --config=configs/pav_rl.py --workdir=workdirs/pav_rl
    python -m experiments.train --config=configs/pav_rl.py:seed=1 --workdir=workdirs/pav_rl_s1
    python -m experiments.train --config=configs/pav_rl.py:prover_best_of=4,completions=8 \
        --workdir=workdirs/pav_rl_bo4
    python -m experiments.train --config=configs/pav_rl.py:reward=q --workdir=workdirs/pav_rl_q
    python -m experiments.train --config=configs/pav_rl.py:alpha=0 --workdir=workdirs/pav_rl_a0
    python -m experiments.train --config=configs/pav_rl.py:smoke --workdir=/tmp/pav_rl_smoke

Against Search-R1 (GRPO), outcome-only RLOO in the same loop (alpha=0: no prover completions)
and App. G's Q^μ reward, 3 seeds each:

    python -m experiments.compare --seeds=3 --results=results/pav_rl \
        --configs=configs/search_r1.py,configs/pav_rl.py:alpha=0,configs/pav_rl.py,configs/pav_rl.py:reward=q

What it should show: held-out EM at steps 0, 50, 100, 150 per question type, against the same
budget axis (`sampled_tokens` counts the prover's completion tokens too, so the comparison at
matched sampled tokens charges PAV-RL for its Q^μ estimates); whether A^μ carries signal
(`progress/nonzero_fraction`, `progress/std`: the paper's distinguishability; near 0 means the
prover is too weak or too strong on these questions, `prover/value_question` = V^μ(x)); the
paper's claims to test: PAV-RL above outcome-only RL (alpha=0, RLOO in the same loop) at equal
steps, and `reward=q` (App. G's Q^μ in place of A^μ) worse than A^μ. The prover samples about
4× the policy's tokens per step (3 measured steps, 2026-12-02: ~2,400 against ~630;
`sampled_tokens/prover`, `sampled_tokens/policy`), and each step's sampling took ~2-4 s on 2
shared CPU cores after the first few steps' compilation (policy ~0.5 s of it); A^μ ≠ 0 on
9-27 % of the steps taken, V^μ(x) 0.13-0.22.

Options: `smoke` (3 steps of 2 questions × 2 trajectories on a tiny world, for tests),
`steps=<int>`, `seed=<int>`, `alpha=<float>`, `completions=<int>` (N per prefix),
`prover_best_of=<int>` (K' ≤ N: the prover is Best-of-K' of the SFT policy, PAV Eq. 30),
`reward=advantage|q`, `questions=<int>` (per step).
"""

from __future__ import annotations

import ml_collections

from configs import sft
from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, steps=150, seed=0, alpha=1.0, completions=4,
                     prover_best_of=1, reward="advantage", questions=8)  # fmt: skip
    c = sft.group_rl_config("pav_rl", opts)
    if not opts.smoke:
        c.data.batch_size = opts.questions
    c.pav = ml_collections.ConfigDict(
        {
            "alpha": opts.alpha,  # 0: outcome-only RLOO
            "reward": opts.reward,  # "advantage": A^μ (Eq. 5); "q": Q^μ (App. G's ablation)
            "completions": opts.completions,  # N completions of μ per prefix
            "prover_best_of": opts.prover_best_of,  # K': μ = Best-of-K' of the SFT policy
        }
    )
    return c
