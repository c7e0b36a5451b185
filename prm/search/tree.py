"""A step-level search tree over one task, and what self-training reads off it.

Node 0 is the prompt; every other node is one policy step (its sampled tokens, the env's result
and the observation forced after it) below its parent, so a node stands for the prefix
prompt + (step, observation) × depth. Nodes are numbered in creation order, so a parent's id is
below its children's. A node that can still grow holds `row`, its KV-cache row
(`prm.sampling.Row`): its children continue from a copy of it, and the search drops it (`row =
None`) once the node is expanded or finished, which frees the cache.

Value targets (ReST-MCTS*, shared/papers/pav_and_tree_search.md §2.1, released code
`get_all_value_samples_vm`): a done node is correct when its reward reaches `correct_reward`;
m(n), the reasoning distance, is 0 at a correct done node and min over children of m + 1 above
it; r(n) = 0 where m is finite and 1 elsewhere, where m is inherited from the nearest ancestor
with a finite one. `prm.labels.rest_mcts_value_targets` then accumulates v_k along each node's
path. A tree without a correct done node gives no targets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from prm.labels import rest_mcts_value_targets
from prm.sampling import Row


@dataclasses.dataclass
class Node:
    """One step prefix. `value` is V of MCTS* (value model, then rollout mixing and backup)."""

    parent: int
    depth: int
    step_text: str = ""  # the env's kept text of the step ("" at the root)
    step_tokens: tuple[int, ...] = ()  # the tokens the policy sampled for it
    step_logprobs: tuple[float, ...] = ()  # their log π at temperature 1
    observation_tokens: tuple[int, ...] = ()  # forced after the step (empty when done)
    done: bool = False  # the episode ended at this step (an answer, or truncation)
    reward: float = 0.0  # the env's step reward (the outcome when done)
    truncated: bool = False  # done because the context ran out of room
    prior: float = 0.0  # V_θ(prefix) when the node was created
    value: float = 0.0
    visits: int = 0
    expanded: bool = False
    children: list[int] = dataclasses.field(default_factory=list)
    row: Row | None = dataclasses.field(default=None, repr=False)


class SearchTree:
    """The nodes grown for one task; `prompt_tokens` is the root's context."""

    def __init__(self, task: Any, prompt_tokens: list[int], index: int = 0):
        self.task = task
        self.prompt_tokens = list(prompt_tokens)
        self.index = index  # the task's position in the search batch (seeds its keys)
        self.nodes = [Node(parent=-1, depth=0)]
        self.solution: int | None = None  # set when a search stops at an end-gate node

    def add_child(self, parent: int, node: Node) -> int:
        node.parent, node.depth = parent, self.nodes[parent].depth + 1
        self.nodes.append(node)
        self.nodes[parent].children.append(len(self.nodes) - 1)
        return len(self.nodes) - 1

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root's first step to node_id (empty for the root)."""
        path = []
        while node_id > 0:
            path.append(node_id)
            node_id = self.nodes[node_id].parent
        return path[::-1]

    def context(self, node_id: int) -> list[int]:
        """The prefix's tokens: prompt, then each step's tokens and observation."""
        tokens = list(self.prompt_tokens)
        for i in self.path(node_id):
            tokens += [*self.nodes[i].step_tokens, *self.nodes[i].observation_tokens]
        return tokens

    def step_texts(self, node_id: int) -> list[str]:
        return [self.nodes[i].step_text for i in self.path(node_id)]

    def trace(self, node_id: int) -> tuple[list[int], list[float]]:
        """(tokens, loss mask) of the prefix: 1 on sampled step tokens, 0 on prompt/observations."""
        tokens, mask = list(self.prompt_tokens), [0.0] * len(self.prompt_tokens)
        for i in self.path(node_id):
            node = self.nodes[i]
            tokens += [*node.step_tokens, *node.observation_tokens]
            mask += [1.0] * len(node.step_tokens) + [0.0] * len(node.observation_tokens)
        return tokens, mask

    def rows(self) -> list[Row]:
        return [n.row for n in self.nodes if n.row is not None]

    def release(self, node_id: int) -> None:
        self.nodes[node_id].row = None

    def done_nodes(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.done]

    def answer(self) -> int | None:
        """The search's answer: the end-gate node it stopped at, else the done node of highest
        V (the first on ties), else None."""
        if self.solution is not None:
            return self.solution
        done = self.done_nodes()
        return max(done, key=lambda i: self.nodes[i].value) if done else None

    def correct(self, node_id: int, correct_reward: float) -> bool:
        node = self.nodes[node_id]
        return node.done and node.reward >= correct_reward

    def reasoning_distances(self, correct_reward: float) -> np.ndarray:
        """m(n): fewest further steps to a correct done node below n (inf where there is none)."""
        distance = np.full(len(self.nodes), math.inf)
        for i in range(len(self.nodes) - 1, -1, -1):  # children before parents
            if self.correct(i, correct_reward):
                distance[i] = 0.0
            elif self.nodes[i].children:
                distance[i] = min(distance[c] for c in self.nodes[i].children) + 1.0
        return distance

    def value_targets(self, correct_reward: float) -> dict[int, float]:
        """v_k of every non-root node (ReST-MCTS* Eq. 1–2, see the module docstring); {} when no
        done node is correct."""
        distance = self.reasoning_distances(correct_reward)
        if not np.isfinite(distance[0]) or len(self.nodes) == 1:
            return {}
        inherited = distance.copy()
        for i in range(1, len(self.nodes)):  # parents before children
            if not np.isfinite(inherited[i]):
                inherited[i] = inherited[self.nodes[i].parent]
        ids = list(range(1, len(self.nodes)))
        longest = max(self.nodes[i].depth for i in ids)
        errors = np.zeros((len(ids), longest), np.float32)
        distances = np.zeros((len(ids), longest), np.float32)
        mask = np.zeros((len(ids), longest), bool)
        for row, i in enumerate(ids):
            path = self.path(i)
            errors[row, : len(path)] = [0.0 if np.isfinite(distance[p]) else 1.0 for p in path]
            distances[row, : len(path)] = inherited[path]
            mask[row, : len(path)] = True
        values, _ = rest_mcts_value_targets(
            jnp.asarray(errors), jnp.asarray(distances), jnp.asarray(mask)
        )
        last = np.asarray(values)[np.arange(len(ids)), [self.nodes[i].depth - 1 for i in ids]]
        return {i: float(v) for i, v in zip(ids, last)}

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        """The tree as plain data (for golden files and inspection); values rounded."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "solution": self.solution,
            "nodes": [
                {
                    "parent": n.parent,
                    "depth": n.depth,
                    "step_tokens": list(n.step_tokens),
                    "observation_tokens": list(n.observation_tokens),
                    "done": n.done,
                    "reward": round(n.reward, digits),
                    "prior": round(n.prior, digits),
                    "value": round(n.value, digits),
                    "visits": n.visits,
                    "expanded": n.expanded,
                    "children": list(n.children),
                }
                for n in self.nodes
            ],
        }
