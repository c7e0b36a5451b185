"""Math-Shepherd step labels on chain arithmetic mod 10 (Wang et al. 2023, Eq. 3-4).

The chain SFT policy (`configs/chain_sft.py`, its warm start) samples `solutions_per_problem`
solutions per problem; after every step of each it samples `num_completions` completions (all
prefixes in batched calls, each prefix prefilled once and forked), and labels the step hard
(some completion is right) and soft (the fraction that is). The summary measures both against
the task's true step correctness for each N in `eval_completions`. Launch:

    python -m experiments.collect --config=configs/math_shepherd.py --out=/tmp/ms
    python -m experiments.collect --config=configs/math_shepherd.py:smoke --out=/tmp/ms_smoke

Options: `smoke` (a few problems, for tests), `problems=<int>`, `completions=<int>`,
`policy=warm_start|expert` (the SFT model, or the noisy expert as the completer).
"""

from __future__ import annotations

import ml_collections

from configs import chain_sft
from configs.common import parse_arg


def collection_config(
    method: str, smoke: bool, problems: int, policy: str
) -> ml_collections.ConfigDict:
    """What label collection on chain arithmetic shares: the policy, problems and rollouts."""
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    # "warm_start": the SFT policy below, sampled; "expert": the noisy expert (no model).
    c.policy = policy
    c.expert_error_rate = 0.1
    c.warm_start = chain_sft.get_config("smoke" if smoke else None)
    c.problems = ml_collections.ConfigDict(
        {"split": "train", "num": problems, "min_ops": 2, "max_ops": 6, "operators": "+-*"}
    )
    c.rollout = ml_collections.ConfigDict(
        {
            "max_step_tokens": 16,  # a line has at most 10 characters
            "max_length": 128,  # the longest gold episode has 98 tokens
            "temperature": 1.0,
            "max_extra_steps": 2,  # lines allowed beyond num_ops (the answer is one)
        }
    )
    c.max_rows = 1024  # completions decoded together in one sampler batch
    c.format = "jsonl"
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, problems=48, completions=32, policy="warm_start")
    c = collection_config("math_shepherd", opts.smoke, opts.problems, opts.policy)
    c.solutions_per_problem = 2
    c.num_completions = opts.completions
    c.eval_completions = tuple(n for n in (1, 2, 4, 8, 16, 32, 64) if n <= opts.completions)
    if opts.smoke:
        c.problems.num = min(opts.problems, 3)
        c.num_completions = 4
        c.eval_completions = (1, 4)
    return c
