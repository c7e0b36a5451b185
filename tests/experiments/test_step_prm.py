"""The step PRM experiment: regression samples per label kind, prefix scoring, and a smoke run."""

import json

import numpy as np
import pytest

from configs.step_prm import get_config
from experiments import step_prm
from prm.envs import chain_arithmetic as chain
from prm.rollouts.step_labels import Solution

ROW = {
    "prompt": "P\n",
    "steps": ["a\n", "b\n", "Answer: 3\n"],
    "soft_labels": [0.75, None, 0.0],
    "hard_labels": [1, None, 0],
    "true_labels": [1, 0, 0],
    "outcome": 0.0,
}


def test_prefix_samples_per_label_kind():
    assert step_prm.prefix_samples([ROW], "soft") == [
        ("P\na\n", 0.75),
        ("P\na\nb\nAnswer: 3\n", 0.0),
    ]
    assert step_prm.prefix_samples([ROW], "hard") == [
        ("P\na\n", 1.0),
        ("P\na\nb\nAnswer: 3\n", 0.0),
    ]
    assert step_prm.prefix_samples([ROW], "true") == [
        ("P\na\n", 1.0), ("P\na\nb\n", 0.0), ("P\na\nb\nAnswer: 3\n", 0.0)
    ]  # fmt: skip
    assert step_prm.prefix_samples([ROW], "outcome") == [("P\na\nb\nAnswer: 3\n", 0.0)]


def test_prefix_samples_rejects_bad_input():
    with pytest.raises(ValueError, match="label kind"):
        step_prm.prefix_samples([ROW], "mc")
    with pytest.raises(ValueError, match="3 steps but 2 soft labels"):
        step_prm.prefix_samples([{**ROW, "soft_labels": [0.5, 0.5]}], "soft")


class CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def test_step_scores_reads_every_prefix_in_order():
    # A value function that returns each context's length: the score of prefix t is
    # len(prompt) + len(x_1) + ... + len(x_t), so order and padding are checked exactly.
    def length(contexts):
        return np.asarray([len(c) for c in contexts], np.float32)

    problem = chain.generate_problems(1, seed=0)[0]
    solutions = [Solution(problem, ("ab\n", "c\n"), 1.0), Solution(problem, ("d\n",), 0.0)]
    scores, mask = step_prm.step_scores(length, CharTokenizer(), solutions, chunk=2)
    p = len(problem.prompt)
    np.testing.assert_array_equal(scores, [[p + 3, p + 5], [p + 2, 0]])
    np.testing.assert_array_equal(mask, [[True, True], [True, False]])


def test_config_loss_option():
    assert get_config().train.objective == "squared" and not get_config().train.balanced
    config = get_config("loss=cross_entropy")
    assert config.train.objective == "cross_entropy" and config.train.balanced
    with pytest.raises(ValueError, match="loss='hinge': use one of squared, cross_entropy"):
        get_config("loss=hinge")


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_smoke_run(tmp_path, monkeypatch, loss):
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    problem = chain.generate_problems(1, seed=0)[0]
    steps = list(problem.gold_steps())
    row = {
        "prompt": problem.prompt,
        "steps": steps,
        "soft_labels": [1.0] * len(steps),
        "hard_labels": [1] * len(steps),
        "true_labels": [1] * len(steps),
        "outcome": 1.0,
    }
    labels = tmp_path / "steps.jsonl"
    labels.write_text(json.dumps(row) + "\n")
    results = step_prm.run(get_config(f"smoke,loss={loss}"), str(labels), str(tmp_path / "run"))
    assert set(results["models"]) == set(step_prm.LABEL_KINDS)
    for model in results["models"].values():
        assert np.isfinite(model[f"train_{loss}_last_10pct"])
    assert set(results["best_of_n"]["majority"]) == {1, 2}
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["candidates_per_problem"] == 2
