"""Rewards per token, step or response: implicit PRM, prover progress (PAV), QA outcomes."""

from prm.rewards.implicit import (
    best_of_n,
    ce_loss,
    dpo_loss,
    first_error_step,
    kto_loss,
    nca_loss,
    pairwise_accuracy,
    q_values,
    response_scores,
    sequence_rewards,
    step_ids_from_ends,
    step_rewards,
    token_rewards,
    weighted_majority_vote,
)
from prm.rewards.outcome import (
    answer_reward,
    outcome_token_rewards,
    search_r1_format_is_valid,
    search_r1_format_reward,
)
from prm.rewards.progress import best_of_k_values, effective_rewards, prover_advantages

__all__ = [
    "answer_reward",
    "best_of_k_values",
    "best_of_n",
    "ce_loss",
    "dpo_loss",
    "effective_rewards",
    "first_error_step",
    "kto_loss",
    "nca_loss",
    "outcome_token_rewards",
    "pairwise_accuracy",
    "prover_advantages",
    "q_values",
    "response_scores",
    "search_r1_format_is_valid",
    "search_r1_format_reward",
    "sequence_rewards",
    "step_ids_from_ends",
    "step_rewards",
    "token_rewards",
    "weighted_majority_vote",
]
