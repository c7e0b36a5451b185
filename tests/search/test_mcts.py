"""MCTS* on a scripted expander: every visit count and value below is computed by hand."""

import math

import numpy as np
import pytest

from prm.search import MCTSConfig, Node, SearchTree, mcts_star, uct_scores

# Priors of the children each node gets when expanded, and which of them end the episode.
PRIORS = {0: [0.6, 0.3], 2: [0.2, 0.5], 1: [0.9, 0.4]}
DONE = {(1, 0)}  # node 1's first child (node 5) is a done, correct answer
V_MAX = {1: 0.8, 4: 0.1}  # v_max of the rollout from these nodes


class ScriptedExpander:
    def __init__(self):
        self.calls = []

    def expand(self, requests, width):
        self.calls.append(("expand", [n for _, n in requests], width))
        return [
            [
                Node(parent=n, depth=0, done=(n, j) in DONE, reward=float((n, j) in DONE))
                for j in range(width)
            ]
            for _, n in requests
        ]

    def values(self, items):
        self.calls.append(("values", [n for _, n in items]))
        out = []
        for tree, n in items:
            parent = tree.nodes[n].parent
            out.append(PRIORS[parent][tree.nodes[parent].children.index(n)])
        return np.array(out)

    def rollout(self, items, steps, branch):
        self.calls.append(("rollout", [n for _, n in items], steps, branch))
        return np.array([V_MAX[n] for _, n in items])


CONFIG = MCTSConfig(
    iterations=3, branch=2, exploration=0.5, unvisited_bonus=0.9, alpha=0.5, end_gate=0.8
)


def run(iterations, full):
    tree = SearchTree(task=None, prompt_tokens=[1])
    expander = ScriptedExpander()
    config = MCTSConfig(**{**CONFIG.__dict__, "iterations": iterations, "full": full})
    mcts_star([tree], expander, config)
    return tree, expander


def values(tree):
    return [round(n.value, 6) for n in tree.nodes]


def test_three_rounds_by_hand():
    tree, expander = run(3, full=False)
    # Round 1: expand root -> 1 (0.6), 2 (0.3); roll out 1 (0.6 + 0.9 > 0.3 + 0.9): V1 = 0.7.
    # Round 2: UCT(1) = 0.7 + 0.5 sqrt(2 ln 1) = 0.7 < UCT(2) = 0.3 + 0.9: expand 2 -> 3, 4;
    #   roll out 4: V4 = (0.5 + 0.1) / 2 = 0.3; backup V2 = 0.3, V0 = (0.7 + 0.3) / 2.
    # Round 3: UCT(1) = 0.7 + 0.5 sqrt(2 ln 2) > UCT(2) = 0.3 + 0.5 sqrt(2 ln 2): expand 1 -> 5
    #   (done, 0.9), 6 (0.4); 5 is done so its V stays 0.9; V1 = 0.9, V0 = (2·0.9 + 0.3) / 3.
    assert [n.parent for n in tree.nodes] == [-1, 0, 0, 2, 2, 1, 1]
    assert values(tree) == [0.7, 0.9, 0.3, 0.2, 0.3, 0.9, 0.4]
    assert [n.visits for n in tree.nodes] == [3, 2, 1, 0, 1, 1, 0]
    assert [n.prior for n in tree.nodes] == [0.0, 0.6, 0.3, 0.2, 0.5, 0.9, 0.4]
    assert expander.calls == [
        ("expand", [0], 2), ("values", [1, 2]), ("rollout", [1], 1, 1),
        ("expand", [2], 2), ("values", [3, 4]), ("rollout", [4], 1, 1),
        ("expand", [1], 2), ("values", [5, 6]),
    ]  # fmt: skip
    assert tree.solution is None and tree.answer() == 5


def test_uct_scores_by_hand():
    tree, _ = run(3, full=False)
    # Root: N = 3; child 1 (V 0.9, n 2), child 2 (V 0.3, n 1).
    np.testing.assert_allclose(
        uct_scores(tree, 0, CONFIG),
        [0.9 + 0.5 * math.sqrt(2 * math.log(3) / 2), 0.3 + 0.5 * math.sqrt(2 * math.log(3))],
    )


def test_end_gate_stops_evaluation_at_a_done_node():
    # Round 4 selects 1 (1.424 > 1.041), then 5 (0.9 + 0.5 sqrt(2 ln 2) > 0.4 + 0.9): done, V >= 0.8.
    tree, expander = run(10, full=False)
    assert tree.solution == 5 and tree.answer() == 5
    assert len(tree.nodes) == 7 and len(expander.calls) == 8


def test_full_mode_keeps_searching_and_backs_up_end_leaves():
    tree, _ = run(4, full=True)
    # Round 4 selects the end leaf 5: no expansion; backup n5 = 2, V1 = 2·0.9 / 2,
    # V0 = (3·0.9 + 0.3) / 4.
    assert tree.solution is None
    assert [n.visits for n in tree.nodes] == [4, 3, 1, 0, 1, 2, 0]
    assert values(tree) == [0.75, 0.9, 0.3, 0.2, 0.3, 0.9, 0.4]


def test_bad_config_raises():
    with pytest.raises(ValueError, match="iterations"):
        MCTSConfig(branch=0)
    with pytest.raises(ValueError, match="alpha"):
        MCTSConfig(alpha=1.5)
