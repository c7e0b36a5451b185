"""The outcome-only RLOO baseline of PRIME (its Eq. 4): configs/prime.py without the PRM.

The same loop, questions, accuracy filter and PPO-clip update as `configs/prime.py`, with
A^i = r_o^i − mean_{j≠i} r_o^j on every sampled token and no implicit PRM part — the "RLOO w/
OV only" row of PRIME's Table 1, and the comparison that isolates the process rewards.

    python -m experiments.train --config=configs/prime_rloo.py --workdir=workdirs/prime_rloo

Options: those of configs/prime.py (`process_rewards` is fixed to false).
"""

from __future__ import annotations

import ml_collections

from configs import prime


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if "process_rewards" in (arg or ""):
        raise ValueError("configs/prime_rloo.py has no PRM; use configs/prime.py for that option.")
    return prime.get_config(",".join(filter(None, [arg, "process_rewards=false"])))
