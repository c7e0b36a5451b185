"""Trajectories as token rows, and the one collate that pads them into a `TrajectoryBatch`.

Every trajectory type is a row of tokens with a per-token `step_id`: −1 on context the policy
did not choose (prompt, observations, forced text), t on the tokens it sampled at step t. A
full multi-turn episode is one row; a SLATE step sibling (slate.md §2.2) is a row whose shared
prefix is all context (−1) and whose own action carries step t, with its siblings under one
`group_id`. The loss mask is `step_id >= 0` (Search-R1 eq. 2-3), so one loss serves both.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import numpy as np

from prm.envs import protocol
from prm.envs.protocol import StepResult, TokenizedTrajectory


class EpisodeEnd(enum.IntEnum):
    """How a row ends (`TrajectoryBatch.finish_reason`)."""

    ANSWER = 0  # it gave an answer (scored by the env's outcome)
    NO_ANSWER = 1  # the env ended the episode without an answer (outcome reward 0)
    TRUNCATED = 2  # the context reached `max_length` before the env ended it
    OPEN = 3  # the episode goes on after the row (a rollout in progress, a step sibling)


@dataclasses.dataclass
class Trajectory:
    """One row before padding: tokens with their step ids and sampler log-probs, the env's
    result of every step so far, and the episode's outcome metrics once it has ended."""

    group_id: int  # rows of one GRPO group or one sibling set share it
    tokens: list[int] = dataclasses.field(default_factory=list)
    step_id: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    steps: list[StepResult] = dataclasses.field(default_factory=list)  # steps[t]: step t
    outcome: dict[str, float] = dataclasses.field(default_factory=dict)
    end: EpisodeEnd = EpisodeEnd.OPEN

    def add(self, tokens: Sequence[int], step: int = -1, logprobs: Sequence[float] | None = None):
        """Appends tokens sampled at `step` with their log-probs, or context (step −1, log-prob
        0)."""
        if logprobs is not None and len(logprobs) != len(tokens):
            raise ValueError(f"add: {len(tokens)} tokens but {len(logprobs)} log-probs.")
        if step < 0 and logprobs is not None:
            raise ValueError("add: context tokens (step -1) carry no log-probs.")
        self.tokens.extend(tokens)
        self.step_id.extend([step] * len(tokens))
        self.logprobs.extend([0.0] * len(tokens) if logprobs is None else logprobs)


@dataclasses.dataclass(frozen=True)
class TrajectoryBatch:
    """Rows right-padded to `[B, T]`, with per-row and per-step metadata.

    `outcome` holds the env's per-episode metrics, one float32[B] array per name, always with
    "reward" for envs that end episodes (SearchEnv adds "em" and "f1"); `steps[b][t]` is the
    env's `StepResult` of row b's step t (action kind and content, reward, info).
    """

    tokens: np.ndarray  # int32[B, T], pad id after the row
    input_mask: np.ndarray  # bool[B, T]: a real token
    loss_mask: np.ndarray  # float32[B, T]: 1 on tokens the policy sampled (step_id >= 0)
    step_id: np.ndarray  # int32[B, T]: the step that sampled the token, −1 otherwise
    logprobs: np.ndarray  # float32[B, T]: sampler log π(token), 0 where loss_mask is 0
    group_id: np.ndarray  # int32[B]
    finish_reason: np.ndarray  # int32[B]: an `EpisodeEnd`
    num_turns: np.ndarray  # int32[B]: steps taken (len(steps[b]))
    outcome: dict[str, np.ndarray]  # name -> float32[B]
    steps: list[list[StepResult]]

    def _metric(self, name: str) -> np.ndarray:
        if name not in self.outcome:
            raise KeyError(f"The env reported no {name!r} outcome; it has {sorted(self.outcome)}.")
        return self.outcome[name]

    @property
    def reward(self) -> np.ndarray:
        return self._metric("reward")

    @property
    def em(self) -> np.ndarray:
        return self._metric("em")

    @property
    def f1(self) -> np.ndarray:
        return self._metric("f1")

    @property
    def answers(self) -> list[str | None]:
        """Each row's answer: the content of its last step if that step answered, else None."""
        return [s[-1].action.content if s and s[-1].action.kind == "answer" else None
                for s in self.steps]  # fmt: skip

    @property
    def step_rewards(self) -> np.ndarray:
        """float32[B, S] with S = max(num_turns): `steps[b][t].reward`, 0 past a row's steps.

        Reaches tokens with `prm.broadcast_step_values_to_tokens(step_rewards, step_id)`.
        """
        out = np.zeros((len(self.steps), max(map(len, self.steps), default=0)), np.float32)
        for b, steps in enumerate(self.steps):
            out[b, : len(steps)] = [s.reward for s in steps]
        return out


def collate(trajectories: Sequence[Trajectory], length: int, pad_id: int) -> TrajectoryBatch:
    """Right-pads `trajectories` to `[B, length]` (a row longer than `length` is an error).

    Every row needs an outcome with the same names, and a `StepResult` for each step its
    tokens name (`max(step_id) < len(steps)`).
    """
    if not trajectories:
        raise ValueError("collate: no trajectories given.")
    names = sorted(trajectories[0].outcome)
    for b, row in enumerate(trajectories):
        if not len(row.tokens) == len(row.step_id) == len(row.logprobs):
            raise ValueError(
                f"collate: row {b} has {len(row.tokens)} tokens, {len(row.step_id)} step ids and "
                f"{len(row.logprobs)} log-probs; build rows with Trajectory.add."
            )
        if sorted(row.outcome) != names:
            raise ValueError(
                f"collate: row {b} has outcome metrics {sorted(row.outcome)}, row 0 has {names}; "
                "every row needs the same names."
            )
        if row.step_id and max(row.step_id) >= len(row.steps):
            raise ValueError(
                f"collate: row {b} has tokens of step {max(row.step_id)} but {len(row.steps)} "
                "step results; append the StepResult of every step the row samples."
            )
    padded = protocol.collate(
        [
            TokenizedTrajectory(
                np.asarray(row.tokens, np.int32),
                np.asarray(row.step_id) >= 0,
                np.asarray(row.step_id, np.int32),
            )
            for row in trajectories
        ],
        length,
        pad_id,
    )
    logprobs = np.zeros((len(trajectories), length), np.float32)
    for b, row in enumerate(trajectories):
        logprobs[b, : len(row.logprobs)] = row.logprobs
    return TrajectoryBatch(
        **padded,
        logprobs=logprobs,
        group_id=np.array([row.group_id for row in trajectories], np.int32),
        finish_reason=np.array([int(row.end) for row in trajectories], np.int32),
        num_turns=np.array([len(row.steps) for row in trajectories], np.int32),
        outcome={
            name: np.array([row.outcome[name] for row in trajectories], np.float32)
            for name in names
        },
        steps=[list(row.steps) for row in trajectories],
    )
