"""PAV's didactic planted-subsequence experiment (Setlur et al. 2024, "Rewarding Progress: Scaling
Automated Process Verifiers for LLM Reasoning", arXiv 2410.08146, §3.3, App. B and G).

A MADE policy (3 masked layers, 128 hidden) is warm-started by 50 SFT iterations on the γ = 5
prover, then trained by policy gradient (Adam 1e-3, batch 64) with (a) the outcome only, (b) the
effective reward Q^π + α·A^μ and (c) Q^π + α·Q^μ, α = 1, for every prover: the γ-family μ(γ) and
Best-of-K of the γ = 5 base prover (PAV Eq. 30). A^μ and Q^μ are exact (dynamic programme over
the match state); Q^π is the sampled outcome. Launch (one compiled program; ~40 CPU-s per seed):

    python -m experiments.pav_didactic --config=configs/pav.py --out=docs/results/pav
    python -m experiments.pav_didactic --config=configs/pav.py:smoke --out=/tmp/pav_smoke

What it should show (the paper's claims): A^μ speeds learning only for a middle range of prover
strengths (γ ∈ [8, 15], V^μ(x) ≈ 2–12%); outcome-only RL barely moves; Q^μ as the reward
collapses where A^μ does not; at iteration 100, Pass@N grows faster with N under A^μ than under
the outcome. Options: `smoke` (2 provers, 1 seed, 30 iterations, a tiny policy), `seeds=<n>`,
`iterations=<n>`.
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, seeds=3, iterations=400)
    c = ml_collections.ConfigDict()
    c.task = ml_collections.ConfigDict(
        {"length": 10, "vocab_size": 15, "eos": 14, "planted": (3, 6, 0, 3, 5)}
    )
    c.policy = ml_collections.ConfigDict(
        {
            "hidden": 128,
            "hidden_layers": 2,
            "learning_rate": 1e-3,
            "batch_size": 64,
            "sft_iterations": 50,
            "sft_gamma": 5.0,
        }
    )
    c.gammas = (1.0, 5.0, 8.0, 10.0, 15.0, 50.0, 100.0)
    c.best_of_k = (4, 64)  # Best-of-K of the γ = sft_gamma prover the SFT imitates
    c.alpha = 1.0
    c.seeds = opts.seeds
    c.iterations = opts.iterations
    c.pass_at_iteration = 100
    c.pass_samples = 1024
    c.pass_ns = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    if opts.smoke:
        c.policy.hidden = 16
        c.policy.sft_iterations = 5
        c.policy.batch_size = 16
        c.gammas = (10.0,)
        c.best_of_k = (4,)
        c.seeds = 1
        c.iterations = 30
        c.pass_at_iteration = 10
        c.pass_samples = 64
        c.pass_ns = (1, 4, 16, 64)
    return c
