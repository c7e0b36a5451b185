"""OmegaPRM step labels on chain arithmetic mod 10 (Luo et al. 2024, §3.2-3.4).

Per problem a tree of states (prefixes with MC estimates from k rollouts each), a pool of
incorrect rollouts from states with 0 < MC < 1, and `max_selections` rounds of: select the
rollout maximising Q + U, binary-search its first error (all problems' searches in lockstep,
one batched policy call per bisection round), add the probed prefixes as states. It writes soft,
hard and pairwise labels; the summary counts policy calls per located first error against
brute-force per-step MC, and `first_error_check` runs both searches on the same incorrect
sampled solutions. The paper's constants except the search limit (100 there) and L (500 tokens
there; rollouts here are ~60 tokens, so L = 50 keeps the length term in play). Launch:

    python -m experiments.collect --config=configs/omegaprm.py --out=/tmp/omega
    python -m experiments.collect --config=configs/omegaprm.py:smoke --out=/tmp/omega_smoke

Options: `smoke` (a few problems, for tests), `problems=<int>`, `selections=<int>`,
`policy=warm_start|expert` (the SFT model, or the noisy expert as the completer).
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg
from configs.math_shepherd import collection_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, problems=32, selections=4, policy="warm_start")
    c = collection_config("omegaprm", opts.smoke, opts.problems, opts.policy)
    c.omegaprm = ml_collections.ConfigDict(
        {
            "rollouts_per_estimate": 8,
            "max_selections": opts.selections,
            "alpha": 0.5,
            "beta": 0.9,
            "length_scale": 50.0,
            "c_puct": 0.125,
        }
    )
    c.first_error_check = ml_collections.ConfigDict(
        {"num_solutions": 64, "solutions_per_problem": 4}
    )
    if opts.smoke:
        c.problems.num = min(opts.problems, 3)
        c.omegaprm.rollouts_per_estimate = 4
        c.omegaprm.max_selections = 2
        c.first_error_check.num_solutions = 4
        c.first_error_check.solutions_per_problem = 2
    return c
