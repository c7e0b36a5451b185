"""Judges of SLATE step candidates: one interface (`base`), three backends chosen by name in
`prm.registry.JUDGES`: "reference" (exact scores from the synthetic world's gold chains), "http"
(an OpenAI-compatible chat completions server) and "local" (a model run by prm's sampler)."""

from prm.judges.base import (
    DEFAULT_BUDGET,
    EARLY_ANSWER_BONUS,
    RETRIEVED_CHARS,
    SCORES,
    Judge,
    Judgement,
    JudgeRequest,
    JudgeStats,
    PathStep,
    judge_context,
    judgement_arrays,
    make_judge,
    step_reward,
    step_rewards,
    think_text,
)
from prm.judges.http import HttpJudge, ReplyCache
from prm.judges.local import LocalJudge
from prm.judges.prompts import (
    PromptJudge,
    answer_prompt,
    parse_score,
    query_prompt,
    reasoning_prompt,
    request_prompts,
)
from prm.judges.reference import ReferenceJudge

__all__ = [
    "DEFAULT_BUDGET",
    "EARLY_ANSWER_BONUS",
    "RETRIEVED_CHARS",
    "SCORES",
    "HttpJudge",
    "Judge",
    "JudgeRequest",
    "JudgeStats",
    "Judgement",
    "LocalJudge",
    "PathStep",
    "PromptJudge",
    "ReferenceJudge",
    "ReplyCache",
    "answer_prompt",
    "judge_context",
    "judgement_arrays",
    "make_judge",
    "parse_score",
    "query_prompt",
    "reasoning_prompt",
    "request_prompts",
    "step_reward",
    "step_rewards",
    "think_text",
]
