"""Self-training data from trees and the policy / value fits."""

import numpy as np
import pytest
from flax import nnx

from prm.models import ScalarHeadModel, Transformer
from prm.search import Node, SearchTree
from prm.search.self_train import (
    collect_training_data,
    fit_policy,
    fit_value,
    tree_from_solutions,
)
from prm.search.value import ScalarValueFn
from tests.helpers.tiny_models import tiny_config

CONFIG = tiny_config("qwen2", num_layers=1)


def test_collect_keeps_verified_traces_and_every_target():
    tree = SearchTree(task=None, prompt_tokens=[7, 8])
    a = tree.add_child(0, Node(0, 0, step_tokens=(1, 2), observation_tokens=(9,)))
    tree.add_child(a, Node(0, 0, step_tokens=(3,), done=True, reward=1.0))
    tree.add_child(a, Node(0, 0, step_tokens=(4,), done=True, reward=0.0))
    other = SearchTree(task=None, prompt_tokens=[5])  # no verified answer: no samples
    other.add_child(0, Node(0, 0, step_tokens=(6,), done=True, reward=0.0))
    traces, samples = collect_training_data([tree, other], correct_reward=1.0)
    assert [(t.tokens, t.loss_mask) for t in traces] == [
        ((7, 8, 1, 2, 9, 3), (0.0, 0.0, 1.0, 1.0, 0.0, 1.0))
    ]
    # m = 1, 0 on the correct path: v = 1/2, 1; the wrong answer: 1/2 - (1/2)/2.
    assert samples == [
        ([7, 8, 1, 2, 9], 0.5),
        ([7, 8, 1, 2, 9, 3], 1.0),
        ([7, 8, 1, 2, 9, 4], 0.25),
    ]


def test_tree_from_solutions_shares_prefixes():
    tree = tree_from_solutions(None, [1], [[[2], [3]], [[2], [4]], [[5]]], [1.0, 0.0, 0.0])
    assert [n.parent for n in tree.nodes] == [-1, 0, 1, 1, 0]
    assert [n.done for n in tree.nodes] == [False, False, True, True, True]
    assert tree.value_targets(1.0) == pytest.approx({1: 0.5, 2: 1.0, 3: 0.25, 4: 0.0})


def test_fit_value_regresses_onto_targets():
    model = ScalarHeadModel(Transformer(CONFIG, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    samples = [([1, 2, 3], 0.25), ([4, 5, 6, 7, 8], 0.75)]
    losses = fit_value(model, samples, steps=100, batch_size=2, learning_rate=5e-3, pad_id=0)
    assert losses[-1] < 0.05 * losses[0]
    predicted = ScalarValueFn(model)([c for c, _ in samples])
    np.testing.assert_allclose(predicted, [0.25, 0.75], atol=0.1)


def test_fit_policy_lowers_the_nll_of_the_trace():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    traces, _ = collect_training_data(
        [tree_from_solutions(None, [1, 2], [[[3, 4, 5]]], [1.0])], 1.0
    )
    losses = fit_policy(model, traces, steps=30, batch_size=2, learning_rate=1e-2, pad_id=0)
    assert losses[-1] < 0.5 * losses[0]


def test_empty_data_raises():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no traces"):
        fit_policy(model, [], steps=1, batch_size=1, learning_rate=1e-3, pad_id=0)
