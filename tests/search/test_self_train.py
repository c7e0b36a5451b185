"""Self-training data from trees and the policy / value fits."""

import numpy as np
import pytest
from flax import nnx

from prm.models import ScalarHeadModel, Transformer
from prm.search import Node, SearchTree
from prm.search.self_train import (
    balanced_indices,
    collect_training_data,
    fit_policy,
    fit_value,
    tree_from_solutions,
    value_loss,
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


def test_cross_entropy_value_loss_is_soft_binary_cross_entropy():
    model = ScalarHeadModel(Transformer(CONFIG, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    batch = {
        "tokens": np.array([[1, 2, 3, 0], [4, 5, 6, 7]], np.int32),
        "input_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool),
        "targets": np.array([0.25, 1.0], np.float32),
    }
    scores = np.asarray(model(batch["tokens"], batch["input_mask"]), np.float64)
    s = np.array([scores[0, 2], scores[1, 3]])  # each row's last real token
    p = 1.0 / (1.0 + np.exp(-s))
    v = batch["targets"].astype(np.float64)
    expected = np.mean(-(v * np.log(p) + (1 - v) * np.log(1 - p)))
    np.testing.assert_allclose(value_loss(model, batch, "cross_entropy"), expected, rtol=1e-5)
    np.testing.assert_allclose(value_loss(model, batch), np.mean((s - v) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="squared"):
        value_loss(model, batch, "hinge")


def test_fit_value_by_cross_entropy_predicts_the_soft_targets_through_a_sigmoid():
    model = ScalarHeadModel(Transformer(CONFIG, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    samples = [([1, 2, 3], 0.25), ([4, 5, 6, 7, 8], 0.75)]
    fit_value(model, samples, steps=150, batch_size=2, learning_rate=5e-3, pad_id=0,
              objective="cross_entropy", balanced=True)  # fmt: skip
    predicted = ScalarValueFn(model, sigmoid=True)([c for c, _ in samples])
    # The minimiser of soft cross-entropy is σ(s) = v.
    np.testing.assert_allclose(predicted, [0.25, 0.75], atol=0.1)


def test_balanced_batches_take_half_from_each_bucket():
    targets = np.array([0.0] * 97 + [0.5, 0.9, 1.0])  # 3 of 100 at or above one half
    indices = balanced_indices(targets, 64, np.random.default_rng(0))
    assert indices.shape == (64,) and np.sum(targets[indices] >= 0.5) == 32
    # One bucket empty: uniform draws over all samples.
    indices = balanced_indices(np.zeros(10), 8, np.random.default_rng(0))
    assert indices.shape == (8,) and indices.max() < 10


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
