"""Tree value targets (ReST-MCTS*) against hand computation, and tree bookkeeping."""

import numpy as np
import pytest

from prm.search import Node, SearchTree


def build(edges, done=(), correct=()):
    """A tree from (parent) per new node; done/correct node ids."""
    tree = SearchTree(task=None, prompt_tokens=[7])
    for i, parent in enumerate(edges, start=1):
        tree.add_child(
            parent,
            Node(parent=0, depth=0, step_tokens=(i,), done=i in done, reward=float(i in correct)),
        )
    return tree


def test_value_targets_by_hand():
    # Correct path 1-2-3-4 (4 done and correct); 5: wrong child of the root; 6: wrong child of
    # 2, with a child 7; 8: a done wrong answer below 3.
    tree = build([0, 1, 2, 3, 0, 2, 6, 3], done={4, 7, 8}, correct={4})
    targets = tree.value_targets(correct_reward=1.0)
    # On the path w = (1 - v)/(m + 1) with m = 3, 2, 1, 0: v = 1/4, 1/2, 3/4, 1.
    expected = {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
    # 5 inherits the root's m = 4: max(0, 0 - 1/5) = 0.
    expected[5] = 0.0
    # 6 inherits 2's m = 2: 0.5 - 0.5/3 = 1/3; 7 inherits it too: 1/3 - (2/3)/3 = 1/9.
    expected[6], expected[7] = 1 / 3, 1 / 9
    # 8 inherits 3's m = 1: 0.75 - 0.25/2.
    expected[8] = 0.625
    assert targets.keys() == expected.keys()
    for node, value in expected.items():
        assert targets[node] == pytest.approx(value, abs=1e-6), node


def test_no_correct_answer_gives_no_targets():
    tree = build([0, 1, 0], done={2, 3})
    assert tree.value_targets(1.0) == {}
    assert np.all(np.isinf(tree.reasoning_distances(1.0)))


def test_random_trees_keep_values_in_unit_interval():
    rng = np.random.default_rng(0)
    for _ in range(20):
        edges = [int(rng.integers(0, i)) for i in range(1, 30)]
        leaves = {i for i in range(1, 30) if i not in edges}
        correct = {i for i in leaves if rng.random() < 0.3}
        targets = build(edges, done=leaves, correct=correct).value_targets(1.0)
        assert all(0.0 <= v <= 1.0 for v in targets.values())
        assert all(targets[i] == pytest.approx(1.0) for i in correct)


def test_contexts_traces_and_answer():
    tree = build([0, 1, 0], done={2, 3}, correct={2})
    tree.nodes[1].observation_tokens = (9,)
    tree.nodes[2].value, tree.nodes[3].value = 0.4, 0.6
    assert tree.path(2) == [1, 2] and tree.path(0) == []
    assert tree.context(2) == [7, 1, 9, 2]
    assert tree.trace(2) == ([7, 1, 9, 2], [0.0, 1.0, 0.0, 1.0])
    assert tree.answer() == 3  # the done node of highest V
    assert tree.to_dict()["nodes"][1]["children"] == [2]
