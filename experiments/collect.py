r"""Collects process-label datasets on chain arithmetic mod 10: Math-Shepherd or OmegaPRM.

    python -m experiments.collect --config=configs/math_shepherd.py --out=/tmp/ms
    python -m experiments.collect --config=configs/omegaprm.py --out=/tmp/omega
    python -m experiments.collect --config=configs/omegaprm.py:smoke --out=/tmp/omega_smoke

The policy (`config.policy`) is the config's `warm_start` (the chain SFT run,
`configs/chain_sft.py`, trained once into `~/.cache/prm/warm_starts/` by
`prm.training.loop.load_warm_start`) sampled with the KV-cache sampler, or "expert": the
noisy expert itself (`NoisyExpertCompleter`, no model; option `:policy=expert`). The task knows
every step's true correctness, so the script also measures the labels against it and prints a
summary (also written to `<out>/summary.json`).

Datasets (written with Hugging Face `datasets`, `config.format` = "jsonl" or "parquet"):

`<out>/steps.<fmt>`: one row per labelled solution.
    problem_id      int        index of the problem in this collection
    prompt          str        the task prompt (ends with "\n")
    steps           list[str]  the solution's steps x_1..x_M, each ending with "\n"
    soft_labels     list[float | null]  MC(x_{1:t}): the fraction of completions after step t
                               that reach the gold answer; null where no estimate was made
    hard_labels     list[int | null]    1[MC(x_{1:t}) > 0] (Math-Shepherd Eq. 3); OmegaPRM:
                               1 before the located first error, 0 at it, null after it
    outcome         float      1 if the solution's own answer is right, else 0
    true_labels     list[int]  the task's true step correctness (prefix correctness: 1 iff
                               steps 1..t all equal the gold solution's)
    method          str        "math_shepherd" or "omegaprm"
  Math-Shepherd rows are sampled solutions with N completions after each step; the last step's
  labels are the outcome. OmegaPRM rows are the searched rollouts, after the tree state they
  start from (`steps` = state prefix + rollout).

`<out>/pairs.<fmt>` (OmegaPRM): sibling tree edges with different MC, one row per pair.
    problem_id, prompt
    prefix          list[str]  the parent state's steps
    steps_a, steps_b list[str] the two edges' steps after the prefix
    mc_a, mc_b      float      the children's MC estimates
    preference      float      P(a ≻ b) with ties split, ½(1 + mc_a − mc_b) (OmegaPRM §3.4)

What the summary reports:
  math_shepherd: for each N in `eval_completions` (the first N of the collected completions),
    the accuracy of hard labels and of soft labels thresholded at 0.5 against the true step
    correctness, on all steps and separately on truly correct / incorrect steps, and the mean
    absolute gap between soft labels and the truth.
  omegaprm: tree sizes, policy calls (MC estimates, completions, tokens) per located first
    error, against brute-force per-step MC on the same rollouts; the located first errors
    against the true ones; the hard/soft label accuracy on the labelled steps. With
    `first_error_check.num_solutions` > 0 it also runs both searches on the same incorrect
    sampled solutions and reports their calls and agreement.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from prm import labels
from prm.envs import chain_arithmetic as chain
from prm.rollouts import RolloutConfig
from prm.rollouts.completions import Completions, Prefix
from prm.rollouts.step_labels import (
    Completer,
    Cost,
    OmegaPRMConfig,
    Solution,
    brute_force_first_errors,
    locate_first_errors,
    math_shepherd,
    omegaprm,
    pairwise_preference,
    sample_solutions,
)
from prm.sampling import Sampler, SamplingParams
from prm.training.loop import load_warm_start


class NoisyExpertCompleter:
    """The noisy expert as the completer (`chain.noisy_expert_steps`): from any prefix it writes
    each remaining result wrong with probability `error_rate`, continuing from the value the
    prefix last wrote. A policy whose step-error process is known exactly and costs no model
    calls, for label studies at any N; it answers like `Completer` (tokens = characters)."""

    def __init__(self, error_rate: float, seed: int):
        self.error_rate = error_rate
        self.rng = np.random.default_rng(seed)
        self.cost = Cost()

    def __call__(self, prefixes: Sequence[Prefix], num_completions: int) -> Completions:
        steps = [
            [
                tuple(chain.noisy_expert_steps(p.task, self.rng, self.error_rate, p.steps))
                for _ in range(num_completions)
            ]
            for p in prefixes
        ]
        correct = np.array(
            [
                [chain.verify(p.task, "".join(p.steps + s)) for s in row]
                for p, row in zip(prefixes, steps)
            ]
        )
        num_tokens = np.array([[len("".join(s)) for s in row] for row in steps], np.int32)
        result = Completions(correct, num_tokens, steps)
        self.cost.add(result)
        return result


def make_completer(config: Any) -> Completer | NoisyExpertCompleter:
    """The config's policy: "warm_start" (the SFT model, sampled) or "expert" (the noisy
    expert with `expert_error_rate`)."""
    if config.policy == "expert":
        return NoisyExpertCompleter(config.expert_error_rate, config.seed)
    if config.policy != "warm_start":
        raise ValueError(f"Unknown policy {config.policy!r}; use 'warm_start' or 'expert'.")
    model, tokenizer = load_warm_start(config.warm_start)
    rollout = RolloutConfig(
        max_step_tokens=config.rollout.max_step_tokens,
        max_length=config.rollout.max_length,
        sampling=SamplingParams(temperature=config.rollout.temperature),
    )
    env = chain.ChainArithmeticEnv(max_extra_steps=config.rollout.max_extra_steps)
    return Completer(
        Sampler(model), env, tokenizer, rollout, jax.random.key(config.seed), config.max_rows
    )


def problems_of(config: Any) -> list[chain.ChainProblem]:
    p = config.problems
    return chain.generate_problems(
        p.num, seed=config.seed, split=p.split,
        config=chain.ChainConfig(p.min_ops, p.max_ops, p.operators),
    )  # fmt: skip


def true_labels(solution: Solution) -> list[int]:
    return [int(c) for c in chain.step_correctness(solution.task, solution.steps)]


def label_accuracy(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy of binary `predicted` against `truth` overall, on true positives and negatives."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "accuracy_on_correct_steps": float(np.mean(predicted[truth])) if truth.any() else np.nan,
        "accuracy_on_incorrect_steps": (
            float(np.mean(~predicted[~truth])) if (~truth).any() else np.nan
        ),
    }


def collect_math_shepherd(config: Any, completer: Completer) -> tuple[list[dict], dict]:
    problems = problems_of(config)
    solutions = sample_solutions(completer, problems, config.solutions_per_problem)
    sampling_cost = dict(vars(completer.cost))
    completions = math_shepherd(completer, solutions, config.num_completions)
    truth = np.concatenate([true_labels(s) for s in solutions])
    by_n = {}
    for n in config.eval_completions:
        rows = [c[:, :n] for c in completions]
        hard = np.concatenate([np.asarray(labels.hard_estimation_labels(r)) for r in rows])
        soft = np.concatenate([np.asarray(labels.soft_estimation_labels(r)) for r in rows])
        by_n[n] = {
            "hard": label_accuracy(hard > 0.5, truth),
            "soft>=0.5": label_accuracy(soft >= 0.5, truth),
            "soft_mean_abs_error": float(np.mean(np.abs(soft - truth))),
        }
    records = []
    for s, rows in zip(solutions, completions):
        records.append(
            {
                "problem_id": problems.index(s.task),
                "prompt": s.task.prompt,
                "steps": list(s.steps),
                "soft_labels": np.asarray(labels.soft_estimation_labels(rows)).tolist(),
                "hard_labels": np.asarray(labels.hard_estimation_labels(rows)).astype(int).tolist(),
                "outcome": s.outcome,
                "true_labels": true_labels(s),
                "method": "math_shepherd",
            }
        )
    labelling_cost = {k: v - sampling_cost[k] for k, v in vars(completer.cost).items()}
    summary = {
        "problems": len(problems),
        "solutions": len(solutions),
        "solution_accuracy": float(np.mean([s.outcome for s in solutions])),
        "process_correct_solutions": float(np.mean([all(true_labels(s)) for s in solutions])),
        "steps": int(truth.size),
        "truly_incorrect_steps": int((~truth.astype(bool)).sum()),
        "outcome_right_but_a_step_wrong": int(
            sum(s.outcome > 0 and not all(true_labels(s)) for s in solutions)
        ),
        "sampling_cost": sampling_cost,
        "labelling_cost": labelling_cost,
        "label_accuracy_by_num_completions": by_n,
    }
    return records, summary


def collect_omegaprm(config: Any, completer: Completer) -> tuple[list[dict], list[dict], dict]:
    problems = problems_of(config)
    omega = OmegaPRMConfig(**config.omegaprm.to_dict())
    trees = omegaprm(completer, problems, omega)
    tree_cost = dict(vars(completer.cost))
    records, pairs = [], []
    searched_lengths, probes, located, truth_first, relative_errors = [], [], [], [], []
    hard_pred, hard_true, soft_pred, soft_true = [], [], [], []
    for problem_id, tree in enumerate(trees):
        for search in tree.searches:
            head = tree.states[search.state].steps
            steps = head + search.rollout
            first = len(head) + search.first_error  # 1-based over `steps`
            soft: list[float | None] = []
            for t in range(1, len(steps) + 1):
                index = tree.find(steps[:t])
                soft.append(None if index is None else tree.states[index].mc)
            hard = [1 if t < first else 0 if t == first else None for t in range(1, len(steps) + 1)]
            truth = [int(c) for c in chain.step_correctness(tree.task, steps)]
            records.append(
                {
                    "problem_id": problem_id,
                    "prompt": tree.task.prompt,
                    "steps": list(steps),
                    "soft_labels": soft,
                    "hard_labels": hard,
                    "outcome": float(chain.verify(tree.task, "".join(steps))),
                    "true_labels": truth,
                    "method": "omegaprm",
                }
            )
            searched_lengths.append(len(search.rollout))
            probes.append(len(search.probes))
            located.append(first)
            relative_errors.append(search.first_error)
            truth_first.append(chain.first_error(tree.task, steps) or len(steps) + 1)
            for t in range(len(steps)):
                if hard[t] is not None:
                    hard_pred.append(hard[t])
                    hard_true.append(truth[t])
                if soft[t] is not None:
                    soft_pred.append(soft[t] >= 0.5)
                    soft_true.append(truth[t])
        for a, b in tree.pairs():
            parent = tree.states[tree.states[a].parent].steps
            mc_a, mc_b = tree.states[a].mc, tree.states[b].mc
            pairs.append(
                {
                    "problem_id": problem_id,
                    "prompt": tree.task.prompt,
                    "prefix": list(parent),
                    "steps_a": list(tree.states[a].steps[len(parent) :]),
                    "steps_b": list(tree.states[b].steps[len(parent) :]),
                    "mc_a": mc_a,
                    "mc_b": mc_b,
                    "preference": pairwise_preference(mc_a, mc_b),
                }
            )
    searches = max(len(probes), 1)
    lengths = np.asarray(searched_lengths)
    summary: dict[str, Any] = {
        "problems": len(problems),
        "problems_with_0<MC(root)<1": sum(0.0 < t.states[0].mc < 1.0 for t in trees),
        "states": sum(len(t.states) for t in trees),
        "searches (located first errors)": len(probes),
        "pairs": len(pairs),
        "cost": tree_cost,
        "estimates_per_first_error": {
            "binary_search": float(np.sum(probes)) / searches,
            "brute_force_all_prefixes (M-1)": float(np.sum(lengths - 1)) / searches,
            # Rolling out x_{1:1}, x_{1:2}, ... until the first MC = 0 (at most M - 1).
            "brute_force_linear_scan_to_first_zero": float(
                np.sum(np.minimum(relative_errors, lengths - 1))
            )
            / searches,
            "rollout_steps_M": float(lengths.mean()) if lengths.size else 0.0,
        },
        "located_first_error_equals_true": float(np.mean(np.equal(located, truth_first)))
        if located
        else np.nan,
        "hard_label_accuracy (labelled steps)": label_accuracy(
            np.asarray(hard_pred), np.asarray(hard_true)
        )
        if hard_pred
        else {},
        "soft>=0.5_label_accuracy (estimated steps)": label_accuracy(
            np.asarray(soft_pred), np.asarray(soft_true)
        )
        if soft_pred
        else {},
    }
    if config.first_error_check.num_solutions > 0:
        summary["first_error_check"] = first_error_check(config, completer, problems)
    return records, pairs, summary


def first_error_check(
    config: Any, completer: Completer, problems: Sequence[chain.ChainProblem]
) -> dict[str, Any]:
    """Batched binary search against brute-force per-step MC on the same incorrect solutions."""
    check = config.first_error_check
    solutions = sample_solutions(completer, problems, check.solutions_per_problem)
    wrong = [s for s in solutions if s.outcome == 0.0][: check.num_solutions]
    k = config.omegaprm.rollouts_per_estimate
    before = dict(vars(completer.cost))
    found = locate_first_errors(completer, wrong, k)
    binary = {key: v - before[key] for key, v in vars(completer.cost).items()}
    before = dict(vars(completer.cost))
    brute_errors, _ = brute_force_first_errors(completer, wrong, k)
    brute = {key: v - before[key] for key, v in vars(completer.cost).items()}
    binary_errors = [f.search.first_error for f in found]
    true_errors = [chain.first_error(s.task, s.steps) or len(s.steps) + 1 for s in wrong]
    n = max(len(wrong), 1)
    return {
        "incorrect_solutions": len(wrong),
        "mean_steps_M": float(np.mean([len(s.steps) for s in wrong])) if wrong else 0.0,
        "binary_search": {**binary, "estimates_per_first_error": binary["estimates"] / n},
        "brute_force": {**brute, "estimates_per_first_error": brute["estimates"] / n},
        "binary_equals_brute_force": float(np.mean(np.equal(binary_errors, brute_errors))),
        "binary_equals_true": float(np.mean(np.equal(binary_errors, true_errors))),
        "brute_force_equals_true": float(np.mean(np.equal(brute_errors, true_errors))),
    }


def write(records: list[dict], path_stem: str, fmt: str) -> str:
    import datasets  # noqa: PLC0415 - slow to import

    dataset = datasets.Dataset.from_list(records)
    path = f"{path_stem}.{fmt}"
    if fmt == "jsonl":
        dataset.to_json(path, lines=True)
    elif fmt == "parquet":
        dataset.to_parquet(path)
    else:
        raise ValueError(f"Unknown format {fmt!r}; use 'jsonl' or 'parquet'.")
    return path


def run(config: Any, out: str) -> dict[str, Any]:
    """Collects the step labels of `config` into `out`; returns the summary."""
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    completer = make_completer(config)
    if config.method == "math_shepherd":
        records, summary = collect_math_shepherd(config, completer)
        pairs = []
    elif config.method == "omegaprm":
        records, pairs, summary = collect_omegaprm(config, completer)
    else:
        raise ValueError(f"Unknown method {config.method!r}; use math_shepherd or omegaprm.")
    written = [write(records, os.path.join(out, "steps"), config.format)] if records else []
    if pairs:
        written.append(write(pairs, os.path.join(out, "pairs"), config.format))
    summary = {"method": config.method, **summary, "wall_s": time.perf_counter() - start}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    print(json.dumps(summary, indent=2, default=float))
    print("wrote", ", ".join(written) or "no rows")
    return summary


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(_CONFIG.value, _OUT.value)


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import several experiments.
    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "configs/math_shepherd.py or omegaprm.py"
    )
    _OUT = flags.DEFINE_string("out", None, "Directory for the datasets and summary.json.")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
