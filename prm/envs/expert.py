"""A noisy expert that plays the synthetic world from its gold chain, for SFT demonstrations.

The expert knows each question's gold chain (`Question.hops`) and searches for one hop at a time
with a precise query ("birthplace of Varo Kelin"). It plays through `SearchEnv` with a real
retriever, so observations are real; it moves to the next hop only once the hop's gold passage
shows up in an observation, and otherwise re-asks precisely (one retry, then it goes on with the
chain's fact). Noise, each a per-search-step probability (`ExpertConfig`):

    vague_query_rate       the entity is named only partly ("birthplace of Kelin")
    wrong_query_rate       a confusable or random other entity is named instead
    redundant_search_rate  after a successful hop, the same query is sent again
    premature_answer_rate  the expert answers with what it knows so far and stops

Vague and wrong queries are usually followed by a precise retry (a recovery worth imitating);
premature answers are mostly wrong. Zero noise with a retriever that returns
the gold passage gives EM = 1 on every question.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from prm.envs import protocol
from prm.envs.retrieval.base import Retriever
from prm.envs.synthetic_world import RELATIONS, Hop, Question, World

# The synthetic world's env: Search-R1's top-3 and 4 turns; passages are short, so no truncation.
WORLD_ENV_CONFIG = protocol.EnvConfig(topk=3, max_turns=4, max_obs_tokens=None)


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    vague_query_rate: float = 0.1
    wrong_query_rate: float = 0.1
    redundant_search_rate: float = 0.1
    premature_answer_rate: float = 0.05
    # A short <think> before each action costs ~15 tokens a step: off by default so 2-hop
    # demonstrations fit the default policy's 256-token context.
    think: bool = False
    seed: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"ExpertConfig.{field.name} must be in [0, 1], got {value}.")


@dataclasses.dataclass(frozen=True)
class Demonstration:
    question: Question
    segments: list[protocol.Segment]  # prompt, then policy steps and observations
    answer: str | None
    em: float
    f1: float


def _phrase(world: World, hop: Hop, subject_name: str | None = None) -> str:
    """'the birthplace of Varo Kelin'."""
    name = world.name(hop.subject) if subject_name is None else subject_name
    return RELATIONS[hop.relation][2].format(name)


def _fact(world: World, hop: Hop) -> str:
    """'The birthplace of Varo Kelin is Tamsby.'"""
    sentence = f"{_phrase(world, hop)} is {world.name(hop.object)}."
    return sentence[0].upper() + sentence[1:]


def _query(world: World, hop: Hop, subject_name: str | None = None) -> str:
    """The precise query for a hop: its phrase without the leading article."""
    return _phrase(world, hop, subject_name).removeprefix("the ").strip()


def _step(think: str | None, tag: str, content: str) -> str:
    prefix = f"{protocol.THINK_OPEN} {think} {protocol.THINK_CLOSE}\n" if think else ""
    return f"{prefix}<{tag}> {content} </{tag}>"


def gold_steps(world: World, question: Question, think: bool = True) -> list[str]:
    """The noise-free expert's step texts for `question` (observations left out)."""
    steps, known = [], ""
    for hop in question.hops:
        need = f"I need {_phrase(world, hop)}."
        steps.append(
            _step(f"{known} {need}".strip() if think else None, "search", _query(world, hop))
        )
        known = _fact(world, hop)
    steps.append(_step(known if think else None, "answer", question.answers[0]))
    return steps


class ExpertAgent:
    """The expert for one question: `act(observation)` returns the next step text."""

    def __init__(
        self,
        world: World,
        question: Question,
        config: ExpertConfig,
        rng: random.Random,
        max_searches: int,
    ):
        self.world, self.question, self.config, self.rng = world, question, config, rng
        self.searches_left = max_searches  # the env's search-enabled turns
        self.hop = 0  # index of the next unresolved hop
        self.known: list[str] = []  # facts read so far
        self.searched: Hop | None = None  # hop the last search was for, if any
        self.retries = 0
        self.last_query: str | None = None
        self.redundant = False  # the last search repeated an already answered one

    def _gold_seen(self, observation: str) -> bool:
        hop = self.searched
        title, text = self.world.passages[hop.doc_id]
        return f'(Title: "{title}") {text}' in observation

    def act(self, observation: str) -> str:
        if self.redundant:
            self.redundant = False
        elif self.searched is not None:
            if self._gold_seen(observation) or self.retries >= 1:
                self.known.append(_fact(self.world, self.searched))
                self.hop += 1
                self.retries = 0
                if (
                    self.hop < len(self.question.hops)
                    and self.searches_left > 1
                    and self._coin("redundant_search_rate")
                ):
                    self.redundant = True
                    self.searches_left -= 1
                    return _step(self._think(None), "search", self.last_query)
            else:
                self.retries += 1
        hops = self.question.hops
        if self.hop == len(hops):
            return self._answer(self.question.answers[0])
        hop = hops[self.hop]
        if self.searches_left == 0 or self._coin("premature_answer_rate"):
            return self._answer(self._guess())
        if self.retries == 0 and self._coin("vague_query_rate"):
            return self._search(hop, _query(self.world, hop, self._vague_name(hop.subject)))
        if self.retries == 0 and self._coin("wrong_query_rate"):
            return self._search(hop, _query(self.world, hop, self._confusable_name(hop.subject)))
        return self._search(hop, _query(self.world, hop))

    def _coin(self, rate: str) -> bool:
        return self.rng.random() < getattr(self.config, rate)

    def _think(self, need: str | None) -> str | None:
        if not self.config.think:
            return None
        parts = self.known[-1:] + ([need] if need else [])
        return " ".join(parts) or None

    def _search(self, hop: Hop, query: str) -> str:
        self.searched, self.last_query = hop, query
        self.searches_left -= 1
        return _step(self._think(f"I need {_phrase(self.world, hop)}."), "search", query)

    def _answer(self, answer: str) -> str:
        self.searched = None
        return _step(self._think(None), "answer", answer)

    def _guess(self) -> str:
        """A premature answer: the last bridge entity reached, else the question's first entity."""
        if self.hop > 0 and self.question.qtype != "comparison":
            return self.world.name(self.question.hops[self.hop - 1].object)
        return self.world.name(self.question.hops[0].subject)

    def _vague_name(self, entity_id: str) -> str:
        name = self.world.entities[entity_id].name
        words = name.split(" ")
        return words[-1] if len(words) > 1 else ""

    def _confusable_name(self, entity_id: str) -> str:
        """Another entity's name, preferably one that looks alike (a shared word or stem)."""
        entity = self.world.entities[entity_id]
        others = [
            e for e in self.world.entities.values() if e.kind == entity.kind and e.id != entity_id
        ]
        words = set(entity.name.split(" "))
        twins = [
            e for e in others if words & set(e.name.split(" ")) or e.name[:4] == entity.name[:4]
        ]
        return self.rng.choice(twins or others).name


def generate_demonstrations(
    world: World,
    questions: Sequence[Question],
    retriever: Retriever,
    expert_config: ExpertConfig = ExpertConfig(),
    env_config: protocol.EnvConfig = WORLD_ENV_CONFIG,
    tokenizer: protocol.TextTokenizer | None = None,
    template: str = protocol.COMPACT_TEMPLATE,
) -> list[Demonstration]:
    """Plays every question with the expert through a batched `SearchEnv`.

    Each question gets its own random stream (seeded by `expert_config.seed` and the question
    id), so a demonstration does not depend on which other questions share the batch.
    """
    env = protocol.SearchEnv(retriever, env_config, tokenizer, template)
    env.reset([protocol.QATask(q.text, q.answers) for q in questions])
    agents = [
        ExpertAgent(
            world,
            q,
            expert_config,
            random.Random(f"{expert_config.seed}/{q.id}"),
            env_config.max_turns,
        )
        for q in questions
    ]
    observations = [""] * len(questions)
    while not all(env.done):
        texts = [
            None if done else agent.act(obs)
            for agent, obs, done in zip(agents, observations, env.done)
        ]
        results = env.step(texts)
        observations = [r.observation if r else "" for r in results]
    return [
        Demonstration(q, list(e.segments), e.answer, e.em, e.f1)
        for q, e in zip(questions, env.episodes)
    ]
