"""The reference judge of the synthetic world: exact ternary scores read off the gold chain.

SLATE's judge is an LLM reading rubric prompts (slate.md §3.3). In the synthetic world every
question carries its gold chain (`Question.hops`: subject, relation, object, supporting passage),
so the same three dimensions can be scored exactly, with the world's own retriever. The rules,
for a request of question q with gold passages D(q):

Retrieved so far. R = the gold passages among the top-k results (the judge's retriever, `topk`)
of the queries already issued on the path (`previous_queries`). The *needed* hops are those whose
passage is not in R. The *next* hops are the first needed hop of a chain question (single,
bridge, compositional: hops resolve in order) or every needed hop of a comparison question (its
two hops are independent).

Mentions. Text mentions a name when the SQuAD-normalised name (lower case, no punctuation or
articles; `prm.metrics.qa.normalize_answer`) occurs in the normalised text as whole words. An
entity's names are its name and aliases; a year is its digits. A relation's keyword is its
question phrase without "the … of" ("birthplace", "birth year", "founding year", ...).

reasoning (the think text):
  +1  there are next hops and the text mentions the subject of a next hop together with that
      hop's relation keyword; or nothing is needed any more and it mentions a gold answer;
   0  otherwise, if it mentions any entity of the gold chain (a hop's subject or object), a gold
      answer, or a next hop's relation keyword (vaguely relevant);
  −1  otherwise (wrong or irrelevant, empty included).
query (search steps):
  +1  its top-k holds a gold passage not in R (a needed passage, newly retrieved);
   0  otherwise, if its top-k holds a gold passage already in R (redundant), or it shares a word
      with a name of a needed hop's subject (relevant but too vague to retrieve it);
  −1  otherwise (useless).
answer (answer steps), against `golden_answers`:
  +1  exact match (`prm.metrics.qa.exact_match`);  0  token F1 > 0 (partly right);  −1  F1 = 0.

Judge error (`error_rate` = p): each score is replaced, with probability p, by one of the two
other values, chosen uniformly. The draw is a hash of (seed, request fingerprint, dimension),
so the same request always gets the same score, in any batch, process or resumed run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from prm.envs.assets import load_world_assets, world_config_from
from prm.envs.retrieval.base import Retriever
from prm.envs.synthetic_world import RELATIONS, Hop, Question, World
from prm.judges.base import SCORES, Judgement, JudgeRequest, JudgeStats
from prm.metrics import qa
from prm.registry import JUDGES


def relation_keyword(relation: str) -> str:
    """'birth_year' -> 'birth year': the relation's question phrase without 'the … of {}'."""
    return RELATIONS[relation][2].removeprefix("the ").removesuffix(" of {}")


def mentions(text: str, name: str) -> bool:
    """`name` occurs in `text` as whole words, both SQuAD-normalised."""
    name = qa.normalize_answer(name)
    return bool(name) and f" {name} " in f" {qa.normalize_answer(text)} "


def _words(text: str) -> set[str]:
    return set(qa.normalize_answer(text).split())


@dataclasses.dataclass(frozen=True)
class _Progress:
    """Where a path stands on its question's gold chain."""

    needed: tuple[Hop, ...]  # hops whose passage has not been retrieved
    next: tuple[Hop, ...]  # the hops to work on now
    retrieved_gold: frozenset[str]  # R


class ReferenceJudge:
    """Deterministic judge of synthetic-world steps (rules in the module docstring).

    Args:
      world: the world whose questions the requests name by `question_id`.
      retriever: the world's retriever (the BM25 index of `load_world_assets`).
      topk: documents per query, as in the env (Search-R1 and SLATE: 3).
      error_rate: probability that a score is replaced by a wrong one.
      seed: seeds the error draws.
    Counters: `judgements` (scores given), `corrupted` (scores replaced by the error knob).
    """

    def __init__(
        self,
        world: World,
        retriever: Retriever,
        *,
        topk: int = 3,
        error_rate: float = 0.0,
        seed: int = 0,
    ):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}.")
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must lie in [0, 1], got {error_rate}.")
        self.world = world
        self.retriever = retriever
        self.topk = topk
        self.error_rate = error_rate
        self.seed = seed
        self.questions: dict[str, Question] = {q.id: q for q in world.questions}
        self.stats = JudgeStats(("judgements", "corrupted"))

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgement]:
        questions = [self._question(r) for r in requests]
        # Every query of the batch goes to the retriever once, in one call.
        queries = list(
            dict.fromkeys(
                q
                for r in requests
                for q in (*r.previous_queries, *([r.content] if r.kind == "search" else []))
            )
        )
        found = self.retriever.retrieve(queries, self.topk) if queries else []
        top = {query: {p["id"] for p in passages} for query, passages in zip(queries, found)}
        judgements = []
        for request, question in zip(requests, questions):
            progress = self._progress(question, request.previous_queries, top)
            reasoning = self._reasoning_score(question, progress, request.think)
            if request.kind == "search":
                action = self._query_score(
                    question, progress, request.content, top[request.content]
                )
            else:
                action = self._answer_score(request.content, request.golden_answers)
            fingerprint = request.fingerprint()
            judgements.append(
                Judgement(
                    kind=request.kind,
                    reasoning=self._with_error(reasoning, fingerprint, "reasoning"),
                    action=self._with_error(action, fingerprint, request.action_dimension),
                )
            )
        self.stats.add("judgements", 2 * len(requests))
        return judgements

    def _question(self, request: JudgeRequest) -> Question:
        if request.question_id is None:
            raise ValueError("The reference judge needs JudgeRequest.question_id (its gold chain).")
        if request.question_id not in self.questions:
            raise KeyError(
                f"Question {request.question_id!r} is not in the judge's world; build the judge "
                "from the world the questions come from."
            )
        return self.questions[request.question_id]

    def _progress(
        self, question: Question, previous_queries: Sequence[str], top: Mapping[str, set[str]]
    ) -> _Progress:
        gold = set(question.gold_doc_ids)
        retrieved = frozenset(d for q in previous_queries for d in top[q] & gold)
        needed = tuple(h for h in question.hops if h.doc_id not in retrieved)
        next_hops = needed if question.qtype == "comparison" else needed[:1]
        return _Progress(needed, next_hops, retrieved)

    def _names(self, value: str | int) -> tuple[str, ...]:
        return (str(value),) if isinstance(value, int) else self.world.entities[value].aliases

    def _reasoning_score(self, question: Question, progress: _Progress, think: str) -> int:
        if not progress.needed:
            if any(mentions(think, a) for a in question.answers):
                return 1
        elif any(
            mentions(think, relation_keyword(h.relation))
            and any(mentions(think, n) for n in self._names(h.subject))
            for h in progress.next
        ):
            return 1
        relevant = [
            *(n for h in question.hops for v in (h.subject, h.object) for n in self._names(v)),
            *question.answers,
            *(relation_keyword(h.relation) for h in progress.next),
        ]
        return 0 if any(mentions(think, n) for n in relevant) else -1

    def _query_score(
        self, question: Question, progress: _Progress, query: str, top_ids: set[str]
    ) -> int:
        """`top_ids`: the ids of the query's top-k passages."""
        gold = set(question.gold_doc_ids)
        if top_ids & (gold - progress.retrieved_gold):
            return 1
        if top_ids & gold:
            return 0
        words = _words(query)
        vague = any(words & _words(n) for h in progress.needed for n in self._names(h.subject))
        return 0 if vague else -1

    def _answer_score(self, answer: str, golden_answers: Sequence[str]) -> int:
        if qa.exact_match(answer, golden_answers):
            return 1
        return 0 if qa.f1_score(answer, golden_answers) > 0 else -1

    def _with_error(self, score: int, fingerprint: str, dimension: str) -> int:
        if self.error_rate == 0.0:
            return score
        digest = hashlib.sha256(f"{self.seed}|{fingerprint}|{dimension}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= self.error_rate:
            return score
        self.stats.add("corrupted")
        others = [s for s in SCORES if s != score]
        return others[digest[8] % 2]


@JUDGES.register("reference")
def reference_judge(
    world: Mapping[str, Any] | None = None,
    cache_dir: str = "",
    vocab_size: int = 1024,
    topk: int = 3,
    error_rate: float = 0.0,
    seed: int = 0,
) -> ReferenceJudge:
    """The reference judge over the world `world` (`WorldConfig` fields; the default world when
    empty), loaded with its BM25 index from `cache_dir` (`prm.envs.assets`)."""
    assets = load_world_assets(world_config_from(world or {}), cache_dir or None, vocab_size)
    return ReferenceJudge(
        assets.world, assets.retriever, topk=topk, error_rate=error_rate, seed=seed
    )
