"""StepSearch (StePPO) on the synthetic multi-hop world, from the SFT warm start.

StepSearch (Wang et al., 2025, arXiv 2505.15107; notes: search_r1_stepsearch.md §2): PPO with a
critic (GAE γ = λ = 1, advantages whitened, value clip 0.5) on dense rewards: 0.6 · (information
gain − redundancy) at the token closing each `</search>`, and round(F1, 4) + 0.618 · search-key
score at the last token (−1 unless the answer ends the response). The gold passages and
search keys come from each question's gold chain (`prm.trainers.step_search`). The rest is
`configs/search_r1.py`'s, so the two compare side by side: the same SFT warm start, 8 questions
× 5 trajectories per step with the BM25 retriever, PPO clip 0.2 (dual clip 3) + k3 KL 0.001 to
the frozen initial policy, observation tokens masked, one update per batch, policy lr 1e-4.
The critic is a copy of the warm start with a zeroed scalar head (verl initialises its critic
from the actor). Launch:

    python -m experiments.train --config=configs/step_search.py --workdir=workdirs/step_search
    python -m experiments.train --config=configs/step_search.py:seed=1 --workdir=workdirs/step_search_s1
    python -m experiments.train --config=configs/step_search.py:smoke --workdir=/tmp/step_search_smoke

What the run should show: held-out EM on the test split at step 0 (the SFT start) and at the
end, per question type, to set next to Search-R1's (docs/RESULTS.md; no StepSearch row yet);
in the training metrics the reward parts (`reward/answer_f1`, `reward/search_keys`,
`reward/information_gain`, `reward/redundancy`, `reward/format_ok`), EM, F1, searches per
trajectory, and the critic's fit (`critic/value_mean` against `critic/return_mean`,
`critic/explained_variance`). A 12-step sanity run (seed 0, no evaluation, 2 heavily shared CPU
cores, ~20 s a step) started at reward 0.92 (F1 0.58, search keys 0.56, information gain 0.47
per search, redundancy 0.06, every answer well-formed) and stayed within batch noise of it; its
critic first learnt the mean return (value mean 0 → 1.6 against returns ~1.2-1.5, explained
variance ~0). The paper-scale settings (Qwen2.5-3B/7B, 128 prompts × 1, actor and critic lr
5e-7, 5 turns) are in the notes; this default has Search-R1's batch shape plus the critic's
forward and backward passes. The critic's lr 1e-3 (3× the policy's; Search-R1 runs its critic at
10× its actor's, StepSearch at 1×) is our choice, not tuned.

Options: `smoke` (a few steps on a tiny world, for tests), `steps=<int>`, `seed=<int>`,
`critic_lr=<float>`, `information_gain=<bool>`, `redundancy_penalty=<bool>` (the paper's
ablations), `search_key_coef=<float>` (0: no search-key reward).
"""

from __future__ import annotations

import ml_collections

from configs import sft


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    from configs.common import parse_arg
    from prm.rewards.step_search import StepSearchRewardConfig

    defaults = StepSearchRewardConfig()
    opts = parse_arg(arg, smoke=False, steps=150, seed=0, critic_lr=1e-3,
                     information_gain=defaults.information_gain,
                     redundancy_penalty=defaults.redundancy_penalty,
                     search_key_coef=defaults.search_key_coef)  # fmt: skip
    c = sft.group_rl_config("step_search", opts)
    c.reward = ml_collections.ConfigDict(
        {
            "step_scale": defaults.step_scale,
            "search_key_coef": opts.search_key_coef,
            "format_penalty": defaults.format_penalty,
            "information_gain": opts.information_gain,
            "redundancy_penalty": opts.redundancy_penalty,
        }
    )
    c.ppo = ml_collections.ConfigDict(
        {"gamma": 1.0, "lam": 1.0, "whiten_advantages": True, "value_clip": 0.5}
    )
    c.parts = ml_collections.ConfigDict(
        {"value": {"init": "policy", "head": "scalar", "lr": opts.critic_lr}}
    )
    return c
