"""Verifier samples are the policy's contexts with their targets; verifier values clip Q^π and
derive Q^{BoK} by hand."""

import numpy as np
import pytest

from prm.envs import chain_arithmetic as ca
from prm.rollouts.step_labels import Solution
from prm.search.progress_verifier import verifier_samples, verifier_values

PROBLEM = ca.ChainProblem(3, (("+", 4), ("*", 7)))  # 3+4=7, 7*7=9


@pytest.fixture(scope="module")
def tokenizer():
    return ca.build_chain_tokenizer()


def test_verifier_samples_are_every_prefix_with_its_target(tokenizer):
    solution = Solution(PROBLEM, PROBLEM.gold_steps(), 1.0)
    samples = verifier_samples(
        ca.ChainArithmeticEnv(), tokenizer, [solution], [np.array([0.2, 0.4, 0.8, 1.0])]
    )
    texts = [tokenizer.decode(tokens) for tokens, _ in samples]
    assert texts == [
        "3 | 1:+4 2:*7\n",
        "3 | 1:+4 2:*7\n1: 3+4=7\n",
        "3 | 1:+4 2:*7\n1: 3+4=7\n2: 7*7=9\n",
        "3 | 1:+4 2:*7\n1: 3+4=7\n2: 7*7=9\nAnswer: 9\n",  # the whole solution, answer included
    ]
    assert [t for _, t in samples] == pytest.approx([0.2, 0.4, 0.8, 1.0])


def test_verifier_samples_need_one_value_per_prefix(tokenizer):
    solution = Solution(PROBLEM, PROBLEM.gold_steps(), 1.0)
    with pytest.raises(ValueError, match="needs 4 prefix values"):
        verifier_samples(ca.ChainArithmeticEnv(), tokenizer, [solution], [np.zeros(3)])


def test_verifier_values_clip_and_take_best_of_k():
    values = verifier_values(lambda contexts: np.array([-0.2, 0.5, 1.3]), best_of=2)
    policy, prover = values([[1], [2], [3]])
    np.testing.assert_allclose(policy, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(prover, [0.0, 0.75, 1.0])  # 1 − (1 − q)²
