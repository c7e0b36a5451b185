"""Batched episodes of any `Env`: a sampler session carried across steps, one prefill per prompt.

    env = SearchEnv(retriever, EnvConfig(max_turns=4, forced_answer="<answer>"), tokenizer)
    batch = rollout(Sampler(model), env, tokenizer, [QATask(question, golds), ...],
                    RolloutConfig(max_length=256, group_size=5), key=key)

Per step (Search-R1 `run_llm_loop`, search_r1_stepsearch.md §1.3; SLATE §2.1): every unfinished
row decodes until one of the env's stop strings, an end-of-sequence token or the step budget;
the env turns the steps' texts into observations (or ends episodes), which are forced into
those rows *on top of their KV cache*. `group_size` n plays each task n times (rows b·n … b·n +
n − 1, one `group_id`): the unique prompts are prefilled once and the session forked n ways,
and the repeats draw different tokens because a row's key is folded with its index.

The result is a `TrajectoryBatch`: per-token `tokens`, `loss_mask` (1 exactly on sampled
tokens; prompt, observations and forced text 0, Search-R1 eq. 2-3), `step_id` (the step that
sampled the token, −1 elsewhere), the sampler's `logprobs` (π_old at temperature 1), per-row
`group_id`, `finish_reason`, the env's outcome metrics and every step's `StepResult`.

Tokens are the sampled ids themselves, never a re-tokenisation of the decoded text (Search-R1
re-tokenises), so the trajectory is exactly what the policy conditioned on and `logprobs` are
the sampler's own. Text the env forces (SLATE's `<think>` after an observation, a forced
`<answer>`) is context with `loss_mask` 0: the policy did not choose it (SLATE counts its forced
tags as trainable). A row that would grow past `max_length` (a step or an observation that does
not fit) ends there with `EpisodeEnd.TRUNCATED`.

An env step that raises (a retriever down) is retried `env_retries` times with exponential
backoff; envs are atomic (`Env.step`), so a retry sees every episode as before the failure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import numpy as np

from prm.envs.protocol import StepResult, TextTokenizer, stop_token_sequences
from prm.rollouts.env import Env
from prm.rollouts.trajectory import EpisodeEnd, Trajectory, TrajectoryBatch, collate
from prm.sampling import GREEDY, FinishReason, Sampler, SamplingParams, Session


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    max_step_tokens: int = 64  # decode budget of one policy step
    max_length: int = 256  # context cap: prompt + steps + observations
    sampling: SamplingParams = GREEDY
    group_size: int = 1  # episodes per task (a GRPO group), sharing one prefill
    env_retries: int = 2  # retries of a failing env step before the rollout gives up
    env_backoff_s: float = 1.0  # wait before retry r: env_backoff_s * 2**r seconds

    def __post_init__(self):
        if self.max_step_tokens < 1 or self.max_length < 2:
            raise ValueError(f"Need max_step_tokens >= 1 and max_length >= 2, got {self}.")
        if self.group_size < 1 or self.env_retries < 0 or self.env_backoff_s < 0:
            raise ValueError(
                f"Need group_size >= 1, env_retries >= 0 and env_backoff_s >= 0, got {self}."
            )


DEFAULT_ROLLOUT = RolloutConfig()


class EnvStepError(RuntimeError):
    """An env step kept failing after every retry (the cause is chained)."""


def rollout[Task](
    sampler: Sampler,
    env: Env[Task],
    tokenizer: TextTokenizer,
    tasks: Sequence[Task],
    config: RolloutConfig = DEFAULT_ROLLOUT,
    key: jax.Array | None = None,
) -> TrajectoryBatch:
    """Plays `config.group_size` episodes per task to their end (see the module docstring).

    `key` is required unless `config.sampling` is greedy; step t samples with `fold_in(key, t)`.
    """
    n = config.group_size
    if not tasks:
        raise ValueError("rollout: no tasks given.")
    prompts = env.reset([task for task in tasks for _ in range(n)])
    if len(prompts) != len(tasks) * n or any(
        p != prompts[i - i % n] for i, p in enumerate(prompts)
    ):
        raise ValueError(
            f"{type(env).__name__}.reset must return one prompt per episode, the same for "
            "repeats of a task (group_size > 1 prefills it once)."
        )
    prompt_ids = [_encode(tokenizer, p) for p in prompts[::n]]
    rows = [Trajectory(group_id=i // n) for i in range(len(prompts))]
    for i, row in enumerate(rows):
        row.add(prompt_ids[i // n])
    longest = max(map(len, prompt_ids))
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
    # Allocate the cache for the longest possible episode now: a cache that grows mid-rollout
    # changes the jitted shapes and recompiles prefill and decode.
    capacity = min(config.max_length + config.max_step_tokens, position_limit)
    session = sampler.start(prompt_ids, reserve=capacity - longest)
    if n > 1:
        session = session.fork(n)
    play_open_rows(session, env, tokenizer, rows, config, key, position_limit=position_limit)
    for row, outcome in zip(rows, env.outcomes()):
        row.outcome = dict(outcome)
    return collate(rows, config.max_length, sampler.pad_token_id)


def play_open_rows[Task](
    session: Session,
    env: Env[Task],
    tokenizer: TextTokenizer,
    rows: Sequence[Trajectory],
    config: RolloutConfig = DEFAULT_ROLLOUT,
    key: jax.Array | None = None,
    *,
    position_limit: int,
) -> None:
    """Plays every `EpisodeEnd.OPEN` row of `rows` to its end, in place: row i is `session` row i
    and `env` episode i, each holding the row's tokens so far (context and cache agree).

    The loop of `rollout` (module docstring); also continues episodes from any point, e.g. Monte
    Carlo completions forked from a SLATE sibling's cache. Step t samples with `fold_in(key, t)`;
    `position_limit` is the model's `max_position_embeddings`.
    """
    stops = stop_token_sequences(tokenizer, env.stop_strings)
    turn = 0
    while active := [i for i, r in enumerate(rows) if r.end == EpisodeEnd.OPEN]:
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
        truncated = set()
        for i in active:
            row = rows[i]
            room = config.max_length - len(row.tokens)
            ids = generated[i][:room]
            row.add(ids, len(row.steps), logprobs[i, : len(ids)].tolist())
            texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
            if len(generated[i]) > room or (len(ids) == room and finish[i] != FinishReason.STOP):
                truncated.add(i)
        results = _step_env(env, texts, config, turn)
        forced: list[list[int]] = [[] for _ in rows]
        for i in active:
            row, result = rows[i], results[i]
            row.steps.append(result)
            if result.done and result.action.kind == "answer":
                # Also when the answer's closing tag took the context's last slot.
                row.end = EpisodeEnd.ANSWER
            elif i in truncated:
                row.end = EpisodeEnd.TRUNCATED
            elif result.done:
                row.end = EpisodeEnd.NO_ANSWER
            else:
                ids = _encode(tokenizer, result.observation)
                if len(row.tokens) + len(ids) >= config.max_length:
                    row.end = EpisodeEnd.TRUNCATED
                else:
                    row.add(ids)
                    forced[i] = ids
        if any(forced):
            session.append(forced)
        turn += 1


def _step_env(
    env: Env, texts: list[str | None], config: RolloutConfig, turn: int
) -> list[StepResult | None]:
    """`env.step(texts)`, retried with exponential backoff; one clear error if it keeps failing."""
    attempts = config.env_retries + 1
    for attempt in range(attempts):
        try:
            results = env.step(texts)
            break
        except Exception as error:  # noqa: BLE001 - any failure is retried, then reported
            if attempt + 1 == attempts:
                stepping = sum(t is not None for t in texts)
                raise EnvStepError(
                    f"{type(env).__name__}.step failed {attempts} times at step {turn} "
                    f"({stepping} episodes stepping); last error: {type(error).__name__}: "
                    f"{error}. Check the env's backend (e.g. the retriever), or raise "
                    "RolloutConfig.env_retries / env_backoff_s."
                ) from error
            time.sleep(config.env_backoff_s * 2**attempt)
    if len(results) != len(texts) or any(
        (r is None) != (t is None) for r, t in zip(results, texts)
    ):
        raise ValueError(
            f"{type(env).__name__}.step must return one result per text given and None for "
            "each None."
        )
    return results


def _encode(tokenizer: TextTokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)
