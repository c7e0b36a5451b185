"""StepSearch rewards against values computed by hand from the equations (search_r1_stepsearch.md
§2.2)."""

import math

import numpy as np
import pytest

from prm.rewards import step_search as S


def test_tfidf_cosines_follow_sklearn_defaults_by_hand():
    # Fit on [d, g1, g2] = ["red fox", "red fox", "blue fox"]: N = 3, df(red) = 2, df(fox) = 3,
    # df(blue) = 1; idf = ln((1 + N)/(1 + df)) + 1; raw counts; L2-normalised rows.
    idf_red, idf_fox, idf_blue = math.log(4 / 3) + 1, 1.0, math.log(2) + 1
    d = np.array([idf_red, idf_fox, 0.0])
    g2 = np.array([0.0, idf_fox, idf_blue])
    expected = d @ g2 / (np.linalg.norm(d) * np.linalg.norm(g2))
    assert expected == pytest.approx(0.311917, abs=1e-6)  # 1 / (1.630376 · 1.966405)
    np.testing.assert_allclose(S.tfidf_cosines("Red fox", ["red FOX", "blue fox"]), [1, expected])


def test_tfidf_ignores_one_character_tokens_and_empty_texts():
    # sklearn's token pattern keeps words of >= 2 word characters: "a b" has no tokens.
    np.testing.assert_array_equal(S.tfidf_cosines("a b", ["a b", "red"]), [0.0, 0.0])
    np.testing.assert_array_equal(S.tfidf_cosines("", []), np.zeros(0))


def test_match_degree_is_the_best_passage_per_gold_after_normalisation():
    golds = ["The red fox.", "blue fox"]
    matches = S.match_degrees(["red, fox!", "green owl"], golds)
    # "red fox" vs normalised golds ["red fox", "blue fox"]: the pair computed by hand above.
    np.testing.assert_allclose(matches, [1.0, 0.311917], atol=1e-6)
    np.testing.assert_array_equal(S.match_degrees([], golds), [0.0, 0.0])


def test_information_gain_counts_only_improvements_over_the_memory():
    matches = np.array([[0.5, 0.0], [0.3, 0.8], [0.9, 0.8]])
    # IG_0 = (0.5 + 0)/2; memory (0.5, 0): IG_1 = (0 + 0.8)/2; memory (0.5, 0.8): IG_2 = 0.4/2.
    np.testing.assert_allclose(S.information_gains(matches), [0.25, 0.4, 0.2])
    np.testing.assert_array_equal(S.information_gains(np.zeros((2, 0))), [0.0, 0.0])


def test_redundancy_counts_repeats_across_and_within_searches():
    penalties = S.redundancy_penalties([["a", "b", "c"], ["b", "d", "d"], []])
    np.testing.assert_allclose(penalties, [0.0, 2 / 3, 0.0])  # "b" seen before, second "d"


KEYS = [["birthplace of Varo Kelin", "birthplace of V. Kelin"], ["country of Tamsby"]]


def test_search_key_reward_by_hand():
    # "birthplace of kelin" vs "birthplace of varo kelin": overlap 3, P = 1, R = 3/4, F1 = 6/7.
    assert S.search_key_reward(["birthplace of Kelin", "country of Tamsby"], KEYS) == (
        pytest.approx((6 / 7 + 1) / 2)
    )
    assert S.search_key_reward([], KEYS) == 0.0
    assert S.search_key_reward(["anything"], []) == 0.0


def test_search_key_reward_later_query_overwrites_its_sub_query():
    # "birthplace" alone: P = 1, R = 1/4, F1 = 0.4 replaces the earlier 1.0 (reference code).
    queries = ["birthplace of Varo Kelin", "birthplace"]
    assert S.search_key_reward(queries, KEYS) == pytest.approx((0.4 + 0.0) / 2)


GOLD = "varo kelin was born in tamsby"
OTHER = "tamsby is a city in lorania"


def test_trajectory_rewards_when_the_answer_ends_the_response():
    response = "<search> birthplace of Varo Kelin </search>\n<information>…</information>\n" * 2
    response += "<answer> Tamsby city </answer>\n"
    reward = S.trajectory_rewards(
        response,
        ["Tamsby"],
        queries=["birthplace of Varo Kelin", "birthplace of Varo Kelin"],
        search_keys=KEYS,
        passages_per_search=[[GOLD, OTHER], [GOLD, OTHER]],
        gold_passages=[GOLD],
    )
    assert reward.format_ok
    assert reward.answer_f1 == 0.6667  # P = 1/2, R = 1: F1 = 2/3, rounded to 4 places
    assert reward.search_keys == pytest.approx(0.5)  # (1 + 0)/2: the country key never hit
    assert reward.global_reward == pytest.approx(0.6667 + 0.618 * 0.5)
    # Search 1 finds the gold passage (cos 1): IG 1, P 0. Search 2 repeats both: IG 0, P 1.
    np.testing.assert_allclose(reward.gains, [1.0, 0.0])
    np.testing.assert_allclose(reward.penalties, [0.0, 1.0])
    np.testing.assert_allclose(reward.step_scores, [1.0, -1.0])
    only_gain = S.StepSearchRewardConfig(redundancy_penalty=False)
    np.testing.assert_allclose(
        S.trajectory_rewards(response, ["Tamsby"], [], KEYS, [[GOLD], [GOLD]], [GOLD], only_gain)
        .step_scores,
        [1.0, 0.0],
    )  # fmt: skip


def test_format_gate_fails_without_a_final_answer():
    for response in ["<answer> Tamsby </answer> trailing", "<search> q </search>", ""]:
        reward = S.trajectory_rewards(response, ["Tamsby"], ["q"], KEYS, [[GOLD]], [GOLD])
        assert not reward.format_ok
        assert reward.global_reward == -1.0 and reward.answer_f1 == 0.0
        np.testing.assert_array_equal(reward.step_scores, [0.0])  # no step rewards
        np.testing.assert_allclose(reward.gains, [1.0])  # still reported


def test_no_gold_passages_give_no_step_rewards():
    reward = S.trajectory_rewards("<answer> x </answer>", ["x"], ["q"], KEYS, [[GOLD, GOLD]], [])
    np.testing.assert_array_equal(reward.step_scores, [0.0])
    assert reward.global_reward == 1.0  # F1 1, no key hit


def test_token_rewards_on_step_ends_and_global_assigned_on_the_last_token():
    step_id = np.array(
        [
            [-1, -1, 0, 0, -1, 1, 1, 1, -1],  # search step 0, answer step 1, padding
            [-1, 0, 0, -1, 1, -1, -1, -1, -1],  # ends on a search step (gate failed)
            [-1, -1, -1, -1, -1, -1, -1, -1, -1],  # nothing sampled
        ]
    )
    step_rewards = np.array([[0.6, 0.0], [0.3, 0.9], [0.0, 0.0]], np.float32)
    out = S.step_search_token_rewards(
        step_rewards, step_id, np.array([0.5, -1.0, 2.0], np.float32), step_id >= 0
    )
    expected = np.zeros(step_id.shape)
    expected[0, 3], expected[0, 7] = 0.6, 0.5
    expected[1, 2], expected[1, 4] = 0.3, -1.0  # the global reward replaces step 1's 0.9
    np.testing.assert_allclose(out, expected)
