r"""Progress verifiers (PAV) on chain arithmetic: Q^μ by Monte Carlo, a scalar-head Q-model, and
beam search ranked by Q^π + α·A^μ against Q^π alone (configs/pav_verifier.py says what and why).

    python -m experiments.pav_verifier --config=configs/pav_verifier.py --workdir=/tmp/pav_v
    python -m experiments.pav_verifier --config=configs/pav_verifier.py:smoke --workdir=/tmp/pv

Writes `<workdir>/results.json` (config, timings and the three blocks below) and prints them;
`<workdir>/table.md` holds them as Markdown tables.
  provers: per prover μ (π, BoK(π), π at other temperatures), on π's sampled training
    solutions: mean V^μ(x), mean and std of A^μ over π's steps, E[A^μ·A^π] (alignment), and
    mean A^μ at truly correct steps and at first-error steps (the task knows the truth).
  verifier: training loss; on fresh test solutions, its error against fresh MC estimates for
    Q^π, Q^{BoK} and A^{BoK}, next to a constant predictor and the MC estimates' own noise.
  beam: per ranker, accuracy on held-out problems, sampled steps and tokens per problem, and
    how often some finished candidate was right (the pool the final pick chooses from).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from prm.envs import chain_arithmetic as chain
from prm.models import ScalarHeadModel
from prm.rewards.progress import prover_advantages
from prm.rollouts import RolloutConfig, rollout
from prm.rollouts.progress import best_of_k_estimates, pad_prefix_values, prefix_outcomes
from prm.rollouts.step_labels import Completer, Solution, sample_solutions
from prm.sampling import Sampler, SamplingParams
from prm.search import EngineConfig, ScalarValueFn, TreeEngine
from prm.search.beam import BeamConfig, beam_search
from prm.search.progress_verifier import verifier_samples, verifier_values
from prm.search.self_train import fit_value
from prm.training.loop import load_warm_start


def problems_of(config: Any, num: int, split: str, seed: int) -> list[chain.ChainProblem]:
    p = config.problems
    return chain.generate_problems(
        num, seed=seed, split=split, config=chain.ChainConfig(p.min_ops, p.max_ops, p.operators)
    )


def advantages_of(values: Sequence[np.ndarray]) -> np.ndarray:
    """A of every step of every solution, flattened (solution-major)."""
    prefix_values, mask = pad_prefix_values(values)
    return np.asarray(prover_advantages(prefix_values, mask))[mask]


def prover_stats(
    values: Sequence[np.ndarray], policy_values: Sequence[np.ndarray], solutions
) -> dict[str, float]:
    """What makes a prover useful (PAV §3.4), over π's sampled steps (one action per state, so
    the std mixes states and actions)."""
    advantages, policy_advantages = advantages_of(values), advantages_of(policy_values)
    truth = np.concatenate([chain.step_correctness(s.task, s.steps) for s in solutions])
    first = np.concatenate(
        [np.arange(len(s.steps)) + 1 == chain.first_error(s.task, s.steps) for s in solutions]
    )
    return {
        "V_root": float(np.mean([v[0] for v in values])),
        "A_mean": float(advantages.mean()),
        "A_std": float(advantages.std()),
        "A_abs_mean": float(np.abs(advantages).mean()),
        "alignment_E[A_mu*A_pi]": float(np.mean(advantages * policy_advantages)),
        "A_at_correct_steps": float(advantages[truth].mean()) if truth.any() else float("nan"),
        "A_at_first_errors": float(advantages[first].mean()) if first.any() else float("nan"),
        "steps": int(advantages.size),
        "first_errors": int(first.sum()),
    }


def errors(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {
        "mae": float(np.mean(np.abs(predicted - target))),
        "rmse": float(np.sqrt(np.mean(np.square(predicted - target)))),
        "pearson": (
            float(np.corrcoef(predicted, target)[0, 1])
            if np.ptp(predicted) > 0 and np.ptp(target) > 0
            else float("nan")  # undefined for a constant
        ),
    }


def verifier_value_fn(config, value_model) -> ScalarValueFn:
    """Q^π from the verifier: its score (MSE fit) or the score's sigmoid (cross-entropy fit)."""
    return ScalarValueFn(
        value_model,
        pad_id=config.warm_start.model.pad_token_id,
        sigmoid=config.verifier.objective == "cross_entropy",
    )


def evaluate_verifier(
    value_fn, config, env, tokenizer, completer, train_targets: np.ndarray, k: int
) -> dict[str, Any]:
    """Verifier predictions against fresh MC estimates on new solutions to test problems."""
    problems = problems_of(config, config.eval_problems, "test", config.seed + 1)
    solutions = sample_solutions(completer, problems, config.eval_solutions_per_problem)
    outcomes = prefix_outcomes(completer, solutions, config.eval_completions)
    mc = {1: [best_of_k_estimates(o, 1) for o in outcomes]}
    mc[k] = [best_of_k_estimates(o, k) for o in outcomes]
    samples = verifier_samples(env, tokenizer, solutions, mc[1])
    predicted = np.clip(value_fn([c for c, _ in samples]), 0.0, 1.0)
    sizes = np.cumsum([len(o) for o in outcomes])[:-1]
    predicted_q = np.split(predicted, sizes)
    predicted_bok = [1.0 - (1.0 - q) ** k for q in predicted_q]
    q_pi = np.concatenate(mc[1])
    n = config.eval_completions
    constant = float(np.mean(train_targets))
    report = {
        "prefixes": int(q_pi.size),
        "solutions": len(solutions),
        "eval_completions": n,
        "Q_pi": errors(predicted, q_pi),
        "Q_pi_constant_predictor": errors(np.full_like(q_pi, constant), q_pi),
        # sqrt(E[q̂(1 − q̂)/(n − 1)]) is an unbiased estimate of the MC targets' own RMS noise.
        "Q_pi_mc_noise_rmse": float(np.sqrt(np.mean(q_pi * (1 - q_pi) / (n - 1)))),
        f"Q_bo{k}": errors(np.concatenate(predicted_bok), np.concatenate(mc[k])),
        f"A_bo{k}": errors(advantages_of(predicted_bok), advantages_of(mc[k])),
        "A_pi": errors(advantages_of(predicted_q), advantages_of(mc[1])),
    }
    return report


def run_beams(config, model, value_model, env, tokenizer) -> dict[str, Any]:
    """Every ranker on the same held-out problems, keyed alike (same samples where they agree)."""
    problems = problems_of(config, config.beam_problems, "test", config.seed + 2)
    engine_config = EngineConfig(
        max_step_tokens=config.rollout.max_step_tokens,
        max_length=config.rollout.max_length,
        sampling=SamplingParams(temperature=config.policy_temperature),
    )
    value_fn = verifier_value_fn(config, value_model)
    rankers = {
        "Q_pi only (alpha=0)": (0.0, 1),
        f"PAV mu=pi (alpha={config.beam.alpha})": (config.beam.alpha, 1),
        f"PAV mu=Bo{config.best_of}(pi) (alpha={config.beam.alpha})": (
            config.beam.alpha, config.best_of
        ),
    }  # fmt: skip
    out = {}
    for name, (alpha, k) in rankers.items():
        start = time.time()
        engine = TreeEngine(
            Sampler(model), env, tokenizer, value_fn, engine_config,
            key=jax.random.key(config.seed + 3),
        )  # fmt: skip
        trees = engine.new_trees(problems)
        beam = BeamConfig(**{**config.beam.to_dict(), "alpha": alpha})
        results = beam_search(trees, engine, verifier_values(value_fn, k), beam)
        right = [
            r.answer is not None and tree.correct(r.answer, 1.0) for tree, r in zip(trees, results)
        ]
        pool = [any(tree.correct(c, 1.0) for c in r.finished) for tree, r in zip(trees, results)]
        out[name] = {
            "accuracy": float(np.mean(right)),
            "some_finished_candidate_right": float(np.mean(pool)),
            "sampled_steps_per_problem": float(np.mean([len(t.nodes) - 1 for t in trees])),
            "tokens_per_problem": float(np.mean(list(engine.stats["tokens"].values()))),
            "seconds": time.time() - start,
        }
        print(f"beam {name}: {out[name]}", flush=True)
    return out


def policy_baselines(config, model, env, tokenizer, completer) -> dict[str, float]:
    """π alone on the beam problems: the mean of 8 samples, and greedy decoding."""
    problems = problems_of(config, config.beam_problems, "test", config.seed + 2)
    sampled = sample_solutions(completer, problems, 8)
    greedy = rollout(
        Sampler(model), env, tokenizer, problems,
        RolloutConfig(
            max_step_tokens=config.rollout.max_step_tokens, max_length=config.rollout.max_length
        ),
    )  # fmt: skip
    return {
        "sampled_accuracy": float(np.mean([s.outcome for s in sampled])),
        "greedy_accuracy": float(np.mean(greedy.reward > 0)),
    }


def markdown_tables(results: dict[str, Any]) -> str:
    """The run's three blocks as Markdown tables (written to `<workdir>/table.md`)."""
    lines = [
        "| prover μ | V^μ(x) | mean A^μ | std A^μ | E[A^μ·A^π] | A^μ at correct steps "
        "| A^μ at first errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in results["provers"].items():
        lines.append(
            f"| {name} | {p['V_root']:.3f} | {p['A_mean']:+.3f} | {p['A_std']:.3f} "
            f"| {p['alignment_E[A_mu*A_pi]']:.4f} | {p['A_at_correct_steps']:+.3f} "
            f"| {p['A_at_first_errors']:+.3f} |"
        )
    held_out = results["verifier"]["held_out"]
    lines += ["", "| quantity (held-out) | MAE | RMSE | Pearson r |", "|---|---:|---:|---:|"]
    for name, e in held_out.items():
        if isinstance(e, dict):
            lines.append(f"| {name} | {e['mae']:.3f} | {e['rmse']:.3f} | {e['pearson']:.3f} |")
    lines.append(
        f"| MC noise of the Q^π targets (RMS) | | {held_out['Q_pi_mc_noise_rmse']:.3f} | |"
    )
    lines += [
        "",
        "| ranker | accuracy | some finished candidate right | sampled steps / problem "
        "| tokens / problem |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, b in results["beam"].items():
        lines.append(
            f"| {name} | {b['accuracy']:.3f} | {b['some_finished_candidate_right']:.3f} "
            f"| {b['sampled_steps_per_problem']:.1f} | {b['tokens_per_problem']:.0f} |"
        )
    alone = results["policy_alone"]
    lines.append(
        f"| π alone: sampled / greedy | {alone['sampled_accuracy']:.3f} / "
        f"{alone['greedy_accuracy']:.3f} | | | |"
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
    del argv
    config = _CONFIG.value
    workdir = pathlib.Path(_WORKDIR.value).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    timings, clock = {}, time.time()
    model, tokenizer = load_warm_start(config.warm_start)
    env = chain.ChainArithmeticEnv(max_extra_steps=config.rollout.max_extra_steps)
    key = jax.random.key(config.seed)

    def completer(temperature: float, stream: int) -> Completer:
        rollout_config = RolloutConfig(
            max_step_tokens=config.rollout.max_step_tokens,
            max_length=config.rollout.max_length,
            sampling=SamplingParams(temperature=temperature),
        )
        return Completer(
            Sampler(model), env, tokenizer, rollout_config, jax.random.fold_in(key, stream),
            config.max_rows,
        )  # fmt: skip

    timings["load_warm_start"], clock = time.time() - clock, time.time()

    # 1. Q^μ targets on π's training solutions.
    policy = completer(config.policy_temperature, 0)
    solutions: list[Solution] = sample_solutions(
        policy, problems_of(config, config.train_problems, "train", config.seed),
        config.solutions_per_problem,
    )  # fmt: skip
    outcomes = prefix_outcomes(policy, solutions, config.num_completions)
    q_pi = [best_of_k_estimates(o, 1) for o in outcomes]
    provers = {"pi": q_pi, f"Bo{config.best_of}(pi)": [
        best_of_k_estimates(o, config.best_of) for o in outcomes
    ]}  # fmt: skip
    for i, temperature in enumerate(config.prover_temperatures):
        other = prefix_outcomes(completer(temperature, 1 + i), solutions, config.num_completions)
        provers[f"pi at T={temperature}"] = [best_of_k_estimates(o, 1) for o in other]
    prover_table = {name: prover_stats(v, q_pi, solutions) for name, v in provers.items()}
    for name, stats in prover_table.items():
        print(f"prover {name}: {stats}", flush=True)
    data = {
        "train_solutions": len(solutions),
        "train_accuracy": float(np.mean([s.outcome for s in solutions])),
        "policy_cost": dict(vars(policy.cost)),
    }
    timings["q_targets"], clock = time.time() - clock, time.time()

    # 2. The verifier: a scalar head on a copy of π, fitted to Q^π (config.verifier.objective).
    value_model = ScalarHeadModel(nnx.clone(model), rngs=nnx.Rngs(config.seed))
    samples = verifier_samples(env, tokenizer, solutions, q_pi)
    v = config.verifier
    losses = fit_value(
        value_model, samples, steps=v.steps, batch_size=v.batch_size,
        learning_rate=v.learning_rate, pad_id=config.warm_start.model.pad_token_id,
        seed=config.seed, objective=v.objective, balanced=v.balanced,
    )  # fmt: skip
    timings["fit_verifier"], clock = time.time() - clock, time.time()
    value_fn = verifier_value_fn(config, value_model)
    targets = np.array([t for _, t in samples])
    verifier = {
        "samples": len(samples),
        "loss_first_last": [losses[0], float(np.mean(losses[-20:]))],
        "held_out": evaluate_verifier(
            value_fn, config, env, tokenizer, completer(config.policy_temperature, 100),
            targets, config.best_of,
        ),
    }  # fmt: skip
    print(f"verifier: {verifier}", flush=True)
    timings["eval_verifier"], clock = time.time() - clock, time.time()

    # 3. Beam search at equal sampled steps, and π alone.
    beams = run_beams(config, model, value_model, env, tokenizer)
    baselines = policy_baselines(
        config, model, env, tokenizer, completer(config.policy_temperature, 200)
    )
    print(f"policy alone: {baselines}", flush=True)
    timings["beam"] = time.time() - clock
    results = {
        "config": config.to_dict(),
        "data": data,
        "provers": prover_table,
        "verifier": verifier,
        "beam": beams,
        "policy_alone": baselines,
        "timings_s": timings,
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (workdir / "table.md").write_text(markdown_tables(results))
    print(f"timings: {timings}\nwrote {workdir / 'results.json'}", flush=True)


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/pav_verifier.py[:options]")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results.json.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
