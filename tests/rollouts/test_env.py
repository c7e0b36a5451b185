"""SingleTurnEnv: prompts, scores of completions cut at a stop, atomic steps, clear errors."""

import pytest

from prm.envs.protocol import Action, StepResult
from prm.rollouts import SingleTurnEnv


def sum_env(**kwargs):
    """Chain arithmetic: the task is a tuple of numbers, the completion should be their sum."""

    def score(task, text):
        if text == "boom":
            raise RuntimeError("scorer crashed")
        return float(text.strip() == str(sum(task)))

    return SingleTurnEnv(lambda task: " + ".join(map(str, task)) + " = ", score, **kwargs)


def test_single_turn_episodes_end_after_one_scored_step():
    env = sum_env(stop_strings=["."])
    assert env.reset([(1, 2, 3), (4, 5), (7,)]) == ["1 + 2 + 3 = ", "4 + 5 = ", "7 = "]
    results = env.step([" 6. Because", "10", None])
    # Cut after the stop; "6." is not "6", so `score` of the cut text gives 0.
    assert results[0] == StepResult(" 6.", Action("answer", "6."), "", True, 0.0)
    assert results[1].reward == 0.0 and results[2] is None
    (result,) = [r for r in env.step([None, None, "7"]) if r is not None]
    assert result.done and result.reward == 1.0 and result.action.content == "7"
    assert env.outcomes() == [{"reward": 0.0}, {"reward": 0.0}, {"reward": 1.0}]


def test_metrics_mappings_and_atomic_steps():
    env = SingleTurnEnv(lambda task: task, lambda task, text: {"reward": 2.0, "chars": len(text)})
    env.reset(["a", "b"])
    env.step(["xyz", "q"])
    assert env.outcomes() == [{"reward": 2.0, "chars": 3.0}, {"reward": 2.0, "chars": 1.0}]

    env = sum_env()
    env.reset([(1,), (2,)])
    with pytest.raises(RuntimeError, match="scorer crashed"):
        env.step(["1", "boom"])
    # The first episode's score was not committed: both episodes can still take their step.
    with pytest.raises(ValueError, match=r"episodes \[0, 1\] have no completion"):
        env.outcomes()
    env.step(["1", "2"])
    assert env.outcomes() == [{"reward": 1.0}, {"reward": 1.0}]


def test_single_turn_errors():
    env = sum_env()
    env.reset([(1,)])
    with pytest.raises(ValueError, match="2 texts for 1 episodes"):
        env.step(["1", "2"])
    env.step(["1"])
    with pytest.raises(ValueError, match="episode 0 is over"):
        env.step(["1"])
    bad = SingleTurnEnv(lambda task: task, lambda task, text: {"score": 1.0})
    bad.reset(["a"])
    with pytest.raises(ValueError, match="must include 'reward'"):
        bad.step(["x"])
