"""SPA-RL (stepwise progress attribution) on the synthetic multi-hop world, from the SFT warm start.

SPA-RL (Wang et al., 2025, arXiv 2505.20732; notes: pav_and_tree_search.md §5; trainer:
`prm/trainers/spa_rl.py`): a progress estimator (a scalar head on a copy of the SFT policy) gives
every step a contribution c_t, trained only by regressing Σ_t c_t onto the trajectory's outcome
(MSE); each step is rewarded r_t = c_t + 0.5·1[action executed] on its last token, and PPO with a
critic (another scalar-head copy of the SFT policy), GAE (γ = 1, λ = 0.95), whitened advantages,
clipped value loss (0.2), PPO clip 0.2 (dual clip 3) + k3 KL 0.001 to the frozen initial policy
trains the policy. Everything else is Search-R1's comparison setting (`configs/search_r1.py`):
8 questions × 5 trajectories per step with BM25 in the loop, EM outcome, constant lr 1e-4 for
the policy, 150 steps, held-out EM at steps 0, 50, 100 and 150. The first 20 steps are the
paper's exploration phase: the SFT policy's rollouts train the estimator and the critic while
the policy does not move. Launch:

    python -m experiments.train --config=configs/spa_rl.py --workdir=workdirs/spa_rl
    python -m experiments.train --config=configs/spa_rl.py:seed=1 --workdir=workdirs/spa_rl_s1
    python -m experiments.train --config=configs/spa_rl.py:smoke --workdir=/tmp/spa_rl_smoke

What the run should show (next to Search-R1 and SLATE in docs/RESULTS.md): held-out EM per
question type at step 0 and along the run; the estimator's fit during exploration
(`progress_loss` falling, `progress_abs_error`, `progress_accuracy` = fraction of |Σc − R| ≤ 0.1,
the paper's training metric); afterwards training reward and EM, `grounding_accuracy` (fraction
of executed actions; the paper reports it rising) and `turns` (grounding pays 0.5 per executed
step, so longer episodes earn more: watch that turns do not grow without EM).

Where the released code (WangHanLinHenry/SPA-RL-Agent @ ed20087) differs from the paper, and
what is done here:
- Its RL data script overwrites every step's contribution with the leave-one-out outcome
  R_i − mean_{j≠i} R_j of the task's other rollouts, so the estimator is not used at all
  (notes §5.4). Default here: the estimator's c_t (the paper); `contributions=leave_one_out`
  runs the code's variant.
- Its PPO (from StepTool) scales step k of n by n − k − 1, so the last step's reward is 0.
  Default: no weighting (the paper); `weighting=steptool` runs the code's.
- Differences of this port, not of the code: the estimator's head reads the final hidden state
  (`prm.models.ScalarHeadModel`), not `Linear(vocab, 1)` on the logits; the KL is the shared
  k3 term in the loss, not trl's −β·KL in every token's reward; the critic is its own copy of
  the SFT policy, not a value head sharing the policy's LoRA trunk; the estimator keeps training
  on the current policy's rollouts after exploration instead of being frozen; grounding is 1
  for an executed answer or search (the code gives the last step 0.5 always: ALFWorld has no
  observation after it).

Options: `smoke` (3 steps of 2 questions × 2 trajectories on a tiny world, for tests),
`steps=<int>`, `seed=<int>`, `warmup=<int>` (exploration steps), `alpha=<float>`, `beta=<float>`,
`contributions=estimator|leave_one_out`, `weighting=none|steptool`.
"""

from __future__ import annotations

import ml_collections

from configs import sft


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    from configs.common import parse_arg

    opts = parse_arg(arg, smoke=False, steps=150, seed=0, warmup=20, alpha=1.0, beta=0.5,
                     contributions="estimator", weighting="none")  # fmt: skip
    c = sft.group_rl_config("spa_rl", opts)
    c.spa = ml_collections.ConfigDict(
        {
            "alpha": opts.alpha,
            "beta": opts.beta,
            "contributions": opts.contributions,
            "weighting": opts.weighting,
            "warmup_steps": opts.warmup,
            # trl's PPO defaults (the released PPO config file is not in the repository).
            "gamma": 1.0,
            "lam": 0.95,
            "whiten_advantages": True,
            "value_clip": 0.2,
        }
    )
    # Both heads start at 0 on the SFT trunk; a higher lr than the policy's lets them fit the
    # exploration rollouts in the few warm-up updates.
    c.parts = ml_collections.ConfigDict(
        {
            "progress": {"init": "policy", "head": "scalar", "lr": 1e-3},
            "value": {"init": "policy", "head": "scalar", "lr": 1e-3},
        }
    )
    if opts.smoke:
        c.spa.warmup_steps = 1
    return c
