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

`model=qwen2.5-3b|qwen2.5-7b` carries the paper's scale and optimisation (notes §3.5) on the
Search-R1 question source that configs/slate.py's paper setting reads (prm has no math data or
math verifier, the paper's task; the model, tokenizer, retriever and evaluation blocks are
SLATE's): every weight trained (no LoRA) for the policy and for the PRM, a frozen copy as the
reference, 256 questions × K = 4 rollouts per step, the [0.2, 0.8] filter, policy AdamW lr 5e-7
(weight decay 0.01), PRM lr 1e-6, four PPO mini-batches of 256 responses (micro-batches of 8),
no KL, 592 steps (≈ 150k prompts / 256). The memory one device needs (no weights are read):

    python -m experiments.train --config=configs/prime.py:model=qwen2.5-7b --config.dry_run=True
    python -m experiments.train --config=configs/prime.py:model=qwen2.5-7b,init_from=<hf dir> \
        --config.data.retriever_url=http://<host>:8000/retrieve --workdir=workdirs/prime_qwen7b

Options: `smoke`, `steps=<int>`, `seed=<int>`, `k=<int>`, `beta=<float>`,
`baseline=paper|public_code`, `granularity=token|step`, `process_rewards=true|false`,
`band_low=<float>`, `band_high=<float>`, `model=world|qwen2.5-3b|qwen2.5-7b`,
`init_from=<hf dir>`.
"""

from __future__ import annotations

import ml_collections

from configs import sft, slate
from configs.common import parse_arg
from prm.training.policy_step import policy_loss_block


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, steps=150, seed=0, k=4, beta=0.05, baseline="paper",
                     granularity="token", process_rewards=True, band_low=0.2,
                     band_high=0.8, model="world", init_from="")  # fmt: skip
    if opts.model != "world":
        return paper_config(opts)
    c = sft.group_rl_config(
        "prime", opts, group_size=opts.k,
        accuracy_band=(opts.band_low, opts.band_high),  # both bounds inclusive
        max_rounds=4,  # rounds of `data.batch_size` questions to fill the batch
    )  # fmt: skip
    add_prime_blocks(c, opts)
    if opts.smoke:
        # A random-ish smoke policy rarely answers right: keep every group so the loop runs.
        c.rollout.accuracy_band = (0.0, 1.0)
        c.rollout.max_rounds = 1
    return c


def add_prime_blocks(c: ml_collections.ConfigDict, opts: ml_collections.ConfigDict) -> None:
    """PRIME's policy loss, its `prime` block and the PRM part (at twice the policy's lr)."""
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


def paper_config(opts: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's scale and optimisation (notes §3.5) on SLATE's paper data (module docstring)."""
    c = slate.paper_config(
        ml_collections.ConfigDict(
            {**slate.OPTIONS, "model": opts.model, "init_from": opts.init_from, "seed": opts.seed}
        )
    )
    c.trainer = "prime"
    del c.judge
    c.lora.rank = 0  # PRIME fine-tunes every weight of the policy and of the PRM
    c.reference = "copy"
    c.total_steps = 592
    c.optim.update({"lr": 5e-7, "warmup_steps": 0, "weight_decay": 0.01, "schedule": "constant"})
    c.data.batch_size = 256
    c.rollout = ml_collections.ConfigDict(
        {
            "group_size": opts.k,
            "temperature": 1.0,
            "max_step_tokens": 500,
            "accuracy_band": (opts.band_low, opts.band_high),
            "max_rounds": 4,
            "forced_answer": c.rollout.forced_answer,
        }
    )
    c.updates.update({"num_mini_batches": 4, "micro_batch_size": 8})
    add_prime_blocks(c, opts)
    return c
