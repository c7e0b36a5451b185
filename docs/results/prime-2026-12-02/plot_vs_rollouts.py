"""Training reward and held-out EM against sampled rollouts, PRIME vs RLOO (mean over seeds).

    python docs/results/prime-2026-12-02/plot_vs_rollouts.py

Rollouts = filter/sampled_groups × K (K = 4), which every seed logs (seed 0 predates the
sampled-token count of every filter round). Training reward = EM of every sampled rollout of a
step, before the accuracy filter, smoothed over 10 steps.
"""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = pathlib.Path(__file__).parent
K = 4


def curves(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "filter/sampled_groups" in r]
    rollouts = np.cumsum([r["filter/sampled_groups"] * K for r in train])
    # Trailing 10-step mean, plotted at the last step of each window.
    reward = np.convolve([r["reward"] for r in train], np.ones(10) / 10, mode="valid")
    at_step = dict(zip([r["step"] for r in train], rollouts))
    evals = [(at_step.get(r["step"], 0), r["eval/qa/policy/all/em"])
             for r in rows if "eval/qa/policy/all/em" in r]  # fmt: skip
    return rollouts[9:], reward, np.array(evals)


fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for method, color in (("prime", "tab:blue"), ("prime_rloo", "tab:orange")):
    runs = sorted((HERE / "runs").glob(f"{method}-seed*"))
    data = [curves(run) for run in runs]
    for rollouts, reward, _ in data:
        left.plot(rollouts, reward, color=color, alpha=0.3, lw=1)
    steps = min(len(d[0]) for d in data)
    left.plot(np.mean([d[0][:steps] for d in data], 0), np.mean([d[1][:steps] for d in data], 0),
              color=color, lw=2, label=f"{method} (mean of {len(data)} seeds)")  # fmt: skip
    evals = np.mean([d[2] for d in data], 0)
    spread = np.std([d[2][:, 1] for d in data], 0, ddof=1)
    right.errorbar(evals[:, 0], evals[:, 1], yerr=spread, color=color, marker="o", capsize=3,
                   label=f"{method} (mean ± std, {len(data)} seeds)")  # fmt: skip
left.set(xlabel="sampled rollouts", ylabel="training EM of sampled rollouts (10-step mean)")
right.set(xlabel="sampled rollouts", ylabel="held-out test EM")
for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
fig.savefig(HERE / "reward_and_em_vs_rollouts.png", dpi=120)
print("wrote", HERE / "reward_and_em_vs_rollouts.png")
