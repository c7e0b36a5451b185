"""Monte Carlo completions of step prefixes: the policy call behind every rollout-based label.

Math-Shepherd (Eq. 3-4), OmegaPRM (Eq. 1) and PAV all estimate how likely a partial solution
is to end right by sampling N completions after it. `complete` does that for many prefixes at
once, through `prm.rollouts.rollout`, with every prefix prefilled once and its KV cache forked N
ways (`Session.fork`) for its completions:

    prefixes = [Prefix(task, steps[:t]) for t in range(1, len(steps))]
    result = complete(sampler, env, tokenizer, prefixes, 8, RolloutConfig(...), key=key)
    mc = result.correct.mean(axis=1)              # MC(x_{1:t}) per prefix

A prefix is a task and the policy steps already taken (their texts). `PrefixedEnv` starts each
episode after its prefix: its prompt is the env's prompt followed by each prefix step and the
observation the env answers it with (replayed through the env), so envs with observations work
too. The prefix is then prefilled from its text: exact for character-level tokenizers (the
chain arithmetic task), a re-tokenisation otherwise (as Search-R1 does between turns).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from prm.envs.protocol import StepResult, TextTokenizer
from prm.rollouts.env import Env
from prm.rollouts.rollout import RolloutConfig, rollout
from prm.sampling import Sampler


@dataclasses.dataclass(frozen=True)
class Prefix[Task]:
    """A partial episode: the task and the texts of the policy steps taken (t = len(steps))."""

    task: Task
    steps: tuple[str, ...] = ()


class PrefixedEnv[Task]:
    """An `Env` over `Prefix`es whose episodes go on from the end of each prefix."""

    def __init__(self, env: Env[Task]):
        self.env = env
        self.stop_strings = env.stop_strings

    def reset(self, prefixes: Sequence[Prefix[Task]]) -> list[str]:
        """The env's prompts with each prefix step and its observation appended.

        Raises:
          ValueError: if a prefix step ends its episode (a prefix must leave it open).
        """
        return prefix_texts(self.env, prefixes, open_ended=True)

    def step(self, step_texts: Sequence[str | None]) -> list[StepResult | None]:
        return self.env.step(step_texts)

    def outcomes(self) -> list[dict[str, float]]:
        return self.env.outcomes()


def prefix_texts[Task](
    env: Env[Task], prefixes: Sequence[Prefix[Task]], open_ended: bool = False
) -> list[str]:
    """The text a policy has seen after each prefix: the env's prompt, then each prefix step and
    the observation the env answers it with (replayed through `env`).

    With `open_ended` every prefix must leave its episode open (it is to be completed);
    otherwise its last step may end it (a whole solution, as a verifier scores it).

    Raises:
      ValueError: if a step ends its episode while steps follow it, or (open_ended) at all.
    """
    texts = env.reset([prefix.task for prefix in prefixes])
    for t in range(max((len(p.steps) for p in prefixes), default=0)):
        step_texts = [p.steps[t] if t < len(p.steps) else None for p in prefixes]
        for i, result in enumerate(env.step(step_texts)):
            if result is None:
                continue
            if result.done and (open_ended or t + 1 < len(prefixes[i].steps)):
                raise ValueError(
                    f"Prefix {i}'s step {t + 1} ({step_texts[i]!r}) ends the episode; "
                    "complete only prefixes that leave it open (drop the final step)."
                )
            texts[i] += result.step_text + result.observation
    return texts


@dataclasses.dataclass(frozen=True)
class Completions:
    """N completions of each of K prefixes.

    correct: bool[K, N], whether completion j of prefix k reached the gold answer (outcome
      reward > 0; rewards are binary in the tasks this serves).
    num_tokens: int32[K, N], tokens the policy sampled in completion j.
    steps: steps[k][j], completion j's step texts after prefix k (its last one answers, unless
      the episode was cut).
    """

    correct: np.ndarray
    num_tokens: np.ndarray
    steps: list[list[tuple[str, ...]]]

    @property
    def mc(self) -> np.ndarray:
        """float32[K]: the Monte Carlo estimate MC(prefix) = fraction of correct completions."""
        return self.correct.mean(axis=1, dtype=np.float32)


def complete[Task](
    sampler: Sampler,
    env: Env[Task],
    tokenizer: TextTokenizer,
    prefixes: Sequence[Prefix[Task]],
    num_completions: int,
    config: RolloutConfig,
    key: jax.Array,
    max_rows: int = 1024,
) -> Completions:
    """`num_completions` sampled completions of every prefix (see the module docstring).

    Prefixes are played in chunks of at most `max_rows // num_completions` (at least one), each
    one `rollout` with `group_size=num_completions`: one prefill per prefix, one fork, then
    every completion of the chunk decodes in the same batched sampler calls. Chunk c samples
    with `fold_in(key, c)`. `config.max_length` must hold the longest prefix and its completion.
    """
    if not prefixes:
        raise ValueError("complete: no prefixes given.")
    if num_completions < 1:
        raise ValueError(f"num_completions must be >= 1, got {num_completions}.")
    group_config = dataclasses.replace(config, group_size=num_completions)
    per_chunk = max(1, max_rows // num_completions)
    correct, num_tokens, steps = [], [], []
    for c, start in enumerate(range(0, len(prefixes), per_chunk)):
        chunk = prefixes[start : start + per_chunk]
        batch = rollout(
            sampler, PrefixedEnv(env), tokenizer, chunk, group_config, jax.random.fold_in(key, c)
        )
        correct.append(batch.reward.reshape(len(chunk), num_completions) > 0)
        num_tokens.append(batch.loss_mask.sum(axis=1).astype(np.int32).reshape(len(chunk), -1))
        rows = [tuple(result.step_text for result in row) for row in batch.steps]
        steps.extend(
            rows[i * num_completions : (i + 1) * num_completions] for i in range(len(chunk))
        )
    return Completions(np.concatenate(correct), np.concatenate(num_tokens), steps)
