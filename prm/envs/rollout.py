"""Batched multi-turn episodes: a sampler session, a text environment and a retriever.

    env = SearchEnv(retriever, EnvConfig(max_turns=4, forced_answer="<answer>"), tokenizer)
    batch = rollout(Sampler(model), env, tokenizer, questions, golden_answers,
                    RolloutConfig(max_length=256), key=key)

One prefill per episode, then per turn (Search-R1 `run_llm_loop`, search_r1_stepsearch.md §1.3;
SLATE §2.1): every unfinished row decodes until a step stop sequence (`</search>`, `</answer>`),
an end-of-sequence token or the step budget; the env parses the steps, sends every query of the
batch to the retriever in one call, and returns the observations (`<information>…</information>`,
invalid-action feedback, and before the final call the env's `forced_answer`), which are forced
into those rows *on top of their KV cache* followed by `RolloutConfig.after_observation` (SLATE's
`<think>`). After `max_turns` search-enabled calls the env makes one final, answer-only call.

The result is a `TrajectoryBatch` (DESIGN.md): per-token `tokens`, `loss_mask` (1 exactly on
sampled tokens; prompt, observations and forced text 0, Search-R1 eq. 2-3), `step_id` (the
turn that sampled the token, −1 elsewhere), the sampler's `logprobs` (π_old at temperature 1),
per-episode `finish_reason`, EM/F1 and the env's `Episode` records (texts, actions, queries,
answer).

Tokens are the sampled ids themselves, never a re-tokenisation of the decoded text (Search-R1
re-tokenises), so the trajectory is exactly what the policy conditioned on and `logprobs` are
the sampler's own. Forced text (`after_observation`, the env's forced answer) is context with
`loss_mask` 0: the policy did not choose it (SLATE counts its forced tags as trainable). A row that would grow past `max_length`
(a step that does not fit, or an observation that does not fit) ends there with
`EpisodeEnd.TRUNCATED` and EM 0.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import jax
import numpy as np

from prm.envs.protocol import Episode, SearchEnv, TextTokenizer, stop_token_sequences
from prm.sampling import GREEDY, FinishReason, Sampler, SamplingParams


class EpisodeEnd(enum.IntEnum):
    """Why an episode ended (`TrajectoryBatch.finish_reason`)."""

    ANSWER = 0  # it gave an answer (scored by EM/F1)
    NO_ANSWER = 1  # the final, answer-only call produced no answer (reward 0)
    TRUNCATED = 2  # the context reached `max_length` before an answer (reward 0)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    max_step_tokens: int = 64  # decode budget of one policy step
    max_length: int = 256  # context cap: prompt + steps + observations
    sampling: SamplingParams = GREEDY
    # Forced after every observation except the env's forced answer (SLATE: "<think>").
    after_observation: str = ""

    def __post_init__(self):
        if self.max_step_tokens < 1 or self.max_length < 2:
            raise ValueError(f"Need max_step_tokens >= 1 and max_length >= 2, got {self}.")


DEFAULT_ROLLOUT = RolloutConfig()


@dataclasses.dataclass(frozen=True)
class TrajectoryBatch:
    """Episodes as right-padded `[B, T]` arrays, `T = RolloutConfig.max_length`."""

    tokens: np.ndarray  # int32[B, T], pad id after the episode
    input_mask: np.ndarray  # bool[B, T]: a real token
    loss_mask: np.ndarray  # float32[B, T]: 1 on tokens the policy sampled
    step_id: np.ndarray  # int32[B, T]: turn that sampled the token, −1 otherwise
    logprobs: np.ndarray  # float32[B, T]: sampler log π(token), 0 where loss_mask is 0
    finish_reason: np.ndarray  # int32[B]: an `EpisodeEnd`
    num_turns: np.ndarray  # int32[B]: policy steps taken
    em: np.ndarray  # float32[B]
    f1: np.ndarray  # float32[B]
    episodes: list[Episode]  # the env's record: segments, actions, queries, answer

    @property
    def answers(self) -> list[str | None]:
        return [e.answer for e in self.episodes]


@dataclasses.dataclass
class _Row:
    tokens: list[int]
    step_id: list[int]
    logprobs: list[float]
    end: EpisodeEnd | None = None

    def add(self, tokens: Sequence[int], step: int, logprobs: Sequence[float] | None = None):
        self.tokens.extend(tokens)
        self.step_id.extend([step] * len(tokens))
        self.logprobs.extend([0.0] * len(tokens) if logprobs is None else logprobs)


def rollout(
    sampler: Sampler,
    env: SearchEnv,
    tokenizer: TextTokenizer,
    questions: Sequence[str],
    golden_answers: Sequence[Sequence[str]],
    config: RolloutConfig = DEFAULT_ROLLOUT,
    key: jax.Array | None = None,
) -> TrajectoryBatch:
    """Plays one episode per question to its end (see the module docstring).

    `key` is required unless `config.sampling` is greedy; turn t samples with `fold_in(key, t)`.
    """
    prompts = env.reset(questions, golden_answers)
    rows = [_Row([], [], []) for _ in prompts]
    for row, prompt in zip(rows, prompts):
        row.add(_encode(tokenizer, prompt), -1)
    longest = max(len(r.tokens) for r in rows)
    if longest >= config.max_length:
        raise ValueError(
            f"A prompt has {longest} tokens, leaving no room under max_length="
            f"{config.max_length}; raise RolloutConfig.max_length or shorten the template."
        )
    position_limit = sampler.config.max_position_embeddings
    if position_limit < config.max_length:
        raise ValueError(
            f"max_length={config.max_length} exceeds the model's max_position_embeddings="
            f"{position_limit}; lower RolloutConfig.max_length."
        )
    stops = stop_token_sequences(tokenizer)
    # Allocate the cache for the longest possible episode now: a cache that grows mid-rollout
    # changes the jitted shapes and recompiles prefill and decode.
    capacity = min(config.max_length + config.max_step_tokens, position_limit)
    session = sampler.start([r.tokens for r in rows], reserve=capacity - longest)
    turn = 0
    while active := [i for i, r in enumerate(rows) if r.end is None]:
        lengths = np.array([len(rows[i].tokens) for i in active])
        budget = min(
            config.max_step_tokens,
            config.max_length - int(lengths.min()),
            position_limit - int(lengths.max()),
        )
        is_active = np.zeros(len(rows), bool)
        is_active[active] = True
        turn_key = None if key is None else jax.random.fold_in(key, turn)
        generation = session.generate(
            budget, key=turn_key, sampling=config.sampling, stops=stops, active=is_active
        )
        generated = generation.token_lists()
        logprobs = np.asarray(generation.logprobs)
        finish = np.asarray(generation.finish_reason)
        texts: list[str | None] = [None] * len(rows)
        for i in active:
            row, step = rows[i], env.episodes[i].turns
            room = config.max_length - len(row.tokens)
            ids = generated[i][:room]
            row.add(ids, step, logprobs[i, : len(ids)].tolist())
            texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
            if len(generated[i]) > room or (len(ids) == room and finish[i] != FinishReason.STOP):
                row.end = EpisodeEnd.TRUNCATED
        results = env.step(texts)
        forced: list[list[int]] = [[] for _ in rows]
        for i in active:
            row, result = rows[i], results[i]
            if result.done and env.episodes[i].answer is not None:
                # Also when the answer's closing tag took the context's last slot.
                row.end = EpisodeEnd.ANSWER
            elif result.done and row.end is None:
                row.end = EpisodeEnd.NO_ANSWER
            elif not result.done and row.end is None:
                # Before the final call the env may have forced an answer opening instead.
                forced_text = "" if env.episodes[i].pending_prefix else config.after_observation
                ids = _encode(tokenizer, result.observation + forced_text)
                if len(row.tokens) + len(ids) >= config.max_length:
                    row.end = EpisodeEnd.TRUNCATED
                else:
                    row.add(ids, -1)
                    forced[i] = ids
        if any(forced):
            session.append(forced)
        turn += 1
    return _collate(rows, env.episodes, config.max_length, sampler.pad_token_id)


def _encode(tokenizer: TextTokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _collate(
    rows: Sequence[_Row], episodes: Sequence[Episode], max_length: int, pad_id: int
) -> TrajectoryBatch:
    batch = len(rows)
    tokens = np.full((batch, max_length), pad_id, np.int32)
    step_id = np.full((batch, max_length), -1, np.int32)
    logprobs = np.zeros((batch, max_length), np.float32)
    input_mask = np.zeros((batch, max_length), bool)
    for b, row in enumerate(rows):
        n = len(row.tokens)
        tokens[b, :n] = row.tokens
        step_id[b, :n] = row.step_id
        logprobs[b, :n] = row.logprobs
        input_mask[b, :n] = True
    return TrajectoryBatch(
        tokens=tokens,
        input_mask=input_mask,
        loss_mask=(step_id >= 0).astype(np.float32),
        step_id=step_id,
        logprobs=logprobs,
        finish_reason=np.array([int(r.end) for r in rows], np.int32),
        num_turns=np.array([e.turns for e in episodes], np.int32),
        em=np.array([e.em for e in episodes], np.float32),
        f1=np.array([e.f1 for e in episodes], np.float32),
        episodes=list(episodes),
    )
