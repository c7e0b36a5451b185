"""Chain arithmetic mod 10: generator, parser, true step correctness, verifier, env, tokenizer."""

import numpy as np
import pytest

from prm.envs import chain_arithmetic as ca
from prm.envs.chain_arithmetic import ChainArithmeticEnv, ChainConfig, ChainProblem

# 3 +4 -> 7, *7 -> 49 mod 10 = 9, -2 -> 7 (worked by hand).
PROBLEM = ChainProblem(3, (("+", 4), ("*", 7), ("-", 2)))
GOLD = ["1: 3+4=7\n", "2: 7*7=9\n", "3: 9-2=7\n", "Answer: 7\n"]


def test_problem_text_and_gold_solution_by_hand():
    assert PROBLEM.values == (3, 7, 9, 7)
    assert PROBLEM.answer == 7
    assert PROBLEM.prompt == "3 | 1:+4 2:*7 3:-2\n"
    assert list(PROBLEM.gold_steps()) == GOLD
    assert ca.apply_op(3, "-", 8) == 5  # -5 mod 10
    assert ca.apply_op(6, "*", 5) == 0


@pytest.mark.parametrize(
    "start,ops", [(10, (("+", 1),)), (1, ()), (1, (("/", 2),)), (1, (("+", 12),))]
)
def test_bad_problems_are_rejected(start, ops):
    with pytest.raises(ValueError):
        ChainProblem(start, ops)


def test_generator_is_seeded_distinct_and_splits_are_disjoint():
    config = ChainConfig(min_ops=2, max_ops=4)
    train = ca.generate_problems(300, seed=1, split="train", config=config)
    assert train == ca.generate_problems(300, seed=1, split="train", config=config)
    assert train != ca.generate_problems(300, seed=2, split="train", config=config)
    assert len(set(train)) == 300
    assert all(2 <= p.num_ops <= 4 for p in train)
    test = ca.generate_problems(100, seed=1, split="test", config=config)
    dev = ca.generate_problems(100, seed=1, split="dev", config=config)
    assert not set(train) & set(test) and not set(train) & set(dev) and not set(dev) & set(test)
    assert {ca.split_of(p) for p in test} == {"test"}
    with pytest.raises(ValueError, match="split"):
        ca.generate_problems(1, split="validation")
    with pytest.raises(ValueError, match="distinct"):
        ca.generate_problems(100, split="test", config=ChainConfig(min_ops=1, max_ops=1))


def test_parser():
    assert ca.parse_chain_step("2: 7*7=9\n") == ca.ChainStep("op", 2, 7, "*", 7, 9)
    assert ca.parse_chain_step(" 2 :7 * 7 = 9") == ca.ChainStep("op", 2, 7, "*", 7, 9)
    assert ca.parse_chain_step("Answer: 4\n") == ca.ChainStep("answer", result=4)
    for bad in ("2: 7*7=19\n", "Answer: \n", "hello", "2: 7/7=1", ""):
        assert ca.parse_chain_step(bad).kind == "invalid"
    assert ca.split_steps("".join(GOLD)) == GOLD
    assert ca.split_steps("1: 3+4=7\nAnswer: 7") == ["1: 3+4=7\n", "Answer: 7"]


def test_true_step_correctness_is_prefix_correctness():
    assert ca.step_correctness(PROBLEM, GOLD) == [True] * 4
    assert ca.first_error(PROBLEM, GOLD) is None
    # Step 2 wrong (7*7=8); step 3 is right arithmetic from 8 but still incorrect.
    wrong = ["1: 3+4=7\n", "2: 7*7=8\n", "3: 8-2=6\n", "Answer: 6\n"]
    assert ca.step_correctness(PROBLEM, wrong) == [True, False, False, False]
    assert ca.first_error(PROBLEM, wrong) == 2
    # Wrong line number, and an answer before all operations are done.
    assert ca.step_correctness(PROBLEM, ["2: 3+4=7\n"]) == [False]
    assert ca.step_correctness(PROBLEM, ["1: 3+4=7\n", "Answer: 7\n"]) == [True, False]
    # An extra operation line after the last one is an error.
    assert ca.step_correctness(PROBLEM, [*GOLD[:3], "4: 7+0=7\n"]) == [True] * 3 + [False]


def test_a_wrong_step_can_reach_the_right_answer():
    # 1 +2 -> 3, *5 -> 5. Writing 1+2=5 (wrong) then 5*5=5 gives the gold answer 5.
    problem = ChainProblem(1, (("+", 2), ("*", 5)))
    steps = ["1: 1+2=5\n", "2: 5*5=5\n", "Answer: 5\n"]
    assert problem.answer == 5
    assert ca.verify(problem, "".join(steps))
    assert ca.step_correctness(problem, steps) == [False, False, False]


def test_verifier():
    assert ca.verify(PROBLEM, "".join(GOLD))
    assert ca.verify(PROBLEM, "junk\nAnswer: 7\n")  # the outcome check reads only the answer
    assert not ca.verify(PROBLEM, "".join(GOLD[:3]) + "Answer: 6\n")
    assert not ca.verify(PROBLEM, "".join(GOLD[:3]))
    assert ca.final_answer("Answer: 3\nAnswer: 4\n") == 3


def test_noisy_expert_error_rate_and_propagation():
    rng = np.random.default_rng(0)
    assert ca.noisy_expert_steps(PROBLEM, rng, 0.0) == GOLD
    problems = ca.generate_problems(400, seed=0, config=ChainConfig(3, 3))
    wrong_first = 0
    for problem in problems:
        steps = ca.noisy_expert_steps(problem, rng, 0.3)
        parsed = [ca.parse_chain_step(s) for s in steps]
        assert [p.kind for p in parsed] == ["op"] * 3 + ["answer"]
        # Each line computes right from the value the previous line wrote, unless it is wrong.
        assert parsed[1].lhs == parsed[0].result and parsed[-1].result == parsed[2].result
        wrong_first += parsed[0].result != problem.values[1]
    assert 0.22 < wrong_first / len(problems) < 0.38  # 0.3 ± 3.4 standard errors
    with pytest.raises(ValueError, match="error_rate"):
        ca.noisy_expert_steps(PROBLEM, rng, 1.5)


def test_env_plays_episodes_to_their_end():
    env = ChainArithmeticEnv(max_extra_steps=2)
    problem2 = ChainProblem(1, (("+", 2),))
    assert env.reset([PROBLEM, problem2, problem2]) == [PROBLEM.prompt, *[problem2.prompt] * 2]
    assert env.stop_strings == ("\n",)
    first = env.step(["1: 3+4=7\nextra text", "1: 1+2=3\n", "oops\n"])
    assert first[0].step_text == "1: 3+4=7\n"  # cut after the stop string
    assert not first[0].done and first[0].observation == "" and first[0].action.kind == "step"
    assert first[0].info["prefix_correct"]
    assert first[2].done and first[2].action.kind == "invalid" and first[2].reward == 0.0
    second = env.step(["2: 7*7=9\n", "Answer: 3\n", None])
    assert second[1].done and second[1].action.kind == "answer" and second[1].reward == 1.0
    assert second[2] is None
    with pytest.raises(ValueError, match="over"):
        env.step([None, "Answer: 3\n", None])
    env.step(["3: 9-2=7\n", None, None])
    last = env.step(["Answer: 7\n", None, None])
    assert last[0].done and last[0].reward == 1.0
    assert env.outcomes() == [
        {"reward": 1.0, "process_correct": 1.0, "num_steps": 4.0},
        {"reward": 1.0, "process_correct": 1.0, "num_steps": 2.0},
        {"reward": 0.0, "process_correct": 0.0, "num_steps": 1.0},
    ]


def test_env_ends_an_episode_that_never_answers():
    env = ChainArithmeticEnv(max_extra_steps=1)
    problem = ChainProblem(1, (("+", 2),))
    env.reset([problem])
    # 1 operation + 1 extra step: two lines in all, the second had to be the answer.
    assert not env.step(["1: 1+2=3\n"])[0].done
    result = env.step(["2: 3+0=3\n"])[0]
    assert result.done and result.action.kind == "step" and result.reward == 0.0
    assert env.outcomes()[0]["reward"] == 0.0


def test_chain_step_result_labels_the_step_not_just_the_outcome():
    # A collision: the answer is right but the process is not.
    problem = ChainProblem(1, (("+", 2), ("*", 5)))
    result = ca.chain_step_result(problem, ["1: 1+2=5\n", "2: 5*5=5\n"], "Answer: 5\n")
    assert result.reward == 1.0 and not result.info["prefix_correct"]


def test_tokenizer_is_character_level_and_round_trips(tmp_path):
    import transformers

    tokenizer = ca.build_chain_tokenizer(tmp_path)
    text = PROBLEM.prompt + "".join(GOLD)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("\n", add_special_tokens=False) == [ids[len(PROBLEM.prompt) - 1]]
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 0
    assert len(tokenizer) == 26 <= ca.CHAIN_VOCAB_SIZE
    assert tokenizer.encode("?", add_special_tokens=False) == [1]  # <unk>
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode(text, add_special_tokens=False) == ids
