"""Question-answering metrics on host-side strings: SQuAD normalisation, EM, F1, answer spans.

The conventions are those of SQuAD (Rajpurkar et al. 2016), shared by Search-R1 (Jin et al. 2025,
arXiv 2503.09516), StepSearch (arXiv 2505.15107), ReSearch and FlashRAG, so scores compare with
their tables:

  normalise(s) = collapse-whitespace(remove-articles(remove-ASCII-punctuation(lower(s))))

Every score takes a list of gold answers (aliases) and returns the max over them.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterator, Sequence
from typing import Literal

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
# HotpotQA's official F1 (also FlashRAG, ReSearch) scores these answers all-or-nothing.
_SPECIAL_ANSWERS = frozenset({"yes", "no", "noanswer"})


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, drop ASCII punctuation, drop a/an/the, squash spaces.

    Only `string.punctuation` is removed (not Unicode dashes or quotes), and articles are removed
    as whole words after lowercasing, exactly as in the SQuAD evaluation script. Idempotent.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def as_gold_list(golds: str | Sequence[str]) -> list[str]:
    """A gold answer or a sequence of aliases as a non-empty list; ValueError if empty."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("golds is empty; pass at least one gold answer (a string or a list).")
    return golds


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if normalise(prediction) equals normalise(g) for some gold answer g, else 0.0."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in as_gold_list(golds)))


def cover_exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if some normalise(g) occurs as a substring of normalise(prediction), else 0.0.

    "Sub-EM" / "cover EM" / ACC_R (Search-R1 `subem_check`, FlashRAG, R1-Searcher). A gold that
    normalises to the empty string is skipped: it would be a substring of everything.
    """
    normalized = normalize_answer(prediction)
    return float(
        any(gold and gold in normalized for gold in map(normalize_answer, as_gold_list(golds)))
    )


EmptyRule = Literal["paper", "squad_v2"]
_EMPTY_RULES = ("paper", "squad_v2")


def _token_f1(prediction: str, gold: str, special_answers: bool, empty_rule: EmptyRule) -> float:
    if special_answers and (prediction in _SPECIAL_ANSWERS or gold in _SPECIAL_ANSWERS):
        return float(prediction == gold)
    prediction_tokens, gold_tokens = prediction.split(), gold.split()
    if empty_rule == "squad_v2" and (not prediction_tokens or not gold_tokens):
        return float(prediction_tokens == gold_tokens)
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(
    prediction: str,
    golds: str | Sequence[str],
    special_answers: bool = False,
    empty_rule: EmptyRule = "paper",
) -> float:
    """Token F1 of the normalised strings, max over gold answers.

    P = |pred ∩ gold| / |pred|, R = |pred ∩ gold| / |gold| with multiset (bag-of-tokens) overlap,
    F1 = 2PR / (P + R), and 0 when nothing overlaps.

    `empty_rule` says what a side that normalises to no tokens scores:
      "paper": nothing overlaps, so 0, even when both sides are empty: SQuAD v1's `f1_score`,
        the rule behind the F1 the papers report (StepSearch, FlashRAG, ReSearch; notes:
        search_r1_stepsearch.md §4), so scores compare with their tables. EM can then exceed
        F1: "The" against the gold "a" has EM 1, F1 0.
      "squad_v2": 1.0 if both sides are empty, else 0.0 (SQuAD v2's no-answer rule; keeps
        EM ≤ F1).
    `special_answers=True` applies the HotpotQA / FlashRAG rule: if either side is "yes", "no"
    or "noanswer", F1 is 1.0 only on equality.
    """
    if empty_rule not in _EMPTY_RULES:
        raise ValueError(f"empty_rule must be one of {_EMPTY_RULES}, got {empty_rule!r}.")
    normalized = normalize_answer(prediction)
    return max(
        _token_f1(normalized, normalize_answer(gold), special_answers, empty_rule)
        for gold in as_gold_list(golds)
    )


def _answer_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each `<answer>…</answer>` span, end past the closing tag; O(len(text)).

    The spans of `re.finditer(r"<answer>(.*?)</answer>", text, re.DOTALL)`, whose every failed
    start position scans to the end of the text (quadratic in a text of repeated `<answer>`):
    from each position the next span opens at the next `<answer>` and closes at the first
    `</answer>` after it; if none follows, no later `<answer>` is closed either.
    """
    position = 0
    while (start := text.find(_ANSWER_OPEN, position)) >= 0:
        close = text.find(_ANSWER_CLOSE, start + len(_ANSWER_OPEN))
        if close < 0:
            return
        position = close + len(_ANSWER_CLOSE)
        yield start, position


def extract_answer(text: str, min_spans: int = 1) -> str | None:
    """The stripped content of the last `<answer>...</answer>` span, or None.

    Spans are the non-overlapping non-greedy matches of `<answer>(.*?)</answer>` across lines, as
    in Search-R1's `extract_solution` (an unclosed `<answer>` before a complete span is part of
    that span's content, as there); see `_answer_spans`. Returns None when fewer than `min_spans`
    spans exist.

    `min_spans=2` reproduces Search-R1's scoring of prompt + response: its prompt contains the
    example `<answer> Beijing </answer>`, so one span means the response gave no answer. Score
    the response alone with the default `min_spans=1` (StepSearch strips the prompt first).
    """
    if min_spans < 1:
        raise ValueError(f"min_spans must be >= 1, got {min_spans}.")
    spans = list(_answer_spans(text))
    if len(spans) < min_spans:
        return None
    start, end = spans[-1]
    return text[start + len(_ANSWER_OPEN) : end - len(_ANSWER_CLOSE)].strip()


def answer_is_final(text: str) -> bool:
    """True if `text` has an answer span and nothing but whitespace after the last one.

    StepSearch's format gate (`answer_last_check`): responses failing it get its format penalty.
    """
    spans = list(_answer_spans(text))
    return bool(spans) and not text[spans[-1][1] :].strip()
