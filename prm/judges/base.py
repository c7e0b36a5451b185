"""The judge interface: score a batch of SLATE step candidates on a ternary scale per dimension.

SLATE (arXiv 2602.23440; notes shared/papers/slate.md §3) rewards each candidate step
with a decomposed LLM judge. Every candidate is judged on its reasoning (the `<think>` text) and
on its action: the query of a search step, or the answer of an answer step. Each dimension scores
in {-1, 0, +1}; the step reward (Eq. 3/4, `step_reward`) sums them and adds an early-answer bonus
to answer steps.

    judge = make_judge({"name": "reference"})          # or "http", "local" (prm.registry.JUDGES)
    judgements = judge.judge([JudgeRequest(...), ...])  # one Judgement per request, same order
    a = judgement_arrays(judgements)
    r = step_rewards(a["reasoning"], a["action"], a["is_answer"], step_index, budget=4)
    metrics = judge.stats.snapshot()                    # counters: requests, fallbacks, ...

A judgement that could not be made (an unparseable reply, a request that failed after its
retries) gets the judge's neutral score and is flagged invalid, never dropped, so a batch always
comes back whole; the counters say how often that happened.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from prm.envs.protocol import ANSWER_OPEN, SEARCH_OPEN, THINK_CLOSE, THINK_OPEN

ActionKind = Literal["search", "answer"]
SCORES = (-1, 0, 1)
# SLATE §3.4: each step's retrieved text enters the judge context cut to 300 characters.
RETRIEVED_CHARS = 300
# SLATE §3.1 / §5: early-answer bonus weight λ and step budget B.
EARLY_ANSWER_BONUS = 0.1
DEFAULT_BUDGET = 4


@dataclasses.dataclass(frozen=True)
class PathStep:
    """A step already taken on the selected path: its reasoning, and for a search its query and
    the retrieved documents (`prm.envs.protocol.format_documents` of the passages)."""

    think: str
    query: str | None = None
    retrieved: str | None = None


def judge_context(
    question: str, path: Sequence[PathStep] = (), retrieved_chars: int = RETRIEVED_CHARS
) -> str:
    """The judge's context string along the selected path (SLATE §3.4):

        "Question: {q}" + per step "\\nThinking: {think}" + "\\nQuery: {query}"
                                    + "\\nRetrieved: {retrieved[:retrieved_chars]}"

    The query and retrieved parts appear for search steps only. Upstream's `question` is the
    whole user message (the instruction prompt included); pass whichever the run documents.
    """
    parts = [f"Question: {question}"]
    for step in path:
        parts.append(f"\nThinking: {step.think}")
        if step.query is not None:
            parts.append(f"\nQuery: {step.query}")
        if step.retrieved is not None:
            parts.append(f"\nRetrieved: {step.retrieved[:retrieved_chars]}")
    return "".join(parts)


def think_text(step_text: str) -> str:
    """The reasoning of a step text, without tags: what lies before `</think>` (after `<think>`
    when the step wrote it; SLATE forces `<think>` into the prefix), or, with no `</think>`, what
    lies before the action tag."""
    end = step_text.find(THINK_CLOSE)
    if end < 0:
        ends = [i for tag in (SEARCH_OPEN, ANSWER_OPEN) if (i := step_text.find(tag)) >= 0]
        end = min(ends) if ends else len(step_text)
    head = step_text[:end]
    start = head.find(THINK_OPEN)
    return (head[start + len(THINK_OPEN) :] if start >= 0 else head).strip()


def action_dimension(kind: ActionKind) -> str:
    """The dimension an action is judged on: "query" for a search step, "answer" for an answer."""
    return "query" if kind == "search" else "answer"


@dataclasses.dataclass(frozen=True)
class JudgeRequest:
    """One candidate step to judge.

    context: the judge context of the prefix (`judge_context`), shared by the k siblings.
    think: the candidate's reasoning text (`think_text`).
    kind: "search" or "answer"; the candidate's action.
    content: the query (search) or the answer text (answer).
    step_index: 0-based index of the step in its trajectory (the first step is 0).
    budget: the step budget B.
    golden_answers: gold answers, first the canonical one (required for answer steps).
    question_id: the question's id, the handle to its gold chain (reference judge).
    previous_queries: the queries already issued on the selected path, in order.
    """

    context: str
    think: str
    kind: ActionKind
    content: str
    step_index: int
    budget: int = DEFAULT_BUDGET
    golden_answers: tuple[str, ...] = ()
    question_id: str | None = None
    previous_queries: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("search", "answer"):
            raise ValueError(
                f"JudgeRequest.kind must be 'search' or 'answer', got {self.kind!r}; an invalid "
                "step has no query or answer to judge (give it the trainer's invalid-step reward)."
            )
        if not 0 <= self.step_index < self.budget:
            raise ValueError(
                f"JudgeRequest.step_index must lie in [0, budget={self.budget}), got "
                f"{self.step_index}; the forced answer after the budget is not judged (SLATE §2.1)."
            )
        if isinstance(self.golden_answers, str) or isinstance(self.previous_queries, str):
            raise TypeError("golden_answers and previous_queries are tuples of strings.")
        object.__setattr__(self, "golden_answers", tuple(self.golden_answers))
        object.__setattr__(self, "previous_queries", tuple(self.previous_queries))
        if self.kind == "answer" and not self.golden_answers:
            raise ValueError("An answer step needs golden_answers to be judged against.")

    @property
    def action_dimension(self) -> str:
        return action_dimension(self.kind)

    def fingerprint(self) -> str:
        """A stable hash of every field: the request's identity across processes and runs."""
        return stable_hash(dataclasses.asdict(self))


def stable_hash(value: Any) -> str:
    """sha256 hex digest of `value` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Judgement:
    """Scores of one candidate: `reasoning`, and `action` (the query or the answer score).

    `*_invalid` is True when that judgement could not be made; its score is then the judge's
    neutral score.
    """

    kind: ActionKind
    reasoning: int
    action: int
    reasoning_invalid: bool = False
    action_invalid: bool = False

    def __post_init__(self):
        if self.reasoning not in SCORES or self.action not in SCORES:
            raise ValueError(
                f"Judgement scores must lie in {SCORES}, got {self.reasoning}, {self.action}."
            )

    @property
    def scores(self) -> dict[str, int]:
        """{"reasoning": s, "query" | "answer": s}."""
        return {"reasoning": self.reasoning, action_dimension(self.kind): self.action}


class JudgeStats:
    """Thread-safe named counters, cumulative over the judge's life (`snapshot` for metrics)."""

    def __init__(self, names: Sequence[str]):
        self._counts = collections.Counter({name: 0 for name in names})
        self._lock = threading.Lock()

    def add(self, name: str, count: int = 1) -> None:
        if name not in self._counts:
            raise KeyError(f"Unknown judge counter {name!r}; counters: {sorted(self._counts)}.")
        with self._lock:
            self._counts[name] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]


@runtime_checkable
class Judge(Protocol):
    """Scores SLATE step candidates; `judge` returns one `Judgement` per request, in order."""

    stats: JudgeStats

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]: ...


def check_neutral_score(neutral_score: int) -> int:
    if neutral_score not in SCORES:
        raise ValueError(f"neutral_score must be one of {SCORES}, got {neutral_score!r}.")
    return int(neutral_score)


# --- Step reward (SLATE Eq. 3 and 4) -------------------------------------------------------------

BonusIndexing = Literal["paper", "code"]


def step_rewards(
    reasoning: np.ndarray,
    action: np.ndarray,
    is_answer: np.ndarray,
    step_index: np.ndarray,
    *,
    budget: int = DEFAULT_BUDGET,
    bonus: float = EARLY_ANSWER_BONUS,
    indexing: BonusIndexing = "paper",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """SLATE's step reward (slate.md §3.1, code Eq. 3 and 4), elementwise over (broadcast) arrays:

        search step:  r = r_reasoning + r_query
        answer step:  r = r_reasoning + r_answer + λ · (B − t) / B,   λ = `bonus`, B = `budget`

    `step_index` is 0-based (the first step is 0). The paper's t is 1-based, t = step_index + 1,
    so the bonus is {0.075, 0.05, 0.025, 0} for steps 0..3 with λ = 0.1, B = 4
    (`indexing="paper"`, README Algorithm 1). The released code passes its 0-based turn as t
    (slate.md §2.9 item 4), giving {0.1, 0.075, 0.05, 0.025}: `indexing="code"` reproduces it.

    `mask` (optional, bool) marks the candidates that exist, e.g. over `[questions, steps, k]`;
    masked-out entries are 0 and their inputs are not read. Returns float32 of the broadcast
    shape. Raises if a (masked-in) step index lies outside [0, budget).
    """
    reasoning, action = np.asarray(reasoning), np.asarray(action)
    is_answer, step_index = np.asarray(is_answer, bool), np.asarray(step_index)
    shape = np.broadcast_shapes(reasoning.shape, action.shape, is_answer.shape, step_index.shape)
    mask = np.ones(shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), shape)
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}.")
    outside = mask & ((step_index < 0) | (step_index >= budget))
    if np.any(outside):
        raise ValueError(
            f"step_index must lie in [0, budget={budget}); got values "
            f"{np.unique(np.broadcast_to(step_index, shape)[outside])}."
        )
    if indexing not in ("paper", "code"):
        raise ValueError(f"indexing must be 'paper' or 'code', got {indexing!r}.")
    t = step_index + 1 if indexing == "paper" else step_index
    early = bonus * (budget - t) / budget
    reward = reasoning + action + np.where(is_answer, early, 0.0)
    return np.where(mask, reward, 0.0).astype(np.float32)


def step_reward(
    judgement: Judgement,
    step_index: int,
    *,
    budget: int = DEFAULT_BUDGET,
    bonus: float = EARLY_ANSWER_BONUS,
    indexing: BonusIndexing = "paper",
) -> float:
    """`step_rewards` for one judgement."""
    reward = step_rewards(
        np.asarray(judgement.reasoning),
        np.asarray(judgement.action),
        np.asarray(judgement.kind == "answer"),
        np.asarray(step_index),
        budget=budget,
        bonus=bonus,
        indexing=indexing,
    )
    return float(reward)


def judgement_arrays(judgements: Sequence[Judgement]) -> dict[str, np.ndarray]:
    """Judgements as arrays `[N]`: `reasoning`, `action` (int32), `is_answer`, `invalid` (bool,
    either dimension invalid), for `step_rewards` and metrics."""
    return {
        "reasoning": np.asarray([j.reasoning for j in judgements], np.int32),
        "action": np.asarray([j.action for j in judgements], np.int32),
        "is_answer": np.asarray([j.kind == "answer" for j in judgements], bool),
        "invalid": np.asarray([j.reasoning_invalid or j.action_invalid for j in judgements], bool),
    }


# --- Building judges from configs ----------------------------------------------------------------


def make_judge(config: Mapping[str, Any], **resources: Any) -> Judge:
    """The judge `config["name"]` from `prm.registry.JUDGES`, built with the block's other fields
    plus `resources` (objects a trainer already holds, such as a loaded model)."""
    from prm.registry import JUDGES

    kwargs = dict(config.items())
    if "name" not in kwargs:
        raise ValueError(f"A judge config needs a 'name' (one of {JUDGES.names()}).")
    return JUDGES.get(kwargs.pop("name"))(**kwargs, **resources)
