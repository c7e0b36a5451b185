"""prm: credit assignment and process rewards for LLM reinforcement learning, in JAX.

The math core (advantages, losses, masked reductions) is importable flat from `prm`; everything
else by subpackage (`prm.rewards`, `prm.labels`, `prm.metrics`, `prm.theory`, `prm.models`,
`prm.sampling`, `prm.envs`, `prm.training`, ...). Subpackages load on first attribute access, so
`import prm` stays light (no transformers, bm25s or orbax until asked for).
"""

import importlib
from typing import Any

from prm.advantages import (
    broadcast_step_values_to_tokens,
    discounted_returns,
    generalized_advantage_estimation,
    grpo_advantages,
    prime_advantages,
    rloo_advantages,
    sibling_step_advantages,
)
from prm.losses import aggregate_loss, kl_penalty, ppo_policy_loss, token_entropy, value_loss
from prm.masked import masked_count, masked_mean, masked_sum, masked_var, masked_whiten

__version__ = "0.1.0"

_SUBMODULES = (
    "advantages",
    "data",
    "didactic",
    "envs",
    "evaluation",
    "judges",
    "labels",
    "losses",
    "masked",
    "metrics",
    "models",
    "registry",
    "rewards",
    "rollouts",
    "sampling",
    "search",
    "theory",
    "trainers",
    "training",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"prm.{name}")
    raise AttributeError(f"module 'prm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))


__all__ = [
    "aggregate_loss",
    "broadcast_step_values_to_tokens",
    "discounted_returns",
    "generalized_advantage_estimation",
    "grpo_advantages",
    "kl_penalty",
    "masked_count",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "prime_advantages",
    "rloo_advantages",
    "sibling_step_advantages",
    "token_entropy",
    "value_loss",
]
