"""Evaluation of policies with real rollouts: QA EM/F1 tables per question type or benchmark."""

from prm.evaluation.qa import (
    evaluate_dataset_config,
    evaluate_policy,
    evaluate_world,
    evaluate_world_config,
    expert_records,
    flatten_tables,
    format_csv,
    format_markdown,
    qa_metrics,
    summarize,
    tables_from_metrics,
    write_tables,
)

__all__ = [
    "evaluate_dataset_config",
    "evaluate_policy",
    "evaluate_world",
    "evaluate_world_config",
    "expert_records",
    "flatten_tables",
    "format_csv",
    "format_markdown",
    "qa_metrics",
    "summarize",
    "tables_from_metrics",
    "write_tables",
]
