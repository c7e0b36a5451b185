"""A small deterministic `Env` and byte tokenizer for tree-search tests (any tiny model).

Task = number of steps L. Each step is any text; it is "good" when the sum of its byte codes is
even. The episode ends after L steps with reward 1 if every step was good, else 0; between
steps the env forces the observation "|". Steps end at the stop string "!" (rare under a random
model, so most steps spend their token budget).
"""

from __future__ import annotations

from collections.abc import Sequence

from prm.envs.protocol import Action, StepResult


class ByteTokenizer:
    """Token i < 256 is byte i (latin-1 text); larger ids (specials) decode to nothing."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("latin-1"))

    def decode(self, token_ids: Sequence[int], **kwargs) -> str:
        return bytes(i for i in token_ids if i < 256).decode("latin-1")


def good_step(text: str) -> bool:
    return sum(text.encode("latin-1")) % 2 == 0


class ParityEnv:
    stop_strings = ("!",)

    def __init__(self):
        self._tasks: list[int] = []
        self._steps: list[list[str]] = []

    def reset(self, tasks: Sequence[int]) -> list[str]:
        self._tasks = list(tasks)
        self._steps = [[] for _ in tasks]
        return [f"steps {t}:" for t in tasks]

    def step(self, step_texts: Sequence[str | None]) -> list[StepResult | None]:
        results: list[StepResult | None] = []
        for i, text in enumerate(step_texts):
            if text is None:
                results.append(None)
                continue
            if len(self._steps[i]) >= self._tasks[i]:
                raise ValueError(f"episode {i} is over")
            self._steps[i].append(text)
            done = len(self._steps[i]) == self._tasks[i]
            reward = float(done and all(map(good_step, self._steps[i])))
            action = Action("answer" if done else "search", text)
            results.append(StepResult(text, action, "" if done else "|", done, reward))
        return results

    def outcomes(self) -> list[dict[str, float]]:
        return [
            {"reward": float(len(s) == t and all(map(good_step, s)))}
            for s, t in zip(self._steps, self._tasks)
        ]
