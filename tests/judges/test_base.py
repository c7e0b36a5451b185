import numpy as np
import pytest

from prm.judges import (
    Judgement,
    JudgeRequest,
    PathStep,
    judge_context,
    judgement_arrays,
    make_judge,
    step_reward,
    step_rewards,
    think_text,
)


def request(**fields) -> JudgeRequest:
    defaults = dict(context="Question: q?", think="t", kind="search", content="x", step_index=0)
    return JudgeRequest(**{**defaults, **fields})


def test_judge_context_follows_slate_3_4():
    path = [
        PathStep("I need A.", "who is A", "Doc 1(Title: A) " + "a" * 400),
        PathStep("A is B.", "what is B", "short"),
        PathStep("So the answer is C."),
    ]
    expected = (
        "Question: Who?"
        "\nThinking: I need A.\nQuery: who is A\nRetrieved: Doc 1(Title: A) " + "a" * 284 + ""
        "\nThinking: A is B.\nQuery: what is B\nRetrieved: short"
        "\nThinking: So the answer is C."
    )
    assert judge_context("Who?", path) == expected
    assert len("Doc 1(Title: A) " + "a" * 284) == 300
    assert judge_context("Who?") == "Question: Who?"


@pytest.mark.parametrize(
    "step, think",
    [
        ("<think> I need A. </think>\n<search> A </search>", "I need A."),
        (" I need A. </think>\n<search> A </search>", "I need A."),  # <think> forced before
        ("I need A.\n<search> A </search>", "I need A."),  # no think tags at all
        ("<search> A </search>", ""),
        ("<think> x </think><answer> y </answer>", "x"),
    ],
)
def test_think_text(step, think):
    assert think_text(step) == think


def test_step_reward_by_hand():
    # Search (Eq. 3): no bonus, whatever the step.
    search = Judgement("search", reasoning=1, action=-1)
    assert step_reward(search, 0) == 0.0
    assert step_reward(search, 3, indexing="code") == 0.0
    # Answer (Eq. 4), paper's 1-based t = step_index + 1: 1 + 1 + 0.1 * (4 - 1) / 4 = 2.075.
    answer = Judgement("answer", reasoning=1, action=1)
    assert step_reward(answer, 0) == pytest.approx(2.075)
    assert step_reward(answer, 0, indexing="code") == pytest.approx(2.1)  # t = 0: 0.1 * 4 / 4
    # Last step: paper bonus 0, code bonus 0.1 * (4 - 3) / 4 = 0.025.
    late = Judgement("answer", reasoning=0, action=-1)
    assert step_reward(late, 3) == pytest.approx(-1.0)
    assert step_reward(late, 3, indexing="code") == pytest.approx(-0.975)
    # Other λ and B: 0.5 * (2 - 1) / 2 = 0.25.
    assert step_reward(late, 0, budget=2, bonus=0.5) == pytest.approx(-0.75)


def test_step_rewards_vectorised_matches_the_listed_bonuses():
    steps = np.arange(4)
    ones = np.zeros(4, np.int32)
    paper = step_rewards(ones, ones, np.ones(4, bool), steps)
    code = step_rewards(ones, ones, np.ones(4, bool), steps, indexing="code")
    # slate.md §2.9 item 4: {0.075, 0.05, 0.025, 0} (paper) against {0.1, 0.075, 0.05, 0.025}.
    np.testing.assert_allclose(paper, [0.075, 0.05, 0.025, 0.0], rtol=1e-6)
    np.testing.assert_allclose(code, [0.1, 0.075, 0.05, 0.025], rtol=1e-6)
    assert paper.dtype == np.float32
    with pytest.raises(ValueError, match="step_index"):
        step_rewards(ones, ones, np.ones(4, bool), np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="indexing"):
        step_rewards(ones, ones, np.ones(4, bool), steps, indexing="zero")


def test_judgement_arrays_feed_step_rewards():
    judgements = [
        Judgement("search", 1, 1),
        Judgement("answer", -1, 0, action_invalid=True),
    ]
    arrays = judgement_arrays(judgements)
    np.testing.assert_array_equal(arrays["invalid"], [False, True])
    rewards = step_rewards(
        arrays["reasoning"], arrays["action"], arrays["is_answer"], np.array([0, 1])
    )
    np.testing.assert_allclose(rewards, [2.0, -1.0 + 0.05], rtol=1e-6)


def test_judgement_scores_by_dimension():
    assert Judgement("search", 1, -1).scores == {"reasoning": 1, "query": -1}
    assert Judgement("answer", 0, 1).scores == {"reasoning": 0, "answer": 1}
    with pytest.raises(ValueError, match="scores"):
        Judgement("search", 2, 0)


def test_request_validation():
    with pytest.raises(ValueError, match="invalid step"):
        request(kind="invalid")
    with pytest.raises(ValueError, match="forced answer"):
        request(step_index=4)
    with pytest.raises(ValueError, match="golden_answers"):
        request(kind="answer")
    with pytest.raises(TypeError, match="tuples"):
        request(previous_queries="one query")
    # Lists become tuples, so the fingerprint does not depend on the container.
    a = request(previous_queries=["a", "b"])
    assert a.previous_queries == ("a", "b")
    assert a.fingerprint() == request(previous_queries=("a", "b")).fingerprint()
    assert a.fingerprint() != request(previous_queries=("b", "a")).fingerprint()


def test_make_judge_names_the_valid_judges():
    with pytest.raises(KeyError, match="http, local, reference"):
        make_judge({"name": "oracle"})
    with pytest.raises(ValueError, match="name"):
        make_judge({})


def test_step_rewards_mask_skips_missing_steps():
    # [questions=1, steps=2, k=2]: the second step does not exist (the path answered at step 0),
    # and its step index is garbage.
    reasoning = np.array([[[1, 0], [9, 9]]])
    action = np.array([[[1, -1], [9, 9]]])
    is_answer = np.array([[[True, False], [False, False]]])
    step_index = np.array([[[0, 0], [-5, -5]]])
    mask = np.array([[[True, True], [False, False]]])
    rewards = step_rewards(reasoning, action, is_answer, step_index, mask=mask)
    np.testing.assert_allclose(rewards, [[[2.075, -1.0], [0.0, 0.0]]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[-5\]"):
        step_rewards(reasoning, action, is_answer, step_index)
