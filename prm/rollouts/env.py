"""The environment interface a rollout plays, and an env for single-turn verifiable tasks.

An env knows text and tags, not models (DESIGN.md): it renders a prompt per task, says which
strings end a policy step, turns each step's text into an observation to force (or ends the
episode), and scores episodes. The sampler knows tokens, not tags; `prm.rollouts.rollout`
joins the two. `prm.envs.SearchEnv` (Search-R1) and `SingleTurnEnv` implement `Env`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from prm.envs.protocol import Action, StepResult, truncate_at_stop


class Env[Task](Protocol):
    """Batched text episodes, one per task."""

    # Strings that end a policy step; the rollout hands their token ids to the sampler.
    stop_strings: Sequence[str]

    def reset(self, tasks: Sequence[Task]) -> list[str]:
        """Starts one episode per task (dropping any earlier ones); returns the prompt texts."""
        ...

    def step(self, step_texts: Sequence[str | None]) -> list[StepResult | None]:
        """Applies one policy step to each episode whose text is not None (None: no step, None
        result). A result that is not `done` carries the observation to force before the next
        step.

        Atomic: if it raises, no episode has changed and the same call may be retried.
        """
        ...

    def outcomes(self) -> list[dict[str, float]]:
        """Per episode, its outcome metrics by name, including "reward"; the same names for
        every episode."""
        ...


Outcome = float | Mapping[str, float]


class SingleTurnEnv[Task]:
    """One prompt, one completion, and an outcome computed from the completion text.

        env = SingleTurnEnv(lambda t: f"{t[0]}+{t[1]}=", lambda t, text: float(text == str(sum(t))))

    `score(task, completion)` returns the reward, or a mapping of metrics that includes
    "reward" (the same names for every task). The completion is cut after the first of
    `stop_strings` (none: the sampler's end-of-sequence token or budget ends it); its stripped
    text is the step's `answer` action.
    """

    def __init__(
        self,
        render_prompt: Callable[[Task], str],
        score: Callable[[Task, str], Outcome],
        stop_strings: Sequence[str] = (),
    ):
        self.render_prompt = render_prompt
        self.score = score
        self.stop_strings = tuple(stop_strings)
        self._tasks: list[Task] = []
        self._outcomes: list[dict[str, float] | None] = []

    def reset(self, tasks: Sequence[Task]) -> list[str]:
        self._tasks = list(tasks)
        self._outcomes = [None] * len(self._tasks)
        return [self.render_prompt(task) for task in self._tasks]

    def step(self, step_texts: Sequence[str | None]) -> list[StepResult | None]:
        if len(step_texts) != len(self._tasks):
            raise ValueError(
                f"step: {len(step_texts)} texts for {len(self._tasks)} episodes (pass None for "
                "episodes that take no step)."
            )
        results: list[StepResult | None] = [None] * len(self._tasks)
        outcomes = {}
        for i, raw in enumerate(step_texts):
            if raw is None:
                continue
            if self._outcomes[i] is not None:
                raise ValueError(f"step: episode {i} is over; pass None for it.")
            text = truncate_at_stop(raw, self.stop_strings)
            outcomes[i] = _as_outcome(self.score(self._tasks[i], text))
            results[i] = StepResult(
                text, Action("answer", text.strip()), "", True, outcomes[i]["reward"]
            )
        for i, outcome in outcomes.items():  # only once every score succeeded
            self._outcomes[i] = outcome
        return results

    def outcomes(self) -> list[dict[str, float]]:
        missing = [i for i, outcome in enumerate(self._outcomes) if outcome is None]
        if missing:
            raise ValueError(f"outcomes: episodes {missing} have no completion yet.")
        return list(self._outcomes)  # type: ignore[arg-type]


def _as_outcome(score: Outcome) -> dict[str, float]:
    if isinstance(score, Mapping):
        if "reward" not in score:
            raise ValueError(f"score returned {dict(score)}; a mapping must include 'reward'.")
        return {name: float(value) for name, value in score.items()}
    return {"reward": float(score)}
