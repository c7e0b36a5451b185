"""SLATE's three rubric prompts (reasoning, query, answer), the score parser, and the judge base
that turns model replies into judgements; shared by the HTTP and the local judge.

The prompts follow the structure of SLATE's judge prompts (slate.md §3.3), in our own wording:
a task line; `Context:`; the item(s) under evaluation; numbered criteria; the three values with
their labels (+1 GOOD/CORRECT, 0 ACCEPTABLE/PARTIALLY CORRECT, −1 BAD/INCORRECT); the required
output `<explanation>…</explanation><score>N</score>`, explanation first. Each candidate costs
two prompts: reasoning, and query or answer (§3.6).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence

from prm.judges.base import (
    Judgement,
    JudgeRequest,
    JudgeStats,
    check_neutral_score,
)

_OUTPUT_FORMAT = (
    "Write your explanation first, then the score, in exactly this format:\n"
    "<explanation>your explanation</explanation><score>N</score>\n"
    "where N is -1, 0 or 1."
)

REASONING_TEMPLATE = (
    "You are grading one reasoning step of an assistant that answers a question by searching a "
    "knowledge source, one step at a time.\n\n"
    "Context: {context}\n\n"
    "Current Thinking Step: {think}\n\n"
    "The reasoning may use only the question and the information shown in the context.\n\n"
    "Grade the step on these criteria:\n"
    "1. Relevance: it works toward answering the question.\n"
    "2. Clarity: it is coherent and easy to follow.\n"
    "3. Specificity: it says concretely which information is still missing.\n"
    "4. Progress: it moves beyond what is already known.\n"
    "5. Faithfulness: it states no facts that are absent from the question and the context.\n\n"
    "Give exactly one of these scores:\n"
    "+1 (GOOD): relevant, clear, specific and faithful; it advances the search.\n"
    "0 (ACCEPTABLE): on topic, but vague or making little progress.\n"
    "-1 (BAD): irrelevant, confused or misleading, or it relies on facts not in the context.\n\n"
    + _OUTPUT_FORMAT
)

QUERY_TEMPLATE = (
    "You are grading one search query written by an assistant that answers a question by "
    "searching a knowledge source, one step at a time. Grade the query itself; its results are "
    "not known yet.\n\n"
    "Context: {context}\n\n"
    "Thinking before this query: {think}\n\n"
    "Generated Query: {query}\n\n"
    "Note: a multi-hop question needs intermediate facts first, so a query for an intermediate "
    "fact that the question depends on is a good query.\n\n"
    "Grade the query on these criteria:\n"
    "1. Relevance: it makes progress toward the answer (intermediate facts count).\n"
    "2. Specificity: it is precise enough to find the needed information; a single generic word "
    "is too vague.\n"
    "3. Searchability: it is a well-formed search with several relevant terms.\n"
    "4. Alignment: it follows from the thinking before it.\n"
    "5. Novelty: it asks for information the context does not already hold.\n\n"
    "Give exactly one of these scores:\n"
    "+1 (GOOD): specific, relevant, well-formed, aligned with the thinking, and new.\n"
    "0 (ACCEPTABLE): relevant but somewhat generic.\n"
    '-1 (BAD): a single generic word (such as "singer" or "city"), irrelevant, redundant with '
    "the context, or badly formed.\n\n" + _OUTPUT_FORMAT
)

ANSWER_TEMPLATE = (
    "You are grading the final answer an assistant gave to a question, against the ground truth "
    "answer.\n\n"
    "Context: {context}\n\n"
    "Ground Truth Answer: {gold}\n\n"
    "Predicted Answer: {answer}\n\n"
    "Grade by meaning, not by exact wording:\n"
    "1. Equivalence: the prediction names the same entity, value or fact as the ground truth.\n"
    "2. Completeness: no part of the ground truth is missing.\n"
    "3. Precision: it adds no wrong or contradicting claims.\n\n"
    "Give exactly one of these scores:\n"
    "+1 (CORRECT): the same answer as the ground truth, possibly worded differently.\n"
    "0 (PARTIALLY CORRECT): incomplete, ambiguous, or with minor inaccuracies.\n"
    "-1 (INCORRECT): a different answer, or no answer.\n\n" + _OUTPUT_FORMAT
)


def _context(request: JudgeRequest) -> str:
    return request.context or "None"


def reasoning_prompt(request: JudgeRequest) -> str:
    return REASONING_TEMPLATE.format(context=_context(request), think=request.think)


def query_prompt(request: JudgeRequest) -> str:
    return QUERY_TEMPLATE.format(
        context=_context(request), think=request.think, query=request.content
    )


def answer_prompt(request: JudgeRequest, all_golden_answers: bool = False) -> str:
    """Upstream shows the first gold answer only (slate.md §2.9 item 5); `all_golden_answers`
    lists every alias, separated by " | "."""
    golds = request.golden_answers if all_golden_answers else request.golden_answers[:1]
    return ANSWER_TEMPLATE.format(
        context=_context(request), gold=" | ".join(golds), answer=request.content
    )


def request_prompts(request: JudgeRequest, all_golden_answers: bool = False) -> tuple[str, str]:
    """(reasoning prompt, query or answer prompt) of one candidate."""
    if request.kind == "search":
        action = query_prompt(request)
    else:
        action = answer_prompt(request, all_golden_answers)
    return reasoning_prompt(request), action


_SCORE_TAG = re.compile(r"<score>(.*?)</score>", re.DOTALL)
_SCORE_VALUES = {"-1": -1, "0": 0, "1": 1, "+1": 1}


def parse_score(reply: str) -> int | None:
    """The score of a judge reply, or None when it has no unambiguous one.

    Strict, unlike upstream's fallbacks to "Score:" or to the first number anywhere (slate.md
    §3.5): the reply must hold exactly one `<score>…</score>` element whose content, stripped of
    whitespace, is -1, 0, 1 or +1.
    """
    found = _SCORE_TAG.findall(reply)
    if len(found) != 1:
        return None
    return _SCORE_VALUES.get(found[0].strip())


class PromptJudge(abc.ABC):
    """A judge that asks a model: two rubric prompts per request, replies parsed by `parse_score`.

    Subclasses implement `complete(prompts) -> replies`, a reply being None when the model could
    not be asked (a request that failed for good). Unparseable and missing replies get
    `neutral_score` and the invalid flag. Counters: `prompts` (judgements asked), `unparseable`,
    `failed` (no reply), `fallbacks` (neutral scores given: unparseable + failed), plus the
    subclass's `extra_counters`.
    """

    def __init__(
        self,
        *,
        neutral_score: int = 0,
        all_golden_answers: bool = False,
        extra_counters: Sequence[str] = (),
    ):
        self.neutral_score = check_neutral_score(neutral_score)
        self.all_golden_answers = all_golden_answers
        self.stats = JudgeStats(("prompts", "unparseable", "failed", "fallbacks", *extra_counters))

    @abc.abstractmethod
    def complete(self, prompts: Sequence[str]) -> list[str | None]:
        """One reply per prompt, in order (None: the model could not be asked)."""

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        prompts = [p for r in requests for p in request_prompts(r, self.all_golden_answers)]
        if not prompts:
            return []
        replies = self.complete(prompts)
        if len(replies) != len(prompts):
            raise RuntimeError(
                f"complete() gave {len(replies)} replies for {len(prompts)} prompts."
            )
        self.stats.add("prompts", len(prompts))
        scores = [self._score(reply) for reply in replies]
        return [
            Judgement(
                kind=request.kind,
                reasoning=scores[2 * i][0],
                action=scores[2 * i + 1][0],
                reasoning_invalid=scores[2 * i][1],
                action_invalid=scores[2 * i + 1][1],
            )
            for i, request in enumerate(requests)
        ]

    def _score(self, reply: str | None) -> tuple[int, bool]:
        """(score, invalid)."""
        if reply is None:
            self.stats.add("failed")
        else:
            score = parse_score(reply)
            if score is not None:
                return score, False
            self.stats.add("unparseable")
        self.stats.add("fallbacks")
        return self.neutral_score, True
