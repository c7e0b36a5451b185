r"""Runs configs over seeds and writes one comparison: held-out EM per question type, curves.

    python -m experiments.compare --configs=configs/search_r1.py,configs/slate.py --seeds=3 \
        --results=results/compare

Each (config, seed) trains in `<results>/runs/<config name>-seed<k>` with
`python -m experiments.train --config=<config>:seed=<k>` (a subprocess, so runs are isolated
and an interrupted sweep resumes: a finished run — final step checkpointed and evaluated — is
skipped, an unfinished one resumes from its checkpoint). Config options after a colon are kept
(`configs/slate.py:judge_error=0.2` → run name `slate-judge_error=0.2`), several of them too:
`--configs=configs/slate.py:k=2,eta=argmax,configs/slate.py:k=8` is two configs (an item that
names no `.py` file continues the config before it). Then it reads the
metrics.jsonl of every finished run (an unfinished one is named and left out) and writes into
`<results>`:

    results.md / results.csv   held-out EM (mean ± std over seeds) per question type, at the
                               start (step 0) and the end, with sampled policy tokens, judge
                               calls, wall-clock and measured advantage variances
    em_vs_tokens.png           held-out EM against cumulative sampled policy tokens (and
    em_vs_time.png             against wall-clock), one line per method, mean over seeds
    advantage_variance.png     measured per-step advantage variance per method over training

Budgets are matched by sampled policy tokens: the fair axis between step-level and
trajectory-level sampling. `--only_report` rewrites the tables from existing runs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from absl import app, flags

_CONFIGS = flags.DEFINE_list("configs", None, "Config files (with options) to compare.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per config (0..seeds-1).")
_RESULTS = flags.DEFINE_string("results", "results/compare", "Where runs and tables go.")
_ONLY_REPORT = flags.DEFINE_bool("only_report", False, "Do not train; tables from existing runs.")
flags.mark_flag_as_required("configs")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_name(config: str) -> str:
    path, _, options = config.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return f"{name}-{options.replace(',', '-')}" if options else name


def config_specs(items: Sequence[str]) -> list[str]:
    """The `--configs` list as configs with their options: absl splits the flag at every comma,
    so an item whose part before ':' is not a `.py` file is an option of the config before it."""
    specs: list[str] = []
    for item in items:
        if item.partition(":")[0].endswith(".py"):
            specs.append(item)
        elif specs:
            specs[-1] += f"{',' if ':' in specs[-1] else ':'}{item}"
        else:
            raise ValueError(f"--configs must start with a config file (.py), got {item!r}.")
    return specs


def with_seed(config: str, seed: int) -> str:
    return f"{config}{',' if ':' in config else ':'}seed={seed}"


def read_metrics(workdir: str) -> list[dict[str, float]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_finished(workdir: str) -> bool:
    """The run reached its last step and logged the evaluation made there."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        return False
    with open(config_path) as f:
        total = json.load(f)["total_steps"]
    return any(
        r["step"] == total and any(k.startswith("eval/") for k in r) for r in read_metrics(workdir)
    )


def train(config: str, seed: int, workdir: str) -> None:
    if is_finished(workdir):
        print(f"[compare] {workdir}: finished, skipped", flush=True)
        return
    command = [sys.executable, "-m", "experiments.train", f"--config={with_seed(config, seed)}",
               f"--workdir={workdir}"]  # fmt: skip
    print("[compare] " + " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def summarize_run(records: Sequence[dict[str, float]]) -> dict[str, object]:
    """Evaluation points (step, cumulative sampled tokens, wall-clock s, {group: EM}) and totals."""
    tokens = seconds = judge_calls = 0.0
    cumulative: dict[int, tuple[float, float]] = {0: (0.0, 0.0)}
    variances = []
    for r in records:
        if "loss" in r:
            tokens += r.get("sampled_tokens", 0.0)
            seconds += r.get("step_time_s", 0.0)
            judge_calls += r.get("judge/candidates", 0.0)  # judged siblings (SLATE)
            cumulative[r["step"]] = (tokens, seconds)
            if "advantage_variance/step" in r:
                variances.append((r["step"], r["advantage_variance/step"]))
    evals = []
    for r in records:
        groups = {
            k.split("/")[3]: v
            for k, v in r.items()
            if k.startswith("eval/qa/policy/") and k.endswith("/em")
        }
        if groups:
            t, s = cumulative.get(r["step"], (tokens, seconds))
            evals.append({"step": r["step"], "tokens": t, "seconds": s, "em": groups})
    return {"evals": evals, "tokens": tokens, "seconds": seconds, "judge_calls": judge_calls,
            "variances": variances}  # fmt: skip


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def write_report(results: str, runs: dict[str, list[dict[str, object]]]) -> str:
    groups = sorted({g for seeds in runs.values() for s in seeds for e in s["evals"] for g in e["em"]},
                    key=lambda g: (g == "all", g))  # fmt: skip
    header = ["method", "seeds", "when", *groups, "sampled tokens", "judge calls", "train s",
              "adv. var./step"]  # fmt: skip
    rows = []
    for method, seeds in runs.items():
        for when, index in (("start", 0), ("end", -1)):
            points = [s["evals"][index] for s in seeds if s["evals"]]
            if not points:
                continue
            cells = [mean_std([p["em"].get(g, np.nan) for p in points]) for g in groups]
            totals = [mean_std([float(s[k]) for s in seeds]) if when == "end" else "0"
                      for k in ("tokens", "judge_calls", "seconds")]  # fmt: skip
            variance = [np.mean([v for _, v in s["variances"]]) for s in seeds if s["variances"]]
            rows.append([method, str(len(points)), when, *cells, *totals,
                         mean_std(variance) if when == "end" else ""])  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(results, "results.md"), "w") as f:
        f.write("Held-out EM (test split) per question type, mean ± std over seeds.\n\n" + table)
    with open(os.path.join(results, "results.csv"), "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    _plots(results, runs)
    return table


def _plots(results: str, runs: dict[str, list[dict[str, object]]]) -> None:
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    palette = plt.get_cmap("tab20").colors  # distinct for up to 20 methods
    colors = {method: palette[i % len(palette)] for i, method in enumerate(runs)}
    for axis, label, name in (("tokens", "sampled policy tokens", "em_vs_tokens"),
                              ("seconds", "train wall-clock (s)", "em_vs_time")):  # fmt: skip
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for method, seeds in runs.items():
            curves = [[(e[axis], e["em"].get("all", np.nan)) for e in s["evals"]] for s in seeds]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(map(len, curves))
            xs = np.mean([[p[0] for p in c[:length]] for c in curves], axis=0)
            ys = np.mean([[p[1] for p in c[:length]] for c in curves], axis=0)
            ax.plot(xs, ys, marker="o", label=method, color=colors[method])
        ax.set_xlabel(label)
        ax.set_ylabel("held-out EM (all)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        fig.tight_layout()
        fig.savefig(os.path.join(results, f"{name}.png"), dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for method, seeds in runs.items():
        for i, s in enumerate(seeds):
            if s["variances"]:
                steps, values = zip(*s["variances"])
                ax.plot(steps, values, color=colors[method],
                        label=method if i == 0 else None, alpha=0.7)  # fmt: skip
    ax.set_xlabel("train step")
    ax.set_ylabel("per-step advantage variance")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(results, "advantage_variance.png"), dpi=120)
    plt.close(fig)


def run_and_report(configs: Sequence[str], seeds: int, results: str, only_report: bool) -> str:
    """Trains each (config, seed) that is not finished (unless `only_report`), then writes the
    tables and plots of the finished runs into `results`; returns the markdown table."""
    results = os.path.abspath(os.path.expanduser(results))
    os.makedirs(os.path.join(results, "runs"), exist_ok=True)
    runs: dict[str, list[dict[str, object]]] = defaultdict(list)
    for config in config_specs(configs):
        for seed in range(seeds):
            workdir = os.path.join(results, "runs", f"{run_name(config)}-seed{seed}")
            if not only_report:
                train(config, seed, workdir)
            if is_finished(workdir):
                runs[run_name(config)].append(summarize_run(read_metrics(workdir)))
            elif os.path.exists(workdir):  # its last evaluation is not the run's end
                print(f"[compare] {workdir}: not finished, left out of the tables", flush=True)
    table = write_report(results, runs)
    print(f"[compare] tables and plots in {results}")
    return table


def main(argv: list[str]) -> None:
    del argv
    print(run_and_report(_CONFIGS.value, _SEEDS.value, _RESULTS.value, _ONLY_REPORT.value))


if __name__ == "__main__":
    app.run(main)
