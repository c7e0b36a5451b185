"""SLATE: one trajectory per question grown step by step, k judged siblings at every step.

SLATE (Samarinas, Chang, Zamani; arXiv 2602.23440; notes shared/papers/slate.md). Follows
the paper (§2.2-2.7), not the released code, whose trainer never reads its own siblings (§2.9).
Per train step, for a batch of questions, batched over the questions still playing:

    for t = 0 .. B−1:
        k siblings from the shared prefix: one fork of the KV cache, no re-prefill      §2.2
        judge each valid sibling: reasoning, and query or answer, each in {−1, 0, +1}     §3
        r_t^(j) = r_reasoning + r_query             (search)                             Eq. 3
        r_t^(j) = r_reasoning + r_answer + λ(B − t')/B   (answer, t' = t + 1)            Eq. 4
        A_t^(j) = (r_t^(j) − mean_j r_t) / (std_j r_t + ε)   siblings of this step only   Eq. 5
        continue with j ~ softmax(A_t / η) over the valid siblings (η ≤ 0: argmax)        §2.5
        execute only that sibling's query; force its observation, then the step opening
    no answer after B steps: force the answer opening, decode to </answer>; not trained, not judged

The batch has one row per sibling of every step of every question: the shared prefix (prompt and
chosen path, loss mask 0), then the sibling's action (loss mask 1 on the tokens the policy chose,
`step_id` t, advantage A_t^(j), π_old = the sampler's log-probs). The loss is `WorldRLTrainer`'s PPO clip
(ε = 0.2) + k3 KL (β = 0.001) over every sibling's action tokens (§2.6; `policy_loss.ratio_level`
"token" as verl runs it, or "sequence" as the paper's `aggregate_step_objectives`). Rows are
padded to `data.seq_len`, and the row count up to a multiple of questions × k with empty rows
(loss mask 0, advantage 0), so the jitted update compiles at most B times; every loss
aggregation ignores empty rows (`prm.losses`, `prm.training.update`).

Actions (`rollout.action_choice`):
  "free"         a sibling is whatever the policy writes until `</search>` or `</answer>`, parsed
                 by `prm.envs.protocol.parse_step` like any env step.
  "constrained"  the released code's decoding (§2.3): when the step opening forces `<think>`, the
                 sibling first thinks until `</think>`; then the action tag is chosen between the
                 two continuations "<search>" and "<answer>" (after a "\\n" when it thought) with
                 P ∝ exp(log π(continuation) / temperature), both scored in one cached prefill
                 (`Session.append(score=True)`); the content follows until the tag's closing
                 tag. Tags are never malformed (an empty query or answer is still invalid). The
                 chosen tag tokens are trained with their scored log-probs; forced `</think>` and
                 closing tags (when the budget ran out) are context, as every forced token here
                 (SLATE trains its forced tags). The env executes the action part only, so a tag
                 written inside the reasoning cannot change the chosen action.

Invalid siblings (no complete action block, an empty one, or longer than the room left under
`data.seq_len`) are not judged: they get `rollout.invalid_reward` (reasoning, action), default
(−1, −1), take part in their group's advantage, and are never chosen. When all k are invalid the
episode ends there without an answer (EM 0). Choices of ours where the paper is silent: the
judge's context names the question (not the whole instruction prompt); the step opening
(`data.env.after_observation`, SLATE "<think>") is also forced after the prompt, as SLATE forces
`<think>` at turn 0; the early-answer bonus uses the paper's 1-indexed t (`rollout.bonus_indexing`).

The ablations the paper reports without detail (slate.md §6.3, "complementary benefits"), each
changing one thing and sharing the rest of this module (judging: `judged_rewards`):
  `slate_full_trajectory`  GRPO's sampling, k full trajectories per question, every step judged
                           as a sibling would be; advantages within the question's group
                           (`full_trajectory_advantages`): isolates truncation.
  `slate_mc`               SLATE's sampling with no judge: a sibling's reward is the mean EM of m
                           completions forked from its own cache: isolates the judge.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.advantages import (
    broadcast_step_values_to_tokens,
    grpo_advantages,
    sibling_step_advantages,
)
from prm.envs.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    Action,
    SearchEnv,
    StepResult,
    format_documents,
    parse_step,
    stop_token_sequences,
)
from prm.envs.synthetic_world import Question
from prm.judges import (
    Judgement,
    JudgeRequest,
    PathStep,
    judge_context,
    judgement_arrays,
    make_judge,
    step_rewards,
    think_text,
)
from prm.registry import TRAINERS
from prm.rollouts import EpisodeEnd, Trajectory, TrajectoryBatch, collate
from prm.rollouts.rollout import play_open_rows
from prm.sampling import FinishReason, Generation, Session
from prm.trainers.rl import (
    WorldRLTrainer,
    advantage_variances,
    centred_advantage_variances,
    throughput_metrics,
    token_batch,
)

ACTION_CHOICES = ("free", "constrained")
ACTION_KINDS = ("search", "answer")  # the constrained choice's order
# Keys: fold_in(rng, t) for step t (t = B: the forced answers), then one branch per purpose;
# in constrained mode a sibling's key branches once more per stage.
_SIBLINGS, _SELECT, _COMPLETIONS = 0, 1, 2
_THINK, _TAG, _CONTENT = 0, 1, 2


@dataclasses.dataclass
class Sibling:
    """One candidate action sampled from a shared prefix: its tokens (sampled or forced), the
    sampler's log-probs of the trained ones, and its text and parsed action once finished."""

    tokens: list[int] = dataclasses.field(default_factory=list)
    trained: list[bool] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    action_start: int = 0  # tokens[action_start:] is what the env executes
    text: str = ""  # the whole candidate (the judge reads its reasoning)
    env_text: str = ""
    action: Action = Action("invalid", reason="not sampled")

    def add(self, tokens: Sequence[int], logprobs: Sequence[float] | None = None) -> None:
        """Appends sampled tokens with their log-probs, or forced ones (untrained)."""
        self.tokens.extend(tokens)
        self.trained.extend([logprobs is not None] * len(tokens))
        self.logprobs.extend([0.0] * len(tokens) if logprobs is None else logprobs)

    @property
    def valid(self) -> bool:
        return self.action.kind != "invalid"


@dataclasses.dataclass
class StepGroup:
    """The k siblings of one question at one step, with their rewards and advantages."""

    question: int
    step: int
    context: list[int]  # the shared prefix: prompt and chosen path
    path: list[StepResult]  # the env's results of the chosen steps before this one
    siblings: list[Sibling]
    judgements: list[Judgement | None]  # None for invalid siblings (not judged), or no judge
    rewards: np.ndarray  # float32[k]: Eq. 3/4, or the Monte Carlo value (`SlateMCTrainer`)
    advantages: np.ndarray  # float32[k]
    chosen: int = -1  # the sibling that continues; −1: all invalid, the episode ended
    completions: np.ndarray | None = None  # float32[k, m]: EM of each MC completion (slate_mc)
    completion_tokens: int = 0  # tokens the MC completions sampled


@dataclasses.dataclass
class StepFrontier:
    """Step t of a rollout once its siblings are sampled: what valuing them reads. Per question
    q: whether its episode is still open (`live[q]`), its shared prefix (`contexts[q]`), the env's
    results of its chosen steps (`paths[q]`) and the judge's view of them (`judge_paths[q]`);
    `siblings[q·k + j]` is its sibling j (None unless live), row q·k + j of `session`."""

    t: int
    questions: Sequence[Question]
    live: np.ndarray
    siblings: list[Sibling | None]
    session: Session
    contexts: list[list[int]]
    paths: list[list[StepResult]]
    judge_paths: list[list[PathStep]]


@dataclasses.dataclass
class SlateRollout:
    """Everything one train step sampled: the step groups in order, and per question how its
    episode ended ("answer", "forced_answer", "invalid", "truncated") and its env outcome."""

    groups: list[StepGroup]
    ends: list[str]
    outcomes: list[dict[str, float]]
    sampled_tokens: int
    judge_stats: dict[str, int]  # counter deltas of the judge over this rollout
    seconds: float


@dataclasses.dataclass
class FullRollout:
    """One train step of `SlateFullTrajectoryTrainer`: the k trajectories per question (row
    q·k + j), their judged step rewards, advantages and existence masks [rows, B], every judged
    step in row-then-step order with its judgement (None: invalid, not judged)."""

    trajectories: TrajectoryBatch
    rewards: np.ndarray
    exists: np.ndarray
    advantages: np.ndarray
    steps: list[JudgedStep]
    judgements: list[Judgement | None]
    judge_stats: dict[str, int]
    seconds: float


@dataclasses.dataclass(frozen=True)
class JudgedStep:
    """A step for the judge: its question, the steps before it on its own trajectory (the judge's
    context, §3.4), its whole text (the judge reads the reasoning) and parsed action, and its
    0-based index."""

    question: Question
    path: Sequence[PathStep]
    text: str
    action: Action
    index: int


def sample_softmax(
    scores: np.ndarray, valid: np.ndarray, temperature: float, keys: jax.Array
) -> np.ndarray:
    """Per row, an index drawn from softmax(scores / temperature) over the valid entries (the
    argmax, first on ties, when temperature ≤ 0); −1 for rows without a valid entry.

    SLATE's sibling choice (softmax(A/η), §2.5) and its constrained tag choice (§2.3).
    scores, valid: [N, m]; keys: N PRNG keys (one per row, so a row's draw is its own).
    """
    scores, valid = np.asarray(scores, np.float32), np.asarray(valid, bool)
    masked = np.where(valid, scores, -np.inf)
    if temperature <= 0:
        choice = np.argmax(masked, axis=-1)
    else:
        logits = np.where(valid.any(-1, keepdims=True), masked / temperature, 0.0)
        choice = np.asarray(jax.vmap(jax.random.categorical)(keys, jnp.asarray(logits)))
    return np.where(valid.any(-1), choice, -1)


def row_keys(key: jax.Array, num_rows: int, k: int = 1) -> jax.Array:
    """Keys of rows q·k + j: fold_in(fold_in(key, q), j), so a question's draws do not depend on
    the batch it is in."""
    fold = lambda q, j: jax.random.fold_in(jax.random.fold_in(key, q), j)
    return jax.vmap(fold)(jnp.repeat(jnp.arange(num_rows), k), jnp.tile(jnp.arange(k), num_rows))


def _stage_keys(keys: jax.Array, stage: int) -> jax.Array:
    return jax.vmap(jax.random.fold_in, (0, None))(keys, stage)


@TRAINERS.register("slate")
class SlateTrainer(WorldRLTrainer):
    """Config (see `configs/slate.py`): `rollout.k`, `budget` (B), `eta` (η), `action_choice`,
    `invalid_reward`, `early_answer_bonus` (λ), `bonus_indexing`, `forced_answer`, `temperature`,
    `max_step_tokens`; the `judge` block (`prm.judges.make_judge`; the reference judge reads its
    world from `data`). The budget is also the env's `max_turns` in training episodes."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        r = config.rollout
        if r.k < 2 or r.budget < 1:
            raise ValueError(f"SLATE needs rollout.k >= 2 siblings and budget >= 1, got {r}.")
        if r.action_choice not in ACTION_CHOICES:
            raise ValueError(
                f"Unknown rollout.action_choice {r.action_choice!r}; use {ACTION_CHOICES}."
            )
        self.k, self.budget, self.eta = r.k, r.budget, r.eta
        self.constrained = r.action_choice == "constrained"
        self.invalid_reward = tuple(r.invalid_reward)
        self.env_config = dataclasses.replace(
            self.env_config, max_turns=r.budget, forced_answer=r.forced_answer or None
        )
        tokenizer = self.assets.tokenizer
        self.encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
        self.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
        # Forced before every step: after the prompt, and by the env after each observation.
        self.opening = self.encode(self.env_config.after_observation)
        self.thinks = self.constrained and self.env_config.after_observation.endswith(THINK_OPEN)
        self.stops = stop_token_sequences(tokenizer)
        separator = "\n" if self.thinks else ""
        self.tags = [self.encode(separator + tag) for tag in (SEARCH_OPEN, ANSWER_OPEN)]
        self.closes = [self.encode(tag) for tag in (SEARCH_CLOSE, ANSWER_CLOSE)]
        self.think_close = self.encode(THINK_CLOSE)
        self.judge = self.make_judge(config)

    def make_judge(self, config: Any) -> Any:
        return make_judge(config.judge, **self._judge_resources(config))

    def _judge_counts(self) -> dict[str, int]:
        return self.judge.stats.snapshot() if self.judge is not None else {}

    def _judge_resources(self, config: Any) -> dict[str, Any]:
        """What the reference judge needs from `data` (its world), unless the block sets it."""
        if config.judge.name != "reference":
            return {}
        data = config.data
        shared = {"world": data.world.to_dict(), "cache_dir": data.cache_dir,
                  "vocab_size": data.vocab_size, "topk": self.env_config.topk}  # fmt: skip
        return {name: value for name, value in shared.items() if name not in config.judge}

    # --- One train step ---------------------------------------------------------------------

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        del step
        questions = next(self.data)
        played = self.play(models, questions, rng)
        batch, step_id = self.batch(played, len(questions))
        return batch, self.metrics(played, batch, step_id)

    def play(
        self, models: Mapping[str, nnx.Module], questions: Sequence[Question], rng: jax.Array
    ) -> SlateRollout:
        """Grows one trajectory per question (module docstring), all questions batched."""
        started = time.perf_counter()
        judged_before = self._judge_counts()
        n, k, seq_len = len(questions), self.k, self.config.data.seq_len
        env = self.make_env()
        contexts = [self.encode(p) + self.opening for p in env.reset(self.tasks(questions))]
        longest = max(map(len, contexts))
        if longest >= seq_len:
            raise ValueError(
                f"A prompt has {longest} tokens, leaving no room under data.seq_len={seq_len}."
            )
        # Room for the longest context plus a whole step, so the cache never grows (recompiles).
        step_tokens = (2 if self.constrained else 1) * self.rollout_config.max_step_tokens + 8
        session = self.sampler(models).start(contexts, reserve=seq_len + step_tokens - longest)
        paths: list[list[StepResult]] = [[] for _ in range(n)]
        judge_paths: list[list[PathStep]] = [[] for _ in range(n)]
        ends: list[str | None] = [None] * n
        groups: list[StepGroup] = []
        sampled = 0
        for t in range(self.budget):
            live = np.array([end is None for end in ends])
            if not live.any():
                break
            step_key = jax.random.fold_in(rng, t)
            rooms = np.array([seq_len - len(c) for c in contexts])
            sibling_keys = row_keys(jax.random.fold_in(step_key, _SIBLINGS), n, k)
            siblings_session, siblings = self.sample_siblings(session, live, sibling_keys, rooms)
            sampled += sum(len(s.tokens) for s in siblings if s is not None)
            frontier = StepFrontier(
                t, questions, live, siblings, siblings_session, contexts, paths, judge_paths
            )
            step_groups = self.score_siblings(frontier, jax.random.fold_in(step_key, _COMPLETIONS))
            sampled += sum(g.completion_tokens for g in step_groups)
            groups += step_groups
            advantages = np.stack([g.advantages for g in step_groups])
            valid = np.array([[s.valid for s in g.siblings] for g in step_groups])
            select_keys = row_keys(jax.random.fold_in(step_key, _SELECT), n)[
                np.array([g.question for g in step_groups])
            ]
            texts: list[str | None] = [None] * n
            rows = [q * k for q in range(n)]  # the chosen sibling's row (any row if none)
            for group, choice in zip(
                step_groups, sample_softmax(advantages, valid, self.eta, select_keys)
            ):
                group.chosen = int(choice)
                if choice < 0:
                    ends[group.question] = "invalid"
                else:
                    texts[group.question] = group.siblings[choice].env_text
                    rows[group.question] += int(choice)
            results = env.step(texts)
            session = siblings_session.select(rows)
            forced: list[list[int]] = [[] for _ in range(n)]
            for q, result in enumerate(results):
                if result is None:
                    continue
                contexts[q] = contexts[q] + siblings[rows[q]].tokens
                paths[q].append(result)
                judge_paths[q].append(path_step(siblings[rows[q]].text, result))
                if result.done:
                    ends[q] = "answer"
                    continue
                observation = self.encode(result.observation)
                if len(contexts[q]) + len(observation) >= seq_len:
                    ends[q] = "truncated"
                else:
                    contexts[q] = contexts[q] + observation
                    forced[q] = observation
            if any(forced):
                session.append(forced)
        sampled += self.forced_answers(session, env, ends, jax.random.fold_in(rng, self.budget))
        judged_after = self._judge_counts()
        return SlateRollout(
            groups=groups,
            ends=[end or "forced_answer" for end in ends],
            outcomes=env.outcomes(),
            sampled_tokens=sampled,
            judge_stats={name: judged_after[name] - judged_before[name] for name in judged_after},
            seconds=time.perf_counter() - started,
        )

    def forced_answers(
        self, session: Session, env: Any, ends: list[str | None], key: jax.Array
    ) -> int:
        """Episodes still open after B steps (their observation ended with the forced answer
        opening) decode until `</answer>` and the env scores them (§2.1). These tokens are not
        trained and not judged. Returns the number of tokens sampled."""
        open_rows = np.array([end is None for end in ends])
        if not open_rows.any():
            return 0
        generation = session.generate(
            self.rollout_config.max_step_tokens,
            key=row_keys(key, len(ends)),
            sampling=self.rollout_config.sampling,
            stops=self.stops,
            active=open_rows,
        )
        texts = [self.decode(ids) if is_open else None
                 for ids, is_open in zip(generation.token_lists(), open_rows)]  # fmt: skip
        env.step(texts)
        return int(np.asarray(generation.num_tokens)[open_rows].sum())

    # --- Siblings ---------------------------------------------------------------------------

    def sample_siblings(
        self, session: Session, active: np.ndarray, keys: jax.Array, rooms: np.ndarray
    ) -> tuple[Session, list[Sibling | None]]:
        """k siblings of each active row of `session`, from one fork of its cache.

        Returns the siblings' session (row i·k + j is sibling j of row i) and the siblings in
        that order (None for inactive rows). `keys` holds one key per sibling row (`row_keys`);
        `rooms[i]` is how many tokens row i's siblings may take (longer ones are invalid).
        """
        k = self.k
        siblings_session = session.fork(k)
        rows = np.repeat(np.asarray(active, bool), k)
        siblings = [Sibling() if row else None for row in rows]
        if self.constrained:
            siblings_session = self._constrained(siblings_session, siblings, rows, keys)
        else:
            generation = siblings_session.generate(
                self.rollout_config.max_step_tokens,
                key=keys,
                sampling=self.rollout_config.sampling,
                stops=self.stops,
                active=rows,
            )
            _add_generation(siblings, generation)
        for i, sibling in enumerate(siblings):
            if sibling is not None:
                self._finish(sibling, int(rooms[i // k]))
        return siblings_session, siblings

    def _constrained(
        self, session: Session, siblings: list[Sibling | None], rows: np.ndarray, keys: jax.Array
    ) -> Session:
        """Think (when the opening forced `<think>`), choose the tag, write the content (§2.3)."""
        sampling, budget = self.rollout_config.sampling, self.rollout_config.max_step_tokens
        if self.thinks:
            generation = session.generate(
                budget, key=_stage_keys(keys, _THINK), sampling=sampling,
                stops=[self.think_close], active=rows,
            )  # fmt: skip
            _add_generation(siblings, generation)
            self._force_unfinished(session, siblings, generation, lambda i: self.think_close)
        # Both tag continuations of every row, scored in one prefill of a 2-way fork.
        pairs = session.fork(2)
        scored = pairs.append(
            [self.tags[kind] if row else [] for row in rows for kind in range(2)], score=True
        )
        scores = np.array([[float(np.sum(scored[2 * i + kind])) for kind in range(2)]
                           for i in range(len(rows))])  # fmt: skip
        valid = np.repeat(rows[:, None], 2, axis=1)
        kinds = sample_softmax(scores, valid, sampling.temperature, _stage_keys(keys, _TAG))
        kinds = np.maximum(kinds, 0)
        session = pairs.select([2 * i + kind for i, kind in enumerate(kinds)])
        for i, sibling in enumerate(siblings):
            if sibling is not None:
                sibling.action_start = len(sibling.tokens)
                sibling.add(self.tags[kinds[i]], scored[2 * i + kinds[i]].tolist())
        generation = session.generate(
            budget, key=_stage_keys(keys, _CONTENT), sampling=sampling,
            row_stops=[[self.closes[kind]] for kind in kinds], active=rows,
        )  # fmt: skip
        _add_generation(siblings, generation)
        self._force_unfinished(session, siblings, generation, lambda i: self.closes[kinds[i]])
        return session

    @staticmethod
    def _force_unfinished(
        session: Session,
        siblings: list[Sibling | None],
        generation: Generation,
        closing: Callable[[int], list[int]],
    ) -> None:
        """Forces `closing(i)` into every sibling row i that did not end on its stop."""
        finish = np.asarray(generation.finish_reason)
        forced = [closing(i) if s is not None and finish[i] != FinishReason.STOP else []
                  for i, s in enumerate(siblings)]  # fmt: skip
        for sibling, tokens in zip(siblings, forced):
            if tokens:
                sibling.add(tokens)
        if any(forced):
            session.append(forced)

    def _finish(self, sibling: Sibling, room: int) -> None:
        """Text and action of a sampled sibling; one longer than `room` is cut and invalid."""
        if len(sibling.tokens) > room:
            del sibling.tokens[room:], sibling.trained[room:], sibling.logprobs[room:]
            sibling.text = self.decode(sibling.tokens)
            sibling.action = Action("invalid", reason="longer than the room under data.seq_len")
            return
        sibling.text = self.decode(sibling.tokens)
        sibling.env_text = self.decode(sibling.tokens[sibling.action_start :])
        sibling.action = parse_step(sibling.env_text)

    # --- Judging ----------------------------------------------------------------------------

    def score_siblings(self, frontier: StepFrontier, key: jax.Array) -> list[StepGroup]:
        """Step t's groups with rewards and advantages: here the judge's (`judge_step`);
        `SlateMCTrainer` values the siblings by completions from `frontier.session` instead."""
        del key
        return self.judge_step(frontier)

    def judge_step(self, frontier: StepFrontier) -> list[StepGroup]:
        """Judges step t's valid siblings of every live question in one call; rewards (Eq. 3/4,
        `judged_rewards`) and advantages among each question's k siblings (Eq. 5)."""
        k, f = self.k, frontier
        live_questions = np.flatnonzero(f.live)
        steps = [JudgedStep(f.questions[q], f.judge_paths[q], s.text, s.action, f.t)
                 for q in live_questions for s in f.siblings[q * k : (q + 1) * k]]  # fmt: skip
        judged, judgements = self.judged_rewards(steps)
        rewards = np.zeros((len(f.questions), k), np.float32)
        rewards[live_questions] = judged.reshape(-1, k)
        by_question = [judgements[i * k : (i + 1) * k] for i in range(len(live_questions))]
        return self.step_groups(f, rewards, by_question)

    def judged_rewards(
        self, steps: Sequence[JudgedStep]
    ) -> tuple[np.ndarray, list[Judgement | None]]:
        """The judge's step rewards (Eq. 3/4, `prm.judges.step_rewards`) of `steps`, judged in
        one call, float32[len(steps)], and their judgements. A step without a valid action is not
        judged (judgement None): it gets `rollout.invalid_reward` (reasoning, action)."""
        requests, where = [], []
        for i, step in enumerate(steps):
            if step.action.kind == "invalid":
                continue
            requests.append(JudgeRequest(
                context=judge_context(step.question.text, step.path),
                think=think_text(step.text), kind=step.action.kind, content=step.action.content,
                step_index=step.index, budget=self.budget,
                golden_answers=tuple(step.question.answers), question_id=step.question.id,
                previous_queries=tuple(p.query for p in step.path if p.query is not None),
            ))  # fmt: skip
            where.append(i)
        judgements = self.judge.judge(requests) if requests else []
        reasoning = np.full(len(steps), self.invalid_reward[0], np.int32)
        action = np.full(len(steps), self.invalid_reward[1], np.int32)
        is_answer = np.zeros(len(steps), bool)
        if judgements:
            scores = judgement_arrays(judgements)
            reasoning[where], action[where] = scores["reasoning"], scores["action"]
            is_answer[where] = scores["is_answer"]
        rewards = step_rewards(
            reasoning, action, is_answer, np.array([s.index for s in steps], np.int32),
            budget=self.budget, bonus=self.config.rollout.early_answer_bonus,
            indexing=self.config.rollout.bonus_indexing,
        )  # fmt: skip
        out: list[Judgement | None] = [None] * len(steps)
        for i, judgement in zip(where, judgements):
            out[i] = judgement
        return rewards, out

    def step_groups(
        self,
        frontier: StepFrontier,
        rewards: np.ndarray,
        judgements: Sequence[Sequence[Judgement | None]],
        **extra: Any,
    ) -> list[StepGroup]:
        """The groups of the live questions at step t: `rewards` [questions, k] (rows of other
        questions are ignored) and their advantages among each question's siblings (Eq. 5);
        `judgements` and each `extra` field hold one entry per live question."""
        k, f = self.k, frontier
        exists = np.repeat(np.asarray(f.live, bool)[:, None], k, axis=1)
        advantages = np.asarray(sibling_step_advantages(rewards, exists))
        live_questions = np.flatnonzero(f.live)
        return [
            StepGroup(
                question=int(q),
                step=f.t,
                context=list(f.contexts[q]),
                path=list(f.paths[q]),
                siblings=f.siblings[q * k : (q + 1) * k],
                judgements=list(judgements[i]),
                rewards=rewards[q],
                advantages=advantages[q],
                **{name: values[i] for name, values in extra.items()},
            )
            for i, q in enumerate(live_questions)
        ]

    # --- The training batch -----------------------------------------------------------------

    def batch(
        self, played: SlateRollout, num_questions: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(the update's arrays, step_id): one row per sibling, padded to a multiple of
        questions × k rows of `data.seq_len` tokens (module docstring)."""
        rows, advantages = [], []
        for g, group in enumerate(played.groups):
            for sibling, reward, advantage in zip(group.siblings, group.rewards, group.advantages):
                own = StepResult(sibling.text, sibling.action, "", sibling.action.kind == "answer",
                                 float(reward))  # fmt: skip
                row = Trajectory(
                    group_id=g, steps=[*group.path, own], outcome={"reward": float(reward)}
                )
                row.add(group.context)
                start = 0
                for trained, run in itertools.groupby(sibling.trained):
                    end = start + len(list(run))
                    tokens = sibling.tokens[start:end]
                    if trained:
                        row.add(tokens, group.step, sibling.logprobs[start:end])
                    else:
                        row.add(tokens)
                    start = end
                rows.append(row)
                advantages.append(advantage)
        trajectories = collate(rows, self.config.data.seq_len, self.assets.tokenizer.pad_token_id)
        token_advantages = np.asarray(advantages, np.float32)[:, None] * trajectories.loss_mask
        # A multiple of questions × k rows: at most B shapes to compile, and far fewer empty rows
        # than padding every batch to questions × B × k (most questions answer before B).
        unit = num_questions * self.k
        total = min(-(-len(rows) // unit), self.budget) * unit
        batch = _pad_rows(token_batch(trajectories, token_advantages), total)
        step_id = _pad_rows({"step_id": trajectories.step_id}, total, fill=-1)["step_id"]
        return batch, step_id

    # --- Metrics ----------------------------------------------------------------------------

    def metrics(
        self, played: SlateRollout, batch: Mapping[str, np.ndarray], step_id: np.ndarray
    ) -> dict[str, float]:
        """Host metrics of one train step (see `configs/slate.py` for what they should show)."""
        groups, num_questions = played.groups, len(played.ends)
        siblings = [s for g in groups for s in g.siblings]
        judgements = [j for g in groups for j in g.judgements if j is not None]
        advantages = np.concatenate([g.advantages for g in groups])
        chosen = [g for g in groups if g.chosen >= 0]
        judged_invalid = judgement_arrays(judgements)["invalid"] if judgements else np.zeros(1)
        metrics = {
            "reward": float(np.mean(np.concatenate([g.rewards for g in groups]))),
            "exact_match": float(np.mean([o["em"] for o in played.outcomes])),
            "f1": float(np.mean([o["f1"] for o in played.outcomes])),
            "steps_per_question": len(groups) / num_questions,
            "invalid_sibling_fraction": float(np.mean([not s.valid for s in siblings])),
            "sibling_advantage_variance": float(np.var(advantages)),
            # Groups whose k rewards tie: no signal (and no gradient but the KL's).
            "tied_group_fraction": float(np.mean([not g.advantages.any() for g in groups])),
            "rows": float(len(siblings)),
            "judge/candidates": float(len(judgements)),
            "judge/invalid_fraction": float(np.mean(judged_invalid)),
            **throughput_metrics(float(played.sampled_tokens), played.seconds),
            **{
                f"end/{end}": played.ends.count(end) / num_questions
                for end in ("answer", "forced_answer", "invalid", "truncated")
            },
            **{f"judge_stats/{name}": float(count) for name, count in played.judge_stats.items()},
            **advantage_variances(batch["advantages"], step_id),
            **centred_advantage_variances([g.rewards for g in groups], [g.step for g in groups]),
        }
        if chosen:
            # 1 + the number of siblings with a strictly higher reward than the chosen one.
            ranks = [1 + np.sum(g.rewards > g.rewards[g.chosen]) for g in chosen]
            metrics["chosen_rank"] = float(np.mean(ranks))
        for dimension in ("reasoning", "query", "answer"):
            scores = [j.scores[dimension] for j in judgements if dimension in j.scores]
            if scores:
                metrics[f"judge/{dimension}"] = float(np.mean(scores))
        return metrics


# --- Ablation: full-trajectory sampling, the same judged step rewards ---------------------------

FULL_ADVANTAGES = ("return", "reward_to_go", "step")


def full_trajectory_advantages(
    step_rewards: np.ndarray, mask: np.ndarray, kind: str = "return"
) -> np.ndarray:
    """Advantages of each step of k full trajectories per question from their step rewards r_t^(j)
    (Eq. 3/4), normalised within the question's group only (Eq. 5's estimator: unbiased std,
    ε = 1e-6, `grpo_advantages`):

        "return"        A_t^(j) = norm_j(R^(j)),     R^(j) = Σ_t r_t^(j)          (every step t)
        "reward_to_go"  A_t^(j) = norm_j(G_t^(j)),   G_t^(j) = Σ_{t' ≥ t} r_t'^(j)
        "step"          A_t^(j) = norm_j(r_t^(j))

    norm_j(x_j) = (x_j − mean x) / (std x + ε) over the trajectories of the group: all k for the
    return, those that reached step t for the other two. "return" is the full-trajectory
    estimator of SLATE's variance theorem (Â_full, slate.md §4.2, GRPO on the dense return) and
    "reward_to_go" its reward-to-go form (§4.3 reports both); "step" compares step t's rewards
    although the trajectories' prefixes differ.

    step_rewards, mask: [questions, k, S]; mask marks the steps that exist. Returns float32
    [questions, k, S], 0 where mask is False.
    """
    if kind not in FULL_ADVANTAGES:
        raise ValueError(f"Unknown full-trajectory advantage {kind!r}; use {FULL_ADVANTAGES}.")
    mask = np.asarray(mask, bool)
    rewards = np.where(mask, np.asarray(step_rewards, np.float32), 0.0)
    if kind == "return":
        normalised = np.asarray(grpo_advantages(rewards.sum(-1)))[..., None]
    else:
        values = rewards if kind == "step" else np.cumsum(rewards[..., ::-1], -1)[..., ::-1]
        by_step = grpo_advantages(np.swapaxes(values, 1, 2), np.swapaxes(mask, 1, 2))
        normalised = np.swapaxes(np.asarray(by_step), 1, 2)
    return np.where(mask, normalised, 0.0).astype(np.float32)


@TRAINERS.register("slate_full_trajectory")
class SlateFullTrajectoryTrainer(SlateTrainer):
    """SLATE's judge and step rewards on GRPO's sampling: the ablation that isolates truncation.

    Per question, k full trajectories (`prm.rollouts.rollout`, group_size = k, free actions);
    every step t < B of each is judged as SLATE judges a sibling (`judged_rewards`: the judge's
    context is the trajectory's own earlier steps; Eq. 3/4; invalid steps get
    `rollout.invalid_reward`); `full_trajectory_advantages(rollout.full_advantage)` turns them
    into advantages within the question's k trajectories; each step's tokens carry its advantage.
    The forced answer after B steps is neither judged nor trained, as in SLATE. Config: SLATE's
    `rollout` block (`eta` and `action_choice` are unused) plus `full_advantage`.
    """

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        if self.constrained:
            raise ValueError(
                "slate_full_trajectory samples free actions (prm.rollouts.rollout); set "
                "rollout.action_choice='free'."
            )
        self.advantage_kind = config.rollout.full_advantage
        full_trajectory_advantages(np.zeros((1, 2, 1)), np.ones((1, 2, 1)), self.advantage_kind)

    def make_env(self) -> SearchEnv:
        """SLATE's env, whose prompts also end with the step opening (SLATE forces it there)."""
        env = super().make_env()
        if self.env_config.after_observation:
            reset, opening = env.reset, self.env_config.after_observation
            env.reset = lambda tasks: [prompt + opening for prompt in reset(tasks)]
        return env

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        del step
        played = self.play(models, next(self.data), rng)
        batch, step_id = self.batch(played)
        return batch, self.metrics(played, batch, step_id)

    def play(
        self, models: Mapping[str, nnx.Module], questions: Sequence[Question], rng: jax.Array
    ) -> FullRollout:
        """k full trajectories per question, every step t < B judged (class docstring)."""
        n, k, budget = len(questions), self.k, self.budget
        started = time.perf_counter()
        judged_before = self._judge_counts()
        trajectories = self.play_trajectories(models, questions, k, rng)
        steps, where = [], []
        for row, results in enumerate(trajectories.steps):
            path: list[PathStep] = []
            for t, result in enumerate(results[:budget]):
                steps.append(JudgedStep(questions[row // k], list(path), result.step_text,
                                        result.action, t))  # fmt: skip
                where.append((row, t))
                path.append(path_step(result.step_text, result))
        judged, judgements = self.judged_rewards(steps)
        rewards = np.zeros((n * k, budget), np.float32)
        exists = np.zeros((n * k, budget), bool)
        rows, columns = np.array(where).T
        rewards[rows, columns], exists[rows, columns] = judged, True
        judged_after = self._judge_counts()
        return FullRollout(
            trajectories=trajectories,
            rewards=rewards,
            exists=exists,
            advantages=full_trajectory_advantages(
                rewards.reshape(n, k, budget), exists.reshape(n, k, budget), self.advantage_kind
            ).reshape(n * k, budget),
            steps=steps,
            judgements=judgements,
            judge_stats={name: judged_after[name] - judged_before[name] for name in judged_after},
            seconds=time.perf_counter() - started,
        )

    def batch(self, played: FullRollout) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(the update's arrays, step_id): one row per trajectory, each step's tokens with its
        advantage; the forced answer (step B) is context, neither judged nor trained."""
        trajectories = played.trajectories
        step_id = np.where(trajectories.step_id < self.budget, trajectories.step_id, -1)
        trained = dataclasses.replace(
            trajectories, step_id=step_id, loss_mask=(step_id >= 0).astype(np.float32)
        )
        token_advantages = np.asarray(broadcast_step_values_to_tokens(played.advantages, step_id))
        return token_batch(trained, token_advantages), step_id

    def metrics(
        self, played: FullRollout, batch: Mapping[str, np.ndarray], step_id: np.ndarray
    ) -> dict[str, float]:
        """Host metrics of one train step, named as SLATE's where they mean the same."""
        k, budget = self.k, self.budget
        trajectories, judgements = played.trajectories, played.judgements
        valid = np.array([s.action.kind != "invalid" for s in played.steps])
        # (question, step) groups some trajectory reached, and those whose advantages all tie.
        reached = played.exists.reshape(-1, k, budget).any(1)
        moved = played.advantages.reshape(-1, k, budget).any(1)
        metrics = {
            "reward": float(played.rewards[played.exists].mean()),
            "exact_match": float(trajectories.em.mean()),
            "f1": float(trajectories.f1.mean()),
            "steps_per_question": float(played.exists.sum(1).mean()),
            "invalid_step_fraction": float(np.mean(~valid)),
            "tied_group_fraction": float(np.sum(reached & ~moved) / np.sum(reached)),
            "judge/candidates": float(valid.sum()),
            # The forced answers' tokens count too.
            **throughput_metrics(float(trajectories.loss_mask.sum()), played.seconds),
            **{f"judge_stats/{name}": float(count) for name, count in played.judge_stats.items()},
            **advantage_variances(batch["advantages"], step_id),
        }
        for dimension in ("reasoning", "query", "answer"):
            scores = [j.scores[dimension] for j in judgements if j and dimension in j.scores]
            if scores:
                metrics[f"judge/{dimension}"] = float(np.mean(scores))
        return metrics


# --- Ablation: truncated sampling, siblings valued by Monte Carlo completions -------------------


@TRAINERS.register("slate_mc")
class SlateMCTrainer(SlateTrainer):
    """SLATE's truncated sampling without a judge: the ablation that isolates the judge.

    As `SlateTrainer`, except how the k siblings of a step are valued: each valid sibling's
    action is executed and m = `rollout.completions` continuations are played to the outcome
    from the sibling's own KV cache (its session row repeated m times: no re-prefill), with the
    episode's remaining budget and forced answer; the sibling's value is the mean EM of its m
    outcomes (an answer sibling: its own EM, the same for every completion). A sibling without
    a valid action is not completed: value 0, the EM of an episode without an answer (SLATE
    never continues from it either). The values replace the judged rewards in Eq. 5 and in the
    choice softmax(A/η); only the siblings' actions are trained, not the completions. No judge.
    """

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        self.completions = config.rollout.completions
        if self.completions < 1:
            raise ValueError(f"slate_mc needs rollout.completions >= 1, got {self.completions}.")

    def make_judge(self, config: Any) -> None:
        del config
        return None

    def score_siblings(self, frontier: StepFrontier, key: jax.Array) -> list[StepGroup]:
        n, k, m = len(frontier.questions), self.k, self.completions
        outcomes, tokens = self.complete(frontier, key)
        live_questions = np.flatnonzero(frontier.live)
        return self.step_groups(
            frontier, outcomes.mean(-1).reshape(n, k), [[None] * k] * len(live_questions),
            completions=outcomes.reshape(n, k, m)[live_questions],
            completion_tokens=tokens.reshape(n, k).sum(1)[live_questions].tolist(),
        )  # fmt: skip

    def complete(self, frontier: StepFrontier, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """m completions of every valid sibling (row r = q·k + j of `frontier.session`) to the
        end of its episode: (their EM, float32[n·k, m], 0 for the other rows; tokens sampled per
        row, [n·k]).

        Completion i of row r is row r·m + i of one m-way fork of the session and episode r·m + i
        of a fresh env, which replays the question's t chosen steps (retrieval is deterministic,
        so it reaches the state the siblings saw) and executes the sibling's action. Rows without
        a valid sibling stay idle, so every step forks the same shape (no recompilation)."""
        k, m, seq_len = self.k, self.completions, self.config.data.seq_len
        siblings, contexts, paths = frontier.siblings, frontier.contexts, frontier.paths
        valid = np.repeat([s is not None and s.valid for s in siblings], m)
        sibling_of = np.repeat(np.arange(len(siblings)), m)  # of each completion row
        env = self.make_env()
        env.reset(self.tasks([frontier.questions[r // k] for r in sibling_of]))
        for step in range(frontier.t):
            env.step([paths[r // k][step].step_text if ok else None
                      for r, ok in zip(sibling_of, valid)])  # fmt: skip
        results = env.step(
            [siblings[r].env_text if ok else None for r, ok in zip(sibling_of, valid)]
        )
        episodes, forced = [], []
        for i, (r, result) in enumerate(zip(sibling_of, results)):
            episode = Trajectory(group_id=i, end=EpisodeEnd.NO_ANSWER)  # idle unless valid
            observation = []
            if result is not None:
                episode.steps.append(result)
                episode.add(contexts[r // k] + siblings[r].tokens)
                if not result.done:
                    observation = self.encode(result.observation)
                    if len(episode.tokens) + len(observation) >= seq_len:
                        episode.end, observation = EpisodeEnd.TRUNCATED, []
                    else:
                        episode.end = EpisodeEnd.OPEN
                elif result.action.kind == "answer":
                    episode.end = EpisodeEnd.ANSWER
            episode.add(observation)
            episodes.append(episode)
            forced.append(observation)
        completions = frontier.session.fork(m)
        if any(forced):
            completions.append(forced)
        play_open_rows(
            completions, env, self.assets.tokenizer, episodes, self.rollout_config, key,
            position_limit=completions.sampler.config.max_position_embeddings,
        )  # fmt: skip
        em = np.array([o["em"] for o in env.outcomes()], np.float32).reshape(-1, m)
        sampled = np.array([sum(s >= 0 for s in e.step_id) for e in episodes]).reshape(-1, m)
        return em, sampled.sum(-1)


def _add_generation(siblings: list[Sibling | None], generation: Generation) -> None:
    """Appends each sibling row's sampled tokens with their log-probs."""
    logprobs = np.asarray(generation.logprobs)
    for i, tokens in enumerate(generation.token_lists()):
        if siblings[i] is not None:
            siblings[i].add(tokens, logprobs[i, : len(tokens)].tolist())


def path_step(text: str, result: StepResult) -> PathStep:
    """The judge's record of a step taken (§3.4): the reasoning of its whole `text`, and for a
    search its query and the retrieved documents."""
    passages = result.info.get("passages")
    return PathStep(
        think=think_text(text),
        query=result.info.get("query"),
        retrieved=None if passages is None else format_documents(passages),
    )


def _pad_rows(arrays: Mapping[str, np.ndarray], rows: int, fill: int = 0) -> dict[str, np.ndarray]:
    """Each array with `fill` rows appended up to `rows` (empty rows: loss mask 0)."""
    out = {}
    for name, array in arrays.items():
        if len(array) > rows:
            raise ValueError(f"{len(array)} rows of {name!r} exceed the padded count {rows}.")
        pad = np.full((rows - len(array), *array.shape[1:]), fill, array.dtype)
        out[name] = np.concatenate([array, pad])
    return out
