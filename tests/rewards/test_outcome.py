import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.rewards import outcome

VALID = (
    "<think>who built it?</think>\n<search> eiffel tower architect </search>\n\n"
    "<information>Doc 1(Title: Eiffel Tower) designed by Gustave Eiffel's company</information>"
    "\n\n<think>got it</think>\n<answer> {answer} </answer>"
)


def test_answer_reward_em_search_r1_convention():
    golds = ["Gustave Eiffel", "Eiffel"]
    assert outcome.answer_reward(VALID.format(answer="gustave eiffel."), golds) == 1.0
    assert outcome.answer_reward(VALID.format(answer="Paris"), golds) == 0.0
    assert outcome.answer_reward("<think>no idea</think>", golds) == 0.0  # no answer -> 0


def test_answer_reward_f1_and_cover_em():
    # "red dog" vs "big red dog": P = 1, R = 2/3 -> F1 = 0.8; cover EM needs the whole gold.
    text = "<answer>Red dog</answer>"
    assert outcome.answer_reward(text, "big red dog", metric="f1") == pytest.approx(0.8)
    assert outcome.answer_reward(text, "big red dog", metric="cover_em") == 0.0
    assert outcome.answer_reward(text, "dog", metric="cover_em") == 1.0


def test_answer_reward_prompt_and_response_needs_two_spans():
    prompt = "For example, <answer> Beijing </answer>. Question: capital of China?\n"
    # Without an answer of its own the response gets 0, although the prompt's example matches.
    assert outcome.answer_reward(prompt + "<think>hm</think>", "Beijing", min_answer_spans=2) == 0.0
    assert (
        outcome.answer_reward(prompt + "<answer>beijing</answer>", "Beijing", min_answer_spans=2)
        == 1.0
    )


def test_answer_reward_stepsearch_format_gate():
    golds = "big red dog"
    # Final answer block: F1 0.8. Text after it, or no answer at all: the −1 penalty.
    assert outcome.answer_reward(
        "<answer>red dog</answer>\n", golds, metric="f1", require_final_answer=True
    ) == pytest.approx(0.8)
    assert (
        outcome.answer_reward(
            "<answer>big red dog</answer> more", golds, metric="f1", require_final_answer=True
        )
        == -1.0
    )
    assert outcome.answer_reward("none", golds, require_final_answer=True) == -1.0
    assert (
        outcome.answer_reward("none", golds, require_final_answer=True, format_penalty=-0.5) == -0.5
    )


def test_answer_reward_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        outcome.answer_reward("<answer>x</answer>", "x", metric="bleu")
    with pytest.raises(ValueError, match="golds is empty"):
        outcome.answer_reward("no answer", [])


@pytest.mark.parametrize(
    "response, valid",
    [
        (VALID.format(answer="x"), True),
        ("<think>a</think><answer>x</answer>\n", True),
        ("<answer>x</answer>", False),  # must think first
        ("<think>a</think> stray <answer>x</answer>", False),  # content between blocks
        ("<think>a</think><answer>x</answer> trailing", False),  # content after the answer
        ("<think>a <search>q</search></think><answer>x</answer>", False),  # nested tag
        ("<think>a</think><search>q</search><answer>x</answer>", False),  # no information
        ("<think>a</think><think>b</think><answer>x</answer>", False),  # think after think
        ("<think>a</think>", False),  # never answers
        ("<think>a</think><answer>x</answer></think>", False),  # unbalanced
        ("", False),
    ],
)
def test_search_r1_format_is_valid(response, valid):
    assert outcome.search_r1_format_is_valid(response) is valid


def test_search_r1_format_reward_table():
    golds = ["Gustave Eiffel"]
    right, wrong = VALID.format(answer="Gustave Eiffel"), VALID.format(answer="Paris")
    assert outcome.search_r1_format_reward(right, golds) == 1.0  # correct, valid
    assert outcome.search_r1_format_reward(right + " junk", golds) == pytest.approx(0.8)  # 1 − λ_f
    assert outcome.search_r1_format_reward(wrong, golds) == pytest.approx(0.2)  # λ_f
    assert outcome.search_r1_format_reward(wrong + " junk", golds) == pytest.approx(0.1)
    assert outcome.search_r1_format_reward("no tags", golds) == 0.0  # no answer, invalid
    # The retrieved document contains "Gustave Eiffel": λ_f + λ_r = 0.2 + 0.1 on a wrong answer.
    assert outcome.search_r1_format_reward(wrong, golds, retrieval_score=0.1) == pytest.approx(0.3)
    assert outcome.search_r1_format_reward(
        wrong, ["Napoleon"], retrieval_score=0.1
    ) == pytest.approx(0.2)
    # No answer but a valid format (one span, two required): λ_f.
    assert outcome.search_r1_format_reward(right, golds, min_answer_spans=2) == pytest.approx(0.2)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=60) | st.just(VALID.format(answer="x")))
def test_rewards_never_raise_on_arbitrary_text(text):
    for metric in ("em", "f1", "cover_em"):
        assert 0.0 <= outcome.answer_reward(text, ["x", "y z"], metric=metric) <= 1.0
    assert outcome.answer_reward(text, "x", require_final_answer=True) in (-1.0, 0.0, 1.0)
    assert 0.0 <= outcome.search_r1_format_reward(text, "x", retrieval_score=0.1) <= 1.0


def test_outcome_token_rewards_on_last_valid_token():
    scores = jnp.array([1.0, 0.5, 2.0])
    # Row 1's mask has a hole (an observation counted as valid is still before the end).
    mask = jnp.array([[1, 1, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    expected = [[0, 0, 1.0, 0], [0, 0, 0, 0.5], [0, 0, 0, 0]]
    np.testing.assert_allclose(outcome.outcome_token_rewards(scores, mask), expected)
    np.testing.assert_allclose(jax.jit(outcome.outcome_token_rewards)(scores, mask), expected)
    with pytest.raises(AssertionError):
        outcome.outcome_token_rewards(scores, mask[:2])
