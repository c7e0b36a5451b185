"""Training methods, registered by name in `prm.registry.TRAINERS`."""

from prm.trainers.sft import SFTTrainer, ensure_sft_checkpoint, next_token_loss

__all__ = ["SFTTrainer", "ensure_sft_checkpoint", "next_token_loss"]
