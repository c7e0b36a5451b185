"""collate: whole episodes and step siblings padded into one TrajectoryBatch, checked by hand."""

import numpy as np
import pytest

import prm
from prm.envs.protocol import Action, StepResult
from prm.rollouts import EpisodeEnd, Trajectory, collate

SEARCH = StepResult("<search> q </search>", Action("search", "q"), "obs", False, 0.0)
ANSWER = StepResult("<answer> a </answer>", Action("answer", "a"), "", True, 1.0)
WRONG = StepResult("<answer> b </answer>", Action("answer", "b"), "", True, 0.0)


def episode():
    """prompt [1 2] · step 0 [3 4] · observation [5] · step 1 [6]."""
    row = Trajectory(group_id=0, steps=[SEARCH, ANSWER], outcome={"reward": 1.0, "em": 1.0})
    row.add([1, 2])
    row.add([3, 4], 0, [-0.1, -0.2])
    row.add([5])
    row.add([6], 1, [-0.3])
    row.end = EpisodeEnd.ANSWER
    return row


def sibling(action_token, step, logprob):
    """A SLATE sibling of step 1: the chosen path so far is context; only its action trains."""
    row = Trajectory(group_id=1, steps=[SEARCH, step], outcome={"reward": step.reward, "em": 0.0})
    row.add([1, 2, 3, 4, 5])
    row.add([action_token], 1, [logprob])
    return row


def test_episodes_and_siblings_share_one_layout():
    batch = collate([episode(), sibling(7, ANSWER, -0.5), sibling(8, WRONG, -0.6)], 7, pad_id=0)
    np.testing.assert_array_equal(
        batch.tokens, [[1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 4, 5, 7, 0], [1, 2, 3, 4, 5, 8, 0]]
    )
    np.testing.assert_array_equal(
        batch.step_id,
        [[-1, -1, 0, 0, -1, 1, -1], [-1, -1, -1, -1, -1, 1, -1], [-1, -1, -1, -1, -1, 1, -1]],
    )
    np.testing.assert_array_equal(batch.loss_mask, batch.step_id >= 0)
    np.testing.assert_array_equal(batch.input_mask, batch.tokens > 0)
    np.testing.assert_allclose(batch.logprobs[0], [0, 0, -0.1, -0.2, 0, -0.3, 0])
    np.testing.assert_allclose(batch.logprobs[1:, 5], [-0.5, -0.6])
    assert batch.group_id.tolist() == [0, 1, 1] and batch.num_turns.tolist() == [2, 2, 2]
    assert batch.finish_reason.tolist() == [EpisodeEnd.ANSWER, EpisodeEnd.OPEN, EpisodeEnd.OPEN]
    assert batch.reward.tolist() == [1.0, 1.0, 0.0] and batch.em.tolist() == [1.0, 0.0, 0.0]
    assert batch.answers == ["a", "a", "b"]
    # Step rewards [B, S] reach the tokens of their step through step_id.
    assert batch.step_rewards.tolist() == [[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    tokens = prm.broadcast_step_values_to_tokens(batch.step_rewards, batch.step_id)
    np.testing.assert_array_equal(tokens[:, 5], [1.0, 1.0, 0.0])
    assert float(np.abs(tokens).sum()) == 2.0


def test_collate_errors():
    with pytest.raises(ValueError, match="no trajectories"):
        collate([], 4, 0)
    other = episode()
    other.outcome = {"reward": 0.0}
    with pytest.raises(ValueError, match=r"row 1 has outcome metrics \['reward'\]"):
        collate([episode(), other], 8, 0)
    short = episode()
    short.steps = short.steps[:1]
    with pytest.raises(ValueError, match="tokens of step 1 but 1 step results"):
        collate([short], 8, 0)
    with pytest.raises(ValueError, match="6 tokens > max_len=5"):
        collate([episode()], 5, 0)
    ragged = episode()
    ragged.logprobs.pop()
    with pytest.raises(ValueError, match="build rows with Trajectory.add"):
        collate([ragged], 8, 0)
    with pytest.raises(ValueError, match="2 tokens but 1 log-probs"):
        Trajectory(0).add([1, 2], 0, [0.0])
    with pytest.raises(ValueError, match="carry no log-probs"):
        Trajectory(0).add([1], -1, [0.0])
