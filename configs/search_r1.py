"""Search-R1 GRPO on the synthetic multi-hop world, from the SFT warm start.

Search-R1 (Jin et al., 2025, arXiv 2503.09516; notes: search_r1_stepsearch.md): per question, a
group of n = 5 full trajectories with the BM25 retriever in the loop, outcome EM reward (the
format-shaped reward by `reward=format`), GRPO advantages (unbiased std, ε = 1e-6), PPO clip 0.2
(dual clip 3) + k3 KL 0.001 to the frozen initial policy, observation tokens masked, one update
per batch. The policy is the SFT warm start of `configs/sft.py`, shipped with prm
(`prm/assets/warm_starts/`; were its config changed, it is trained once into
`~/.cache/prm/warm_starts/`, ~14 min on 2 CPU cores). Launch:

    python -m experiments.train --config=configs/search_r1.py --workdir=workdirs/search_r1
    python -m experiments.train --config=configs/search_r1.py:seed=1 --workdir=workdirs/search_r1_s1
    python -m experiments.train --config=configs/search_r1.py:smoke --workdir=/tmp/search_r1_smoke

What the run should show (docs/RESULTS.md): held-out EM on the test split at step 0 (the SFT
start) and at the end, per question type; training reward and EM rising over the steps. The
paper-scale settings (Qwen2.5-3B/7B, 512 prompts × 5, lr 1e-6) are in the notes; this default
is sized for ~15 minutes on a 2-core CPU.

Options: `smoke` (a few steps on a tiny world, for tests), `steps=<int>`, `seed=<int>`,
`reward=em|format`.
"""

from __future__ import annotations

import ml_collections

from configs import sft


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    from configs.common import parse_arg

    opts = parse_arg(arg, smoke=False, steps=150, seed=0, reward="em")
    return sft.group_rl_config("search_r1", opts, reward=opts.reward)
