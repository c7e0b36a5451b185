"""Step-level beam search ranked by the effective reward Q^π + α·A^μ (PAV §2, §4).

PAV (Setlur et al. 2024, arXiv 2410.08146; shared/papers/pav_and_tree_search.md §1.7):

1. the beam starts with the problem alone;
2. each of the (at most) B live beam states samples C next steps from the policy π;
3. every new state is scored by Q^π(child) + α·(Q^μ(child) − Q^μ(parent)) (Eq. 5 with the
   advantage of Eq. 2; `prm.rewards.progress`) and the best B unfinished ones form the next beam;
4. the answer is the finished candidate of highest Q^π (the Q-model reused as an outcome model).

α = 0 is beam search with Q^π alone (Snell et al. 2024), the baseline PAV improves on: it
compares steps below different parents by their parents' promise as much as by their own.
Finished candidates (an answer, or a cut episode) all join the answer pool and never take a
beam slot, so every depth samples B·C steps while any state is live and Q-only and PAV search
spend the same samples on problems of the same length.

Trees grow in place through an `Expander` (`prm.search.TreeEngine`: one batched decode per depth
for all trees, each child continuing its parent's KV cache); values come from `values_fn`, one
call per depth for all new states, e.g. a progress verifier (`ScalarValueFn`) and its Best-of-K
transform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from prm.rewards.progress import effective_rewards, prover_advantages
from prm.search.mcts import Expander
from prm.search.tree import SearchTree

ValuesFn = Callable[[Sequence[Sequence[int]]], tuple[np.ndarray, np.ndarray]]
"""(Q^π, Q^μ) of each token context, two float arrays [len(contexts)] in [0, 1]."""


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    beam_size: int = 4  # B: live states kept per depth
    width: int = 3  # C: next steps sampled per live state (PAV: 3)
    alpha: float = 0.5  # weight of A^μ; PAV tuned 0.5 (Gemma 2B, 9B) and 0.2 (27B); 0 = Q only
    max_depth: int = 16  # depth cap; states still live there are dropped unfinished

    def __post_init__(self):
        if self.beam_size < 1 or self.width < 1 or self.max_depth < 1:
            raise ValueError(f"beam_size, width and max_depth must be >= 1, got {self}.")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0 (0: rank by Q^π alone), got {self.alpha}.")


@dataclasses.dataclass
class BeamResult:
    """One tree's search: its answer node (None if nothing finished) and, per node id, the
    values and score it was given (the root has values, no score)."""

    answer: int | None
    policy_values: dict[int, float]
    prover_values: dict[int, float]
    scores: dict[int, float]
    finished: list[int]


def step_scores(
    policy_values: np.ndarray,
    prover_values: np.ndarray,
    parent_prover_values: np.ndarray,
    alpha: float,
) -> np.ndarray:
    """Q^π(child) + α·(Q^μ(child) − Q^μ(parent)) of each candidate, float64[n] (PAV Eq. 2, 5)."""
    prefix_values = jnp.stack([parent_prover_values, prover_values], axis=-1)  # [n, 2]
    step_mask = jnp.ones((len(policy_values), 1), bool)  # one step per candidate
    advantages = prover_advantages(prefix_values, step_mask)
    scores = effective_rewards(jnp.asarray(policy_values)[:, None], advantages, step_mask, alpha)
    return np.asarray(scores[:, 0], np.float64)


def beam_search(
    trees: Sequence[SearchTree], expander: Expander, values_fn: ValuesFn, config: BeamConfig
) -> list[BeamResult]:
    """Beam search on every tree at once (module docstring); grows the trees in place.

    Trees start with their root (its cache row set for an LM expander). Per depth: one `expand`
    call for every live state of every tree, one `values_fn` call for all new states. Candidates
    tie-break by creation order (the first sampled wins). Rows are released as states leave the
    beam and all at the end.
    """
    roots = values_fn([tree.context(0) for tree in trees])
    results = [
        BeamResult(None, {0: float(q)}, {0: float(m)}, {}, [])
        for q, m in zip(*(np.asarray(r, np.float64) for r in roots))
    ]
    beams = [[0] for _ in trees]
    position = {id(tree): i for i, tree in enumerate(trees)}
    for _ in range(config.max_depth):
        requests = [(tree, node_id) for tree, beam in zip(trees, beams) for node_id in beam]
        if not requests:
            break
        new = expander.expand(requests, config.width)
        children: list[tuple[int, int, int]] = []  # (tree position, parent, child)
        for (tree, node_id), nodes in zip(requests, new):
            for node in nodes:
                children.append((position[id(tree)], node_id, tree.add_child(node_id, node)))
            tree.nodes[node_id].expanded = True
            tree.release(node_id)
        if not children:  # the expander had nothing to add below any live state
            break
        q_policy, q_prover = values_fn([trees[t].context(c) for t, _, c in children])
        parents = np.array([results[t].prover_values[p] for t, p, _ in children], np.float64)
        scores = step_scores(
            np.asarray(q_policy, np.float64), np.asarray(q_prover, np.float64), parents,
            config.alpha,
        )  # fmt: skip
        candidates: list[list[int]] = [[] for _ in trees]
        for (t, _, c), q, m, s in zip(children, q_policy, q_prover, scores):
            result = results[t]
            result.policy_values[c], result.prover_values[c], result.scores[c] = (
                float(q), float(m), float(s)
            )  # fmt: skip
            if trees[t].nodes[c].done:
                result.finished.append(c)
                trees[t].release(c)
            else:
                candidates[t].append(c)
        for t, tree in enumerate(trees):
            ranked = sorted(candidates[t], key=lambda c, t=t: -results[t].scores[c])
            beams[t] = ranked[: config.beam_size]
            for dropped in ranked[config.beam_size :]:
                tree.release(dropped)
    for tree, result in zip(trees, results):
        for node in tree.nodes:
            node.row = None
        if result.finished:
            result.answer = max(result.finished, key=lambda c, r=result: r.policy_values[c])
    return results
