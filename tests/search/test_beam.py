"""Beam search on a scripted tree (PAV Fig. 2a's situation) with hand-computed scores: Q^π alone
keeps the children of the promising parent, Q^π + α·A^μ keeps the step that made progress."""

import numpy as np
import pytest

from prm.search.beam import BeamConfig, beam_search, step_scores
from prm.search.tree import Node, SearchTree

# Step label -> (children labels); a label ending in "!" finishes (reward 1 if it has "ok").
SCRIPT = {
    "": ["a", "b", "c"],
    "a": ["a1", "a2", "a3"],
    "b": ["b1", "b2", "b3"],
    "a1": ["a1 no!"], "a2": ["a2 no!"], "b1": ["b1 ok!"],
}  # fmt: skip
# Path "/"-joined -> (Q^π, Q^μ). Depth 1: a is the most promising parent. Depth 2: a's children
# keep the highest Q^π but lose progress; b1 has lower Q^π but raises Q^μ by 0.2.
VALUES = {
    "": (0.3, 0.3),
    "a": (0.6, 0.6), "b": (0.5, 0.5), "c": (0.1, 0.1),
    "a/a1": (0.58, 0.58), "a/a2": (0.57, 0.57), "a/a3": (0.2, 0.2),
    "b/b1": (0.56, 0.70), "b/b2": (0.3, 0.3), "b/b3": (0.1, 0.1),
    "a/a1/a1 no!": (0.3, 0.3), "a/a2/a2 no!": (0.4, 0.4), "b/b1/b1 ok!": (0.8, 0.8),
}  # fmt: skip


def label_of(tree, node_id):
    return "/".join(tree.nodes[i].step_text for i in tree.path(node_id))


class ScriptedExpander:
    """Children from SCRIPT, `width` at most; step tokens are the label's characters."""

    def __init__(self):
        self.requests = []

    def expand(self, requests, width):
        self.requests.append([label_of(t, n) for t, n in requests])
        out = []
        for tree, node_id in requests:
            step = tree.nodes[node_id].step_text
            children = []
            for label in SCRIPT.get(step, [])[:width]:
                done = label.endswith("!")
                children.append(
                    Node(parent=node_id, depth=0, step_text=label,
                         step_tokens=tuple(map(ord, label + "/")), done=done,
                         reward=float(done and "ok" in label))
                )  # fmt: skip
            out.append(children)
        return out


def scripted_values(contexts):
    labels = ["".join(map(chr, c[1:])).rstrip("/") for c in contexts]  # drop the prompt token
    q = np.array([VALUES[label] for label in labels])
    return q[:, 0], q[:, 1]


def search(alpha):
    tree = SearchTree("task", [ord(">")])
    expander = ScriptedExpander()
    config = BeamConfig(beam_size=2, width=3, alpha=alpha, max_depth=5)
    (result,) = beam_search([tree], expander, scripted_values, config)
    return tree, result, expander.requests


def test_q_only_keeps_the_promising_parents_children_and_answers_wrong():
    tree, result, requests = search(alpha=0.0)
    assert requests == [[""], ["a", "b"], ["a/a1", "a/a2"]]
    assert sorted(label_of(tree, c) for c in result.finished) == ["a/a1/a1 no!", "a/a2/a2 no!"]
    assert label_of(tree, result.answer) == "a/a2/a2 no!"  # highest Q^π among finished
    assert not tree.correct(result.answer, 1.0)


def test_pav_keeps_the_step_that_made_progress_and_answers_right():
    tree, result, requests = search(alpha=0.5)
    # Depth 2 scores: a1 0.58 + 0.5·(−0.02) = 0.57, a2 0.555, b1 0.56 + 0.5·0.2 = 0.66.
    scores = {label_of(tree, c): s for c, s in result.scores.items()}
    assert scores["a/a1"] == pytest.approx(0.57)
    assert scores["a/a2"] == pytest.approx(0.555)
    assert scores["b/b1"] == pytest.approx(0.66)
    assert scores["a"] == pytest.approx(0.6 + 0.5 * 0.3)
    assert requests[2] == ["b/b1", "a/a1"]  # best first
    assert label_of(tree, result.answer) == "b/b1/b1 ok!"
    assert tree.correct(result.answer, 1.0)
    assert sorted(label_of(tree, c) for c in result.finished) == ["a/a1/a1 no!", "b/b1/b1 ok!"]


def test_every_depth_samples_beam_times_width_steps_while_states_live():
    tree, _, requests = search(alpha=0.5)
    # 1 root + 2 + 2 parents expanded, 3 children asked of each (the script has fewer below a1).
    assert [len(r) for r in requests] == [1, 2, 2]
    assert len(tree.nodes) - 1 == 3 + 6 + 2


def test_step_scores_by_hand():
    scores = step_scores(
        np.array([0.5, 0.2]), np.array([0.9, 0.1]), np.array([0.4, 0.3]), alpha=2.0
    )
    np.testing.assert_allclose(scores, [0.5 + 2 * 0.5, 0.2 + 2 * -0.2], atol=1e-6)


def test_bad_config_says_what_is_wrong():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        BeamConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="must be >= 1"):
        BeamConfig(beam_size=0)
