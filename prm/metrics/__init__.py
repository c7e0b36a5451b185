"""Evaluation metrics on host-side values."""

from prm.metrics.qa import (
    answer_is_final,
    as_gold_list,
    cover_exact_match,
    exact_match,
    extract_answer,
    f1_score,
    normalize_answer,
)

__all__ = [
    "answer_is_final",
    "as_gold_list",
    "cover_exact_match",
    "exact_match",
    "extract_answer",
    "f1_score",
    "normalize_answer",
]
