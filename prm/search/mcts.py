"""MCTS* (ReST-MCTS*, Zhang et al. 2024, arXiv 2406.03816; released code `MCTS/mcts.py`), run in
lockstep over many trees so each phase's device work is one batched call.

One round, for every tree still searching (shared/papers/pav_and_tree_search.md §2.2):

1. Selection: from the root, while the node is expanded, move to the child maximising
       UCT(c) = V_c + C · sqrt(2 ln N_parent / n_c)      (n_c > 0),   V_c + INF   (n_c = 0),
   the first child on ties (the released code breaks ties at random). In evaluation mode a
   selected node that is done with V ≥ end_gate is the answer and its tree stops searching.
2. Expansion: a selected node that is not done samples `branch` next steps (one decode for all
   trees' selected nodes); each child gets V = clip(V_θ(prefix), 0, 1) (one value call).
3. Rollout mixing: the best child c' by UCT (all unvisited: the highest V) rolls forward
   `roll_forward_steps` steps, each sampling `roll_branch` candidates and keeping the one of
   highest V_θ, and v_max is the largest V_θ seen (0 if none, as in the code's `low`; a done
   c' has v_max = V_c', so its V stays);
   then V_c' ← (1 − α) V_c' + α v_max and n_c' ← n_c' + 1.
4. Backup: from the selected node to the root, n ← n + 1 and, at expanded nodes,
   V ← Σ_c n_c V_c / Σ_c n_c.

Deviations, chosen because an `Env` says when an episode ends: a node is an end leaf (never
expanded, the code's `<end>` reflection) exactly when its step ended the episode, and the end
gate only stops the search at such a node (the code stops at any node with V ≥ end_gate). In
"full" sampling mode (self-training) every round runs and the gate stops nothing. Empty and
duplicate steps are kept as children (the code resamples them up to 3 times).

The device side is an `Expander` (`prm.search.TreeEngine` for a language model); tests drive
the same algorithm with a scripted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from prm.search.tree import Node, SearchTree


@dataclasses.dataclass(frozen=True)
class MCTSConfig:
    """Defaults: the released self-training entry point (`generate_both_samples_MATH.py`)."""

    iterations: int = 50  # rounds (iteration_limit)
    branch: int = 3  # children per expansion
    exploration: float = 0.5  # C in UCT
    unvisited_bonus: float = 0.9  # INF: the score bonus of an unvisited child
    roll_forward_steps: int = 1
    roll_branch: int = 1
    alpha: float = 0.5  # rollout mixing weight
    end_gate: float = 0.8
    full: bool = False  # self-training sampling: run every round, never stop at the gate

    def __post_init__(self):
        if self.iterations < 1 or self.branch < 1 or self.roll_branch < 1:
            raise ValueError(f"iterations, branch and roll_branch must be >= 1, got {self}.")
        if self.roll_forward_steps < 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"Need roll_forward_steps >= 0 and alpha in [0, 1], got {self}.")
        if self.exploration < 0:
            raise ValueError(f"exploration must be >= 0, got {self.exploration}.")


class Expander(Protocol):
    """The device work of a search, each method one batched call over nodes of any trees."""

    def expand(self, requests: Sequence[tuple[SearchTree, int]], width: int) -> list[list[Node]]:
        """`width` new children (not yet added) for each (tree, node); priors are not set."""
        ...

    def values(self, items: Sequence[tuple[SearchTree, int]]) -> np.ndarray:
        """V_θ of each (tree, node)'s prefix, clipped to [0, 1]."""
        ...

    def rollout(
        self, items: Sequence[tuple[SearchTree, int]], steps: int, branch: int
    ) -> np.ndarray:
        """v_max of a greedy value-guided rollout from each (tree, node) (step 3 above)."""
        ...


def uct_scores(tree: SearchTree, node_id: int, config: MCTSConfig) -> np.ndarray:
    """UCT(c) of node_id's children, in child order (step 1 of the module docstring)."""
    parent = tree.nodes[node_id]
    scores = []
    for c in parent.children:
        child = tree.nodes[c]
        if child.visits > 0:
            bonus = config.exploration * math.sqrt(2.0 * math.log(parent.visits) / child.visits)
        else:
            bonus = config.unvisited_bonus
        scores.append(child.value + bonus)
    return np.asarray(scores, np.float64)


def best_child(tree: SearchTree, node_id: int, config: MCTSConfig) -> int:
    return tree.nodes[node_id].children[int(np.argmax(uct_scores(tree, node_id, config)))]


def select(tree: SearchTree, config: MCTSConfig) -> int:
    node = 0
    while tree.nodes[node].expanded:
        node = best_child(tree, node, config)
    return node


def backup(tree: SearchTree, node_id: int) -> None:
    while node_id >= 0:
        node = tree.nodes[node_id]
        node.visits += 1
        if node.expanded:
            visits = sum(tree.nodes[c].visits for c in node.children)
            if visits > 0:
                node.value = sum(tree.nodes[c].visits * tree.nodes[c].value for c in node.children)
                node.value /= visits
        node_id = node.parent


def mcts_star(trees: Sequence[SearchTree], expander: Expander, config: MCTSConfig) -> None:
    """Runs `config.iterations` rounds of MCTS* on every tree at once, growing them in place.

    Trees start with their root (its row set for an LM expander). An evaluation-mode tree stops
    at its first end-gate node (`tree.solution`); every tree's answer is `tree.answer()`.
    Rows of nodes that can no longer grow are released as the search goes, and all rows at
    the end.
    """
    for _ in range(config.iterations):
        selected = []
        for tree in trees:
            if tree.solution is not None:
                continue
            node_id = select(tree, config)
            node = tree.nodes[node_id]
            if not config.full and node.done and node.value >= config.end_gate:
                tree.solution = node_id
                for n in tree.nodes:
                    n.row = None
                continue
            selected.append((tree, node_id))
        if not selected:
            break
        growing = [(t, n) for t, n in selected if not t.nodes[n].done]
        if growing:
            new = expander.expand(growing, config.branch)
            children = []
            for (tree, node_id), nodes in zip(growing, new):
                for node in nodes:
                    children.append((tree, tree.add_child(node_id, node)))
                tree.nodes[node_id].expanded = True
                tree.release(node_id)
            for (tree, child), value in zip(children, expander.values(children)):
                tree.nodes[child].prior = tree.nodes[child].value = float(value)
                if tree.nodes[child].done:
                    tree.release(child)
            rolled = [(t, best_child(t, n, config)) for t, n in growing]
            moving = [(t, c) for t, c in rolled if not t.nodes[c].done]
            v_max = {}
            if moving and config.roll_forward_steps > 0:
                found = expander.rollout(moving, config.roll_forward_steps, config.roll_branch)
                v_max = {(id(t), c): float(v) for (t, c), v in zip(moving, found)}
            for tree, child in rolled:
                node = tree.nodes[child]
                best = node.value if node.done else v_max.get((id(tree), child), 0.0)
                node.value = (1.0 - config.alpha) * node.value + config.alpha * best
                node.visits += 1
        for tree, node_id in selected:
            backup(tree, node_id)
    for tree in trees:
        for node in tree.nodes:
            node.row = None
