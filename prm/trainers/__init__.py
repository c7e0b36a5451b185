"""Training methods, registered by name in `prm.registry.TRAINERS`."""

from prm.trainers import (
    implicit_prm,  # noqa: F401 - registers "implicit_prm"
    pav_rl,  # noqa: F401 - registers "pav_rl"
    prime,  # noqa: F401 - registers "prime"
)
from prm.trainers.sft import SFTTrainer, ensure_sft_checkpoint, next_token_loss

__all__ = ["SFTTrainer", "ensure_sft_checkpoint", "next_token_loss"]
