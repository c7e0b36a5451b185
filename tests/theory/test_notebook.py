"""Executes experiments/colab/variance_reduction.ipynb headless and checks its printed figures.

Every `RESULT {json}` line the notebook prints is checked against a closed form computed here
by hand (T, T − t + 1, Σv/v_t, (1 − 1/k), the coupled return variance) or, for the gradient
variance and signal-to-noise, against `prm.theory.predict`, which tests/theory/test_variance.py
checks by exact enumeration. Tolerance: 5 batch-means standard errors (see test_variance.py).
"""

import functools
import json
import os
import pathlib

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "experiments" / "colab" / "variance_reduction.ipynb"
Z = 5.0


def assert_within(mc, stderr, expected, max_relative_stderr=0.02):
    mc, stderr, expected = (np.asarray(x, np.float64) for x in (mc, stderr, expected))
    np.testing.assert_array_less(np.abs(mc - expected), Z * stderr + 1e-12)
    np.testing.assert_array_less(stderr, max_relative_stderr * np.abs(expected) + 1e-12)


@functools.cache
def executed():
    """(notebook after execution, RESULT records grouped by figure)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env_backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    try:
        # The kernelspec's "python" resolves to this interpreter, i.e. the project venv.
        nbclient.NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT)}},
        ).execute()
    finally:
        if env_backend is None:
            os.environ.pop("MPLBACKEND")
        else:
            os.environ["MPLBACKEND"] = env_backend
    records = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("RESULT "):
                    record = json.loads(line.removeprefix("RESULT "))
                    records.setdefault(record.pop("figure"), []).append(record)
    return notebook, records


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert 'REPO_URL = "' in code[0].source


def test_notebook_runs_and_prints_every_figure():
    notebook, records = executed()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert set(records) == {
        "ratio_vs_T",
        "reward_to_go",
        "ratio_vs_k",
        "one_minus_inv_k",
        "heterogeneous",
        "gradient_ratio",
        "mean_gradient_gap",
        "prefix",
        "signal_to_noise",
        "normalised_signal_to_noise",
    }
    assert sorted(r["T"] for r in records["ratio_vs_T"]) == [2, 4, 8]
    assert len({r["k"] for r in records["ratio_vs_k"]}) >= 3


def test_notebook_ratios_match_t():
    _, records = executed()
    for record in records["ratio_vs_T"]:
        T = record["T"]
        np.testing.assert_allclose(record["predicted"], T, rtol=1e-6)
        assert_within(record["mc"], record["stderr"], np.full(T, T))
    for record in records["reward_to_go"]:
        expected = np.arange(record["T"], 0, -1)  # T − t + 1
        np.testing.assert_allclose(record["predicted"], expected, rtol=1e-6)
        assert_within(record["mc"], record["stderr"], expected)
    for record in records["ratio_vs_k"]:
        np.testing.assert_allclose(record["predicted"], record["T"], rtol=1e-6)
        assert_within(record["mc"], record["stderr"], np.full(record["T"], record["T"]))
    for record in records["one_minus_inv_k"]:
        assert_within(record["mc"], record["stderr"], np.ones(len(record["mc"])))


def test_notebook_heterogeneous_case():
    (record,) = executed()[1]["heterogeneous"]
    # Uniform policy over values (0, g, 0, g): Var = g²/4; plus σ².
    v = np.square(record["gaps"]) / 4 + np.square(record["noise"])
    total, to_go = v.sum() / v, np.cumsum(v[::-1])[::-1] / v
    np.testing.assert_allclose(record["predicted"], total, rtol=1e-5)
    np.testing.assert_allclose(record["predicted_reward_to_go"], to_go, rtol=1e-5)
    assert_within(record["mc"], record["stderr"], total)
    assert_within(record["mc_reward_to_go"], record["stderr_reward_to_go"], to_go)
    assert max(record["mc"]) > len(v)  # a step whose ratio exceeds T


def test_notebook_gradients():
    _, records = executed()
    for record in records["gradient_ratio"]:
        assert_within(record["mc"], record["stderr"], record["predicted"])
    for record in records["mean_gradient_gap"]:
        np.testing.assert_array_less(np.abs(record["gap"]), Z * np.asarray(record["stderr"]))


def test_notebook_prefix_dependence():
    records = sorted(executed()[1]["prefix"], key=lambda r: r["c"])
    full_means = []
    for record in records:
        k, c = record["k"], record["c"]
        u, noise_var = np.asarray(record["signal"]), np.square(record["noise"])
        # Truncated: (1 − 1/k)(u_t + σ_t²) whatever c. Full: (1 − 1/k)·Var(R) with
        # Var(R) = Σ_t (1 + c·[t < T])²·u_t + Σ_t σ_t², each a_t also moving r_{t+1}.
        weight = 1 + c * (np.arange(len(u)) < len(u) - 1)
        full = (1 - 1 / k) * (np.sum(weight**2 * u) + np.sum(noise_var))
        np.testing.assert_allclose(record["predicted_full"], full, rtol=1e-5)
        assert_within(
            record["mc_truncated"], record["stderr_truncated"], (1 - 1 / k) * (u + noise_var)
        )
        assert_within(record["mc_full"], record["stderr_full"], np.full(len(u), full))
        full_means.append(np.mean(record["mc_full"]))
    assert np.all(np.diff(full_means) > 0)


def test_notebook_signal_to_noise():
    _, records = executed()
    predicted = {}
    for record in records["signal_to_noise"]:
        assert_within(record["mc"], record["stderr"], record["predicted"], max_relative_stderr=0.05)
        predicted[record["T"], record["scheme"]] = np.asarray(record["predicted"])
    for T in (2, 4, 8):
        # Centred corr² is (1 − 1/k)·u_t/v_t against (1 − 1/k)·u_t/Σv: ratio T.
        np.testing.assert_allclose(predicted[T, "truncated"] / predicted[T, "full"], T, rtol=1e-5)
    for record in records["normalised_signal_to_noise"]:
        truncated, full = np.asarray(record["truncated"]), np.asarray(record["full"])
        assert np.all((full > 0) & (full < truncated) & (truncated < 1))
