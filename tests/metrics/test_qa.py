import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.metrics import qa

# Text that exercises the normaliser: articles, ASCII and Unicode punctuation, odd whitespace.
_PIECES = list("aAnNtThHeEx yz.,!-'–’ \t\n<>/") + ["the", "an", "a ", "<answer>", "</answer>"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join) | st.text(max_size=40)


@pytest.mark.parametrize(
    "text, expected",
    [
        # lower -> drop ASCII punctuation -> drop whole-word articles -> squash whitespace.
        ("The  Quick, Brown-Fox!", "quick brownfox"),
        ("An apple a day", "apple day"),
        ("theatre", "theatre"),  # "the" only as a whole word
        ("a.b", "ab"),  # punctuation goes first, so "a" is no longer a word
        ("Rock–Paper “x”", "rock–paper “x”"),  # Unicode punctuation is kept
        ("  \tThe\n", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert qa.normalize_answer(text) == expected


def test_exact_match_over_gold_aliases():
    assert qa.exact_match("The Eiffel Tower", ["eiffel tower", "Paris"]) == 1.0
    assert qa.exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert qa.exact_match("paris!", ("Tower", "Paris")) == 1.0


def test_f1_score_by_hand():
    # "big red dog" vs "red dog house": overlap 2, P = R = 2/3, F1 = 2/3 (max over golds).
    assert qa.f1_score("the big red dog", ["cat", "red dog house"]) == pytest.approx(2 / 3)
    # Multiset overlap: "x x" vs "x x y": overlap 2, P = 1, R = 2/3, F1 = 2·(2/3)/(5/3) = 0.8.
    assert qa.f1_score("x x", "x x y") == pytest.approx(0.8)
    # "x x x" vs "x y": overlap 1, P = 1/3, R = 1/2, F1 = (1/3)/(5/6) = 0.4.
    assert qa.f1_score("x x x", "x y") == pytest.approx(0.4)
    assert qa.f1_score("dog", "cat") == 0.0


def test_f1_score_empty_after_normalisation_papers_rule():
    # The default, SQuAD v1 as the papers use it: no overlap is F1 0, even with both sides empty.
    assert qa.exact_match("The", "a") == 1.0
    assert qa.f1_score("The", "a") == 0.0
    assert qa.f1_score("", "") == 0.0
    assert qa.f1_score("", "Paris") == 0.0
    assert qa.f1_score("Paris", "!!") == 0.0
    # An empty alias does not lower the max over golds.
    assert qa.f1_score("Paris", ["The", "paris"]) == 1.0


def test_f1_score_empty_after_normalisation_squad_v2_rule():
    # SQuAD v2's no-answer rule: both empty 1, one empty 0; otherwise the same F1.
    assert qa.f1_score("The", "a", empty_rule="squad_v2") == 1.0
    assert qa.f1_score("", "", empty_rule="squad_v2") == 1.0
    assert qa.f1_score("", "Paris", empty_rule="squad_v2") == 0.0
    assert qa.f1_score("Paris", "!!", empty_rule="squad_v2") == 0.0
    assert qa.f1_score("x x", "x x y", empty_rule="squad_v2") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="empty_rule must be one of"):
        qa.f1_score("x", "x", empty_rule="squad")


def test_f1_score_special_answers_rule():
    # Plain F1 of "yes" vs "yes indeed": P = 1, R = 1/2 -> 2/3; HotpotQA's rule makes it 0.
    assert qa.f1_score("yes", "yes indeed") == pytest.approx(2 / 3)
    assert qa.f1_score("yes", "yes indeed", special_answers=True) == 0.0
    assert qa.f1_score("No.", "no", special_answers=True) == 1.0
    assert qa.f1_score("red dog", "big red dog", special_answers=True) == pytest.approx(0.8)


def test_cover_exact_match():
    assert qa.cover_exact_match("It is the Eiffel Tower, in Paris", "eiffel tower") == 1.0
    assert qa.cover_exact_match("Tower", "eiffel tower") == 0.0
    # A gold that normalises to nothing matches nothing.
    assert qa.cover_exact_match("anything", ["The"]) == 0.0


@pytest.mark.parametrize("score", [qa.exact_match, qa.f1_score, qa.cover_exact_match])
def test_empty_gold_list_raises(score):
    with pytest.raises(ValueError, match="golds is empty"):
        score("Paris", [])


@pytest.mark.parametrize(
    "text, min_spans, expected",
    [
        ("<answer> Paris </answer>", 1, "Paris"),
        ("<answer>a</answer> then <answer>\n b \n</answer> end", 1, "b"),
        ("no answer here", 1, None),
        ("<answer>a</answer> <answer>b", 1, "a"),  # an unclosed span is not complete
        ("<answer>a<answer>b</answer>", 1, "a<answer>b"),  # Search-R1's regex semantics
        ("<answer></answer>", 1, ""),
        ("<answer>only</answer>", 2, None),
    ],
)
def test_extract_answer(text, min_spans, expected):
    assert qa.extract_answer(text, min_spans=min_spans) == expected


def test_extract_answer_search_r1_prompt_convention():
    prompt = "Answer inside tags, for example, <answer> Beijing </answer>. Question: q?\n"
    # Scoring prompt + response: the prompt's example is the first span, so one span = none.
    assert qa.extract_answer(prompt + "<think>hm</think>", min_spans=2) is None
    assert qa.extract_answer(prompt + "<answer> Paris </answer>", min_spans=2) == "Paris"
    # The pitfall the convention avoids: the example answer read as the model's.
    assert qa.extract_answer(prompt + "<think>hm</think>") == "Beijing"
    with pytest.raises(ValueError, match="min_spans"):
        qa.extract_answer("x", min_spans=0)


def test_answer_is_final():
    assert qa.answer_is_final("<think>t</think><answer>x</answer>\n ")
    assert not qa.answer_is_final("<answer>x</answer> and more")
    assert not qa.answer_is_final("no answer")
    assert qa.answer_is_final("<answer>x</answer> junk <answer>y</answer>")


@settings(max_examples=200, deadline=None)
@given(text=_TEXT)
def test_normalize_answer_is_idempotent(text):
    normalized = qa.normalize_answer(text)
    assert qa.normalize_answer(normalized) == normalized


@settings(max_examples=200, deadline=None)
@given(prediction=_TEXT, golds=st.lists(_TEXT, min_size=1, max_size=3))
def test_f1_rules_bounds_and_symmetry(prediction, golds):
    em = qa.exact_match(prediction, golds)
    f1 = qa.f1_score(prediction, golds)
    f1_v2 = qa.f1_score(prediction, golds, empty_rule="squad_v2")
    assert em in (0.0, 1.0)
    assert 0.0 <= f1 <= f1_v2 <= 1.0
    assert em <= f1_v2  # the v2 rule keeps EM <= F1; the papers' rule only off empty answers
    if qa.normalize_answer(prediction):
        assert em <= f1
        assert qa.f1_score(prediction, prediction) == 1.0
    else:
        assert f1 == 0.0 and f1_v2 == em
    for rule in ("paper", "squad_v2"):
        assert qa.f1_score(prediction, golds[0], empty_rule=rule) == pytest.approx(
            qa.f1_score(golds[0], prediction, empty_rule=rule)
        )


@settings(max_examples=200, deadline=None)
@given(text=_TEXT)
def test_extract_answer_never_raises_and_returns_a_substring(text):
    answer = qa.extract_answer(text)
    assert answer is None or answer in text
    assert isinstance(qa.answer_is_final(text), bool)


# Search-R1's `extract_solution` / StepSearch's `answer_last_check`, the references for the
# linear-time span scan.
_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def reference_extract_answer(text, min_spans=1):
    spans = _ANSWER_SPAN.findall(text)
    return spans[-1].strip() if len(spans) >= min_spans else None


def reference_answer_is_final(text):
    spans = list(_ANSWER_SPAN.finditer(text))
    return bool(spans) and not text[spans[-1].end() :].strip()


_SPAN_PIECES = ["<answer>", "</answer>", "<answer", "answer>", "</", "<", ">", "a", " ", "\n"]


@settings(max_examples=500, deadline=None)
@given(text=st.lists(st.sampled_from(_SPAN_PIECES), max_size=30).map("".join) | _TEXT)
def test_answer_spans_equal_search_r1s_regex(text):
    for min_spans in (1, 2):
        assert qa.extract_answer(text, min_spans) == reference_extract_answer(text, min_spans)
    assert qa.answer_is_final(text) == reference_answer_is_final(text)


@pytest.mark.parametrize(
    ("text", "answer", "final"),
    [
        ("<answer>" * 8192, None, False),  # 64 KB: the regex takes seconds on this one
        ("<answer>" * 8192 + "</answer>", "<answer>" * 8191, True),
        ("<answer>x</answer>" * 3641 + "<answer>", "x", False),
    ],
)
def test_answer_spans_are_linear_on_long_texts(text, answer, final):
    # A sanity bound on CPU time (a loaded machine stretches wall time), not a benchmark.
    started = time.process_time()
    assert (qa.extract_answer(text), qa.answer_is_final(text)) == (answer, final)
    assert time.process_time() - started < 0.5
