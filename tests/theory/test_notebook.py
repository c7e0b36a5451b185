"""Executes experiments/colab/variance_reduction.ipynb headless and checks its printed figures.

Every `RESULT {json}` line the notebook prints is checked against a closed form computed here
by hand (T, T − t + 1, Σv/v_t, (1 − 1/k), the coupled return variance) or, for the gradient
variance and signal-to-noise, against `prm.theory.predict`, which tests/theory/test_variance.py
checks by exact enumeration. Tolerance: 5 batch-means standard errors (see test_variance.py).
The real-run section's figures are recomputed here from the committed metrics.jsonl files.

The notebook is committed executed, so that its figures show on the code host; the fresh run
here must print what the committed outputs show. To refresh them after changing the notebook:

    PYTHONPATH=$PWD python tests/theory/test_notebook.py
"""

import functools
import json
import os
import pathlib
import re

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "experiments" / "colab" / "variance_reduction.ipynb"
REAL_RUNS = ROOT / "docs" / "results" / "variance-2026-12-02"
Z = 5.0
# A number as printed: sign, digits, optional fraction and exponent.
_NUMBER = re.compile(r"[-+]?\d+(?:\.(\d+))?(?:[eE]([-+]?\d+))?")


def assert_within(mc, stderr, expected, max_relative_stderr=0.02):
    mc, stderr, expected = (np.asarray(x, np.float64) for x in (mc, stderr, expected))
    np.testing.assert_array_less(np.abs(mc - expected), Z * stderr + 1e-12)
    np.testing.assert_array_less(stderr, max_relative_stderr * np.abs(expected) + 1e-12)


def execute(notebook, matplotlib_backend=None):
    """Runs `notebook` in place with the kernel named "python3", from the repository root.

    `matplotlib_backend="Agg"` skips rendering figures; None keeps the kernel's inline backend,
    which embeds them as PNG outputs.
    """
    env_backend = os.environ.pop("MPLBACKEND", None)
    if matplotlib_backend is not None:
        os.environ["MPLBACKEND"] = matplotlib_backend
    try:
        # The kernelspec's "python" resolves to this interpreter, i.e. the project venv.
        nbclient.NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT)}},
        ).execute()
    finally:
        os.environ.pop("MPLBACKEND", None)
        if env_backend is not None:
            os.environ["MPLBACKEND"] = env_backend
    return notebook


def printed_lines(notebook):
    """Per code cell, the lines it printed to stdout, less the wall-clock time."""
    lines = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            # Joined first: how the kernel splits a cell's output into chunks varies per run.
            stdout = "".join(
                output.text
                for output in cell.outputs
                if output.output_type == "stream" and output.name == "stdout"
            )
            lines.append([ln for ln in stdout.splitlines() if not ln.startswith("notebook ran")])
    return lines


def printed_numbers(line):
    """(line with each number replaced by #, [(value, tolerance)]) for one printed line.

    The tolerance is one unit in the number's last printed digit: a fresh run may round the
    other way. For the RESULT lines' full-precision floats, float32 sums whose last digits
    follow the machine's reduction order, it is at least 1e-5 of the value or 1e-6.
    """
    numbers = []
    for match in _NUMBER.finditer(line):
        value = float(match.group())
        if match.group(1) is None and match.group(2) is None:
            numbers.append((value, 0.0))  # integers (T, t, k) are printed exactly
            continue
        unit = 10.0 ** (-len(match.group(1) or "") + int(match.group(2) or 0))
        numbers.append((value, max(unit, 1e-5 * abs(value), 1e-6)))
    return _NUMBER.sub("#", line), numbers


@functools.cache
def executed():
    """(notebook after execution, RESULT records grouped by figure)."""
    notebook = execute(nbformat.read(NOTEBOOK, as_version=4), matplotlib_backend="Agg")
    records = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("RESULT "):
                    record = json.loads(line.removeprefix("RESULT "))
                    records.setdefault(record.pop("figure"), []).append(record)
    return notebook, records


def test_committed_notebook_is_executed_with_its_figures():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert 'REPO_URL = "' in code[0].source
    # Executed in order, top to bottom, without errors.
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    # Every plt.show() left its figure in the notebook.
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == sum(cell.source.count("plt.show()") for cell in code)
    # Paths name the repository's files, not one machine's.
    assert "/work/" not in NOTEBOOK.read_text()


def test_a_fresh_run_prints_the_committed_figures():
    committed = printed_lines(nbformat.read(NOTEBOOK, as_version=4))
    fresh = printed_lines(executed()[0])
    assert len(fresh) == len(committed)
    checked = 0
    for cell, (committed_cell, fresh_cell) in enumerate(zip(committed, fresh)):
        assert len(fresh_cell) == len(committed_cell), f"code cell {cell}"
        for committed_line, fresh_line in zip(committed_cell, fresh_cell):
            committed_text, committed_numbers = printed_numbers(committed_line)
            fresh_text, fresh_numbers = printed_numbers(fresh_line)
            assert fresh_text == committed_text
            for (old, tolerance), (new, _) in zip(committed_numbers, fresh_numbers):
                assert abs(new - old) <= tolerance * (1 + 1e-9), (committed_line, fresh_line)
            checked += len(committed_numbers)
    assert checked > 500  # the tables and RESULT lines, not an empty comparison


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
        "real_run",
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


def train_records(run):
    lines = (REAL_RUNS / run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def test_notebook_real_run_numbers_follow_from_the_logged_metrics():
    (record,) = executed()[1]["real_run"]
    slate, grpo = train_records("slate"), train_records("search_r1")
    k = record["k_slate"]
    assert k == record["k_grpo"] == 5 and len(slate) == len(grpo) == 10
    steps = record["steps"]
    assert steps == list(range(1, len(steps) + 1))
    groups = np.array([[r.get(f"groups/t{t}", 0.0) for t in steps] for r in slate])
    values = np.array(
        [[r.get(f"centred_advantage_variance/t{t}", 0.0) for t in steps] for r in slate]
    )
    # Every group has k siblings, so a train step's value over all its groups is the
    # group-weighted mean of its per-t values: the logged metrics agree with each other.
    np.testing.assert_allclose(
        (groups * values).sum(1) / groups.sum(1),
        [r["centred_advantage_variance/step"] for r in slate],
        rtol=1e-9,
    )
    assert groups[:, 0].tolist() == [8.0] * len(slate)  # every question plays step 1
    np.testing.assert_array_equal(record["groups"], groups.sum(0))
    measured = np.array([np.average(values[:, i], weights=groups[:, i]) for i in range(len(steps))])
    np.testing.assert_allclose(record["slate_measured"], measured, rtol=1e-9)
    np.testing.assert_allclose(record["v_hat"], measured * k / (k - 1), rtol=1e-9)
    # (1 − 1/k)·Σ_t v̂_t = Σ_t Var(Â_tr,t): the prediction is the sum of the measured variances.
    np.testing.assert_allclose(record["predicted_full"], measured.sum(), rtol=1e-6)
    np.testing.assert_allclose(record["predicted_ratio"], measured.sum() / measured, rtol=1e-5)
    grpo_values = [r["centred_advantage_variance/step"] for r in grpo]
    np.testing.assert_allclose(record["grpo_measured"], np.mean(grpo_values), rtol=1e-9)
    # Centred 0/1 rewards of k samples: at most (1 − 1/k)·1/4 per group.
    assert 0 <= max(grpo_values) <= (1 - 1 / k) / 4


if __name__ == "__main__":
    # Re-executes the notebook with inline figures and writes it back (see the module docstring).
    nbformat.write(execute(nbformat.read(NOTEBOOK, as_version=4)), NOTEBOOK)
