"""Outcome rewards for search-augmented QA: score the final `<answer>` against the gold answers.

Search-R1 (Jin et al. 2025, arXiv 2503.09516, Eq. 4): r = EM(last answer, golds), 0 without an
answer, no format reward, placed on the last response token. StepSearch (arXiv 2505.15107): the
answer part of its global reward is F1, and a response whose last `<answer>` block is not at
its end scores −1. Search-R1's follow-up (v0.3 code, arXiv 2505.15117) shapes the reward with a
format check (`search_r1_format_reward`).

Scoring is host-side Python on decoded strings; `outcome_token_rewards` moves the scalars onto
the token grid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import chex
import jax.numpy as jnp

from prm.metrics import qa

Metric = Literal["em", "f1", "cover_em"]
_METRICS = {"em": qa.exact_match, "f1": qa.f1_score, "cover_em": qa.cover_exact_match}

_TAG = re.compile(r"(</?(?:think|search|information|answer)>)")
_INFORMATION = re.compile(r"<information>(.*?)</information>", re.DOTALL)
# Search-R1's response grammar, as (state, tag) -> next state:
#   (<think>…</think> (<search>…</search> <information>…</information> <think>…</think>)*)
#   <answer>…</answer>, with only whitespace between blocks.
_TRANSITIONS = {
    ("start", "<think>"): "in_think",
    ("information", "<think>"): "in_think",
    ("in_think", "</think>"): "after_think",
    ("after_think", "<search>"): "in_search",
    ("in_search", "</search>"): "after_search",
    ("after_search", "<information>"): "in_information",
    ("in_information", "</information>"): "information",
    ("after_think", "<answer>"): "in_answer",
    ("in_answer", "</answer>"): "end",
}
_INSIDE_BLOCK = frozenset({"in_think", "in_search", "in_information", "in_answer"})


def answer_reward(
    response: str,
    golds: str | Sequence[str],
    metric: Metric = "em",
    min_answer_spans: int = 1,
    require_final_answer: bool = False,
    format_penalty: float = -1.0,
) -> float:
    """Outcome reward of a response: `metric(last <answer> span, golds)`.

    Args:
      response: decoded text; with `min_answer_spans=2`, the prompt + response as Search-R1
        scores it (its prompt's example answer is the first span).
      golds: the gold answer or its aliases.
      metric: "em" (Search-R1), "f1" (StepSearch, R1-Searcher stage 2) or "cover_em" (gold
        contained in the answer).
      min_answer_spans: see `prm.metrics.qa.extract_answer`.
      require_final_answer: StepSearch's format gate: unless the text ends with an answer block
        (`qa.answer_is_final`), return `format_penalty` instead of a score.
      format_penalty: the reward for failing that gate (StepSearch: −1).

    Returns:
      The metric in [0, 1]; 0.0 when no answer is found (Search-R1), or `format_penalty`.
    """
    if metric not in _METRICS:
        raise ValueError(f"Unknown metric {metric!r}; use one of {sorted(_METRICS)}.")
    gold_list = qa.as_gold_list(golds)
    if require_final_answer and not qa.answer_is_final(response):
        return format_penalty
    answer = qa.extract_answer(response, min_spans=min_answer_spans)
    return 0.0 if answer is None else _METRICS[metric](answer, gold_list)


def search_r1_format_is_valid(response: str) -> bool:
    """Whether a response follows Search-R1's tag grammar (v0.3 `is_valid_sequence`).

    The grammar is `<think>…</think>` then any number of `<search>…</search>
    <information>…</information> <think>…</think>` rounds, then `<answer>…</answer>`, with only
    whitespace between blocks and after the answer, no tag nested inside another block, and
    balanced tag counts. `response` is the assistant's text only (the reference code first cuts
    everything up to the `<|im_start|>assistant` marker).
    """
    for tag in ("think", "search", "information", "answer"):
        if response.count(f"<{tag}>") != response.count(f"</{tag}>"):
            return False
    state = "start"
    for part in _TAG.split(response):
        if not part.strip():
            continue
        if _TAG.fullmatch(part):
            state = _TRANSITIONS.get((state, part), "invalid")
            if state == "invalid":
                return False
        elif state not in _INSIDE_BLOCK:
            return False
    return state == "end"


def _retrieval_contains_gold(response: str, golds: Sequence[str]) -> bool:
    blocks = [qa.normalize_answer(block) for block in _INFORMATION.findall(response)]
    return any(qa.normalize_answer(gold) in block for gold in golds for block in blocks)


def search_r1_format_reward(
    response: str,
    golds: str | Sequence[str],
    structure_score: float = 0.2,
    final_format_score: float = 0.1,
    retrieval_score: float = 0.0,
    min_answer_spans: int = 1,
) -> float:
    """Search-R1's format-shaped EM reward (v0.3 code, `qa_em_format.compute_score_em`).

    With `valid` = `search_r1_format_is_valid(response)` and λ_f = `structure_score`,
    λ_r = `retrieval_score` (λ_r is earned when a normalised gold occurs in some normalised
    `<information>` block):

      | answer | EM | valid | reward              |
      | none   | -  | yes   | λ_f (+ λ_r)         |
      | none   | -  | no    | 0                   |
      | found  | 1  | yes   | 1                   |
      | found  | 1  | no    | 1 − λ_f             |
      | found  | 0  | yes   | λ_f (+ λ_r)         |
      | found  | 0  | no    | final_format_score  |

    Defaults are the v0.3 scripts' (0.2, 0.1, 0). Unlike the reference code, `response` is the
    assistant text alone, hence `min_answer_spans=1`.
    """
    gold_list = qa.as_gold_list(golds)
    valid = search_r1_format_is_valid(response)
    answer = qa.extract_answer(response, min_spans=min_answer_spans)
    correct = answer is not None and qa.exact_match(answer, gold_list) == 1.0
    if correct:
        return 1.0 if valid else 1.0 - structure_score
    if valid:
        bonus = retrieval_score if _retrieval_contains_gold(response, gold_list) else 0.0
        return structure_score + bonus
    return 0.0 if answer is None else final_format_score


def outcome_token_rewards(scores: chex.Array, mask: chex.Array) -> chex.Array:
    """Place one scalar per sequence on its last valid token: `[B]`, `[B, T]` -> `[B, T]`.

    Search-R1 puts the outcome reward at `valid_response_length − 1`; `mask` is the response
    attention mask (observation tokens included, as in the reference). All-zero rows for
    sequences with no valid token.
    """
    chex.assert_rank(mask, scores.ndim + 1)
    chex.assert_equal_shape_prefix([scores, mask], scores.ndim)
    present = mask.astype(bool)
    length = mask.shape[-1]
    last = length - 1 - jnp.argmax(jnp.flip(present, axis=-1), axis=-1)
    at_last = (jnp.arange(length) == last[..., None]) & jnp.any(present, axis=-1, keepdims=True)
    return jnp.where(at_last, scores[..., None], 0.0)
