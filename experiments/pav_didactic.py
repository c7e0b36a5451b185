r"""PAV's didactic sweep: prover strengths × reward kinds × seeds on the planted-subsequence task.

    python -m experiments.pav_didactic --config=configs/pav.py --out=docs/results/pav

Trains the runs of `configs/pav.py` seed by seed (`prm.didactic.pav_rl.train_runs`: one compiled
program, a seed's runs vmapped) and, after each seed, writes what has finished into `--out`:

    runs.csv        one row per run: prover, reward kind, seed, V^μ(x), run-average and final
                    accuracy, iterations to a 10-iteration mean accuracy ≥ 0.9, final response
                    length, the prover's distinguishability at the warm start, Pass@N
    curves.csv      every run's batch accuracy, every `curve_every` iterations
    table.md        mean ± std over seeds per (prover, reward kind)
    summary.json    the config, the table's numbers and the wall/CPU time
    accuracy_vs_prover.png   run-average accuracy against prover strength V^μ(x), per reward
    learning_curves.png      accuracy against iterations for a few provers
    pass_at_n.png            Pass@N at `pass_at_iteration` against N
"""

from __future__ import annotations

import csv
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from prm.didactic import pav_rl
from prm.didactic.planted_subsequence import PlantedTask, automaton_values, gamma_prover_probs
from prm.rewards.progress import best_of_k_values
from prm.training.config import load_config

_CONFIG = flags.DEFINE_string("config", "configs/pav.py", "Config file (with options).")
_OUT = flags.DEFINE_string("out", "docs/results/pav", "Where tables, raw outputs and plots go.")
_CURVE_EVERY = flags.DEFINE_integer("curve_every", 5, "Iterations between saved curve points.")

KIND_NAMES = {pav_rl.OUTCOME: "outcome", pav_rl.ADVANTAGE: "Q+αA^μ", pav_rl.PROVER_Q: "Q+αQ^μ"}
REACHED = 0.9  # accuracy (10-iteration mean) whose first iteration is reported


def provers(config, task: PlantedTask) -> list[dict]:
    """Every prover of the sweep: name, family, γ or K, and its `[m + 1, L + 1]` value table."""
    out = []
    for gamma in config.gammas:
        values = automaton_values(task, gamma_prover_probs(task, gamma))
        out.append({"prover": f"gamma={gamma:g}", "family": "gamma", "strength": gamma})
        out[-1]["values"] = values
    base = automaton_values(task, gamma_prover_probs(task, config.policy.sft_gamma))
    for k in config.best_of_k:
        out.append({"prover": f"Bo{k}(gamma={config.policy.sft_gamma:g})", "family": "bok"})
        out[-1].update(strength=k, values=best_of_k_values(base, k))
    for p in out:
        p["v0"] = float(p["values"][0, 0])
    return out


def sweep(config, task: PlantedTask, seed: int) -> tuple[list[dict], pav_rl.Runs]:
    """One descriptor per run of `seed` and the vmapped `Runs`: outcome-only once (it ignores
    the prover), then A^μ and Q^μ rewards for every prover."""
    table = provers(config, task)
    runs = [{"prover": "none", "family": "none", "strength": 0.0, "v0": float("nan")}]
    runs[0].update(kind=pav_rl.OUTCOME, seed=seed, values=table[0]["values"])
    for kind in (pav_rl.ADVANTAGE, pav_rl.PROVER_Q):
        runs += [dict(p, kind=kind, seed=seed) for p in table]
    arrays = pav_rl.Runs(
        prover_values=jnp.stack([r.pop("values") for r in runs]),
        alpha=jnp.full(len(runs), config.alpha, jnp.float32),
        kind=jnp.asarray([r["kind"] for r in runs], jnp.int32),
        seed=jnp.asarray([r["seed"] for r in runs], jnp.int32),
    )
    return runs, arrays


def first_reaching(accuracy: np.ndarray, level: float, window: int = 10) -> float:
    """First iteration whose trailing `window`-iteration mean accuracy is ≥ `level` (NaN: never)."""
    means = np.convolve(accuracy, np.ones(window) / window, mode="valid")
    hits = np.flatnonzero(means >= level)
    return float(hits[0] + window) if hits.size else float("nan")


def summarise_runs(config, runs: list[dict], metrics: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    tail = max(config.iterations // 10, 1)
    for i, run in enumerate(runs):
        accuracy = metrics["accuracy"][i]
        row = {k: run[k] for k in ("prover", "family", "strength", "v0", "seed")}
        row["reward"] = KIND_NAMES[run["kind"]]
        row["mean_accuracy"] = float(accuracy.mean())
        row["final_accuracy"] = float(accuracy[-tail:].mean())
        row[f"iterations_to_{REACHED}"] = first_reaching(accuracy, REACHED)
        row["final_response_length"] = float(metrics["response_length"][i][-tail:].mean())
        row["warm_accuracy"] = float(metrics["warm_accuracy"][i])
        row["signal_at_start"] = float(metrics["signal"][i][0])
        correct = int(metrics["pass_correct"][i])
        row[f"correct_of_{config.pass_samples}_at_{config.pass_at_iteration}"] = correct
        for n in config.pass_ns:
            row[f"pass@{n}"] = pav_rl.pass_at_n(config.pass_samples, correct, n)
        rows.append(row)
    return rows


def group_table(config, rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (prover, reward kind), in sweep order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["prover"], row["reward"]), []).append(row)
    stats = (
        "mean_accuracy",
        "final_accuracy",
        f"iterations_to_{REACHED}",
        "final_response_length",
        "signal_at_start",
        "pass@1",
        f"pass@{config.pass_ns[-1]}",
    )
    table = []
    for (prover, reward), members in groups.items():
        entry = {"prover": prover, "reward": reward, "v0": members[0]["v0"], "seeds": len(members)}
        for stat in stats:
            values = np.array([m[stat] for m in members], float)
            entry[stat] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else None
            entry[stat + "_std"] = float(np.nanstd(values)) if entry[stat] is not None else None
            entry[stat + "_reached"] = int(np.sum(~np.isnan(values)))
        table.append(entry)
    return table


def markdown(config, table: list[dict]) -> str:
    big = config.pass_ns[-1]
    head = (
        "| prover | V^μ(x) | reward | run-mean acc. | final acc. | iters to 0.9 (runs) | "
        f"final length | Var_π[A^μ] at start | Pass@1 @{config.pass_at_iteration} | "
        f"Pass@{big} @{config.pass_at_iteration} |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    reach = f"iterations_to_{REACHED}"
    for e in table:

        def pm(stat, fmt="{:.3f}", e=e):
            if e[stat] is None:
                return "—"
            return (fmt + " ± " + fmt).format(e[stat], e[stat + "_std"])

        v0 = "—" if np.isnan(e["v0"]) else f"{e['v0']:.3f}"
        reached = f"{pm(reach, '{:.0f}')} ({e[reach + '_reached']}/{e['seeds']})"
        lines.append(
            f"| {e['prover']} | {v0} | {e['reward']} | {pm('mean_accuracy')} | "
            f"{pm('final_accuracy')} | {reached} | {pm('final_response_length', '{:.2f}')} | "
            f"{pm('signal_at_start', '{:.2e}')} | {pm('pass@1')} | {pm(f'pass@{big}')} |"
        )
    return "\n".join(lines) + "\n"


def plots(config, rows: list[dict], metrics: dict[str, np.ndarray], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_over_seeds(prover, reward, key):
        picked = [i for i, r in enumerate(rows) if r["prover"] == prover and r["reward"] == reward]
        return np.mean([metrics[key][i] if key in metrics else rows[i][key] for i in picked], 0)

    outcome = float(np.mean([r["mean_accuracy"] for r in rows if r["reward"] == "outcome"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for family, marker in (("gamma", "o"), ("bok", "s")):
        provers = list(dict.fromkeys(r["prover"] for r in rows if r["family"] == family))
        v0 = [next(r["v0"] for r in rows if r["prover"] == p) for p in provers]
        for reward, color in (("Q+αA^μ", "C0"), ("Q+αQ^μ", "C3")):
            acc = [mean_over_seeds(p, reward, "mean_accuracy") for p in provers]
            label = f"{reward}, {'μ(γ)' if family == 'gamma' else 'BoK(μ(5))'}"
            axes[0].plot(v0, acc, marker=marker, color=color, label=label)
        signal = [mean_over_seeds(p, "Q+αA^μ", "signal_at_start") for p in provers]
        axes[1].plot(v0, signal, marker=marker, color="C0", label=family)
        for p, x, y in zip(provers, v0, signal):
            axes[1].annotate(p.replace("gamma=", "γ"), (x, y), fontsize=7)
    axes[0].axhline(outcome, color="k", ls="--", label="outcome only")
    axes[0].set(xscale="log", xlabel="prover strength V^μ(x)", ylabel="run-mean accuracy")
    axes[0].legend(fontsize=8)
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="prover strength V^μ(x)",
        ylabel="E_s Var_{a~π0}[A^μ(s,a)] at the warm start",
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_prover.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    gammas = [f"gamma={g:g}" for g in config.gammas]
    for ax, reward in zip(axes, ("Q+αA^μ", "Q+αQ^μ")):
        ax.plot(mean_over_seeds("none", "outcome", "accuracy"), color="k", label="outcome only")
        for i, prover in enumerate(gammas):
            ax.plot(mean_over_seeds(prover, reward, "accuracy"), color=f"C{i}", label=prover)
        ax.set(title=f"reward {reward}", xlabel="RL iteration", ylabel="batch accuracy")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "learning_curves.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ns = np.array(config.pass_ns)
    for prover, reward, color in [("none", "outcome", "k")] + [
        (p, "Q+αA^μ", f"C{i}") for i, p in enumerate(gammas)
    ]:
        values = [mean_over_seeds(prover, reward, f"pass@{n}") for n in ns]
        ax.plot(ns, values, marker=".", color=color, label=f"{prover}, {reward}")
    ax.set(
        xscale="log",
        xlabel="N",
        ylabel=f"Pass@N at iteration {config.pass_at_iteration}",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "pass_at_n.png"), dpi=120)
    plt.close(fig)


def main(argv) -> None:
    del argv
    config = load_config(_CONFIG.value)
    task = PlantedTask(
        config.task.length, config.task.vocab_size, config.task.eos, tuple(config.task.planted)
    )
    policy = pav_rl.PolicyConfig(**config.policy)
    runs, chunks, wall, cpu = [], [], 0.0, 0.0
    for seed in range(config.seeds):  # one compiled program, results written after each seed
        seed_runs, arrays = sweep(config, task, seed)
        print(f"seed {seed}: {len(seed_runs)} runs × {config.iterations} iterations", flush=True)
        start_wall, start_cpu = time.time(), time.process_time()
        metrics = pav_rl.train_runs(
            task, policy, arrays, config.iterations, config.pass_at_iteration, config.pass_samples
        )
        chunks.append(jax.tree.map(np.asarray, jax.block_until_ready(metrics)))
        wall += time.time() - start_wall
        cpu += time.process_time() - start_cpu
        print(f"  {wall:.0f} s wall, {cpu:.0f} s CPU so far (compilation included)", flush=True)
        runs += seed_runs
        metrics = jax.tree.map(lambda *a: np.concatenate(a), *chunks)
        text = write_outputs(config, runs, metrics, wall, cpu)
    print(text)


def write_outputs(config, runs, metrics, wall: float, cpu: float) -> str:
    """Writes the tables, raw outputs and plots; returns the markdown table."""
    os.makedirs(_OUT.value, exist_ok=True)
    rows = summarise_runs(config, runs, metrics)
    with open(os.path.join(_OUT.value, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    every = _CURVE_EVERY.value
    with open(os.path.join(_OUT.value, "curves.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration"] + [f"{r['prover']}|{r['reward']}|{r['seed']}" for r in rows])
        for t in range(0, config.iterations, every):
            writer.writerow([t] + [f"{a:.4f}" for a in metrics["accuracy"][:, t]])
    table = group_table(config, rows)
    text = markdown(config, table)
    with open(os.path.join(_OUT.value, "table.md"), "w") as f:
        f.write(text)
    summary = {
        "config": config.to_dict(),
        "command": f"python -m experiments.pav_didactic --config={_CONFIG.value} --out={_OUT.value}",
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "table": table,
    }
    with open(os.path.join(_OUT.value, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    plots(config, rows, metrics, _OUT.value)
    return text


if __name__ == "__main__":
    app.run(main)
