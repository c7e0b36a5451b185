"""PRIME on the synthetic multi-hop world, from the SFT warm start (policy, PRM and reference).

PRIME (Cui et al., arXiv 2502.01456; notes: implicit_prm_prime.md §3-4; trainer:
`prm/trainers/prime.py`). Per step, K = 4 rollouts of each of 8 train questions with the BM25
retriever in the loop, outcome r_o = EM; questions whose mean EM lies outside [0.2, 0.8] are
dropped and new ones sampled (up to 4 rounds) until 8 groups are kept; the implicit PRM (a
second trainable part, its own AdamW at twice the policy's lr, the paper's 1e-6 : 5e-7) gives
token rewards r_t = β·log π_φ/π_ref (β = 0.05) before it is updated with CE on the kept rollouts;
advantages are Eq. 5 (leave-one-out process returns, γ = 1, plus leave-one-out outcome; the
paper form, not whitened); the policy takes a PPO-clip step (ε = 0.2, token-mean, no KL and no
entropy bonus, as the paper).

Why this task: the synthetic QA search world holds prm's SFT warm start, retriever and held-out
evaluation, so PRIME joins the comparison table beside Search-R1 (GRPO) and SLATE with the same
start, questions per step and evaluation. Its process rewards are per token (the paper's
granularity); `granularity=step` gives each of the policy's turns its summed reward on the
turn's last token (the trajectory's `step_id` gives the exact positions).

    python -m experiments.train --config=configs/prime.py --workdir=workdirs/prime
    python -m experiments.train --config=configs/prime.py:seed=1 --workdir=workdirs/prime_s1
    python -m experiments.train --config=configs/prime.py:smoke --workdir=/tmp/prime_smoke
    python -m experiments.train --config=configs/prime_rloo.py    # outcome-only RLOO baseline

What the run should show: held-out EM at steps 0, 50, 100, 150 per question type; over the
steps `prm/ce_before` falling from ln 2 ≈ 0.693 and `prm/pairwise_accuracy_before` rising above
0.5 (the online PRM learns to rank the policy's own rollouts), `filter/kept_fraction` (the share
of questions inside the band), training EM of the kept rollouts. Paper-scale settings (256
prompts × 4, lr 5e-7 / 1e-6, 4 PPO mini-batches) are in the notes; this default is sized like
configs/search_r1.py.

Options: `smoke`, `steps=<int>`, `seed=<int>`, `k=<int>`, `beta=<float>`,
`baseline=paper|public_code`, `granularity=token|step`, `process_rewards=true|false`,
`band_low=<float>`, `band_high=<float>`.
"""

from __future__ import annotations

import ml_collections

from configs import sft
from configs.common import parse_arg
from prm.training.policy_step import policy_loss_block


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, steps=150, seed=0, k=4, beta=0.05, baseline="paper",
                     granularity="token", process_rewards=True, band_low=0.2,
                     band_high=0.8)  # fmt: skip
    c = sft.group_rl_config(
        "prime", opts, group_size=opts.k,
        accuracy_band=(opts.band_low, opts.band_high),  # both bounds inclusive
        max_rounds=4,  # rounds of `data.batch_size` questions to fill the batch
    )  # fmt: skip
    # PRIME sets the KL coefficient to 0 and uses no entropy bonus (notes §3.3, §3.5).
    c.policy_loss = policy_loss_block(recompute_old_logprobs=False, kl_coef=0.0)
    c.prime = ml_collections.ConfigDict(
        {
            "process_rewards": opts.process_rewards,  # False: outcome-only RLOO
            "beta": opts.beta,
            "gamma": 1.0,
            "baseline": opts.baseline,  # Eq. 5 ("paper") or PRIME-RL's code ("public_code")
            "reward_norm": "none",  # "batch_norm": the public code's max |return| scaling
            "whiten": False,  # the public code whitens the returns
            "granularity": opts.granularity,
        }
    )
    if opts.process_rewards:
        c.parts = ml_collections.ConfigDict(
            {"prm": {"init": "policy", "head": "lm", "lr": 2 * c.optim.lr}}
        )
    if opts.smoke:
        # A random-ish smoke policy rarely answers right: keep every group so the loop runs.
        c.rollout.accuracy_band = (0.0, 1.0)
        c.rollout.max_rounds = 1
    return c
