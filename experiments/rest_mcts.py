"""ReST-MCTS* self-training on chain arithmetic mod 10, with search baselines at equal tokens.

    python -m experiments.rest_mcts --config=configs/rest_mcts.py --workdir=/tmp/rest_mcts
    python -m experiments.rest_mcts --config=configs/rest_mcts.py:smoke --workdir=/tmp/rest_smoke

Steps (configs/rest_mcts.py says what each block sets):
1. the policy: the chain SFT warm start (`config.warm_start`, `configs/chain_sft.py`), loaded by
   `prm.training.loop.load_warm_start` (trained once and cached if no earlier run left it);
2. V_0: a scalar head on a copy of the warm policy, MSE on the ReST-MCTS* targets of trees
   merged from several noisy solutions per problem (`tree_from_solutions`, the paper's D_V0);
3. per self-training iteration: MCTS* in full mode on the training problems (all trees in one
   batched search), policy SFT on verified traces, V regression on the trees' value targets;
   with `self_train.traces = "sampling"` the policy data are instead the verified ones among
   temperature samples and V stays V_0 (ReST^EM, the paper's baseline);
4. evaluation before training and after each iteration, on held-out problems: greedy accuracy;
   MCTS* (evaluation mode) accuracy and generated tokens per question; best-of-N with V_θ as the
   verifier and self-consistency (majority answer) with N chosen so their generated tokens match
   MCTS*'s.

Writes `results.json` to the workdir and prints one line per evaluation.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from prm.envs.chain_arithmetic import (
    ChainArithmeticEnv,
    ChainConfig,
    generate_problems,
    noisy_expert_steps,
    step_correctness,
    verify,
)
from prm.models import ScalarHeadModel
from prm.rollouts import RolloutConfig, rollout
from prm.sampling import Sampler, SamplingParams
from prm.search import EngineConfig, MCTSConfig, ScalarValueFn, TreeEngine, mcts_star
from prm.search.self_train import (
    Trace,
    collect_training_data,
    fit_policy,
    fit_value,
    tree_from_solutions,
)
from prm.training.loop import load_warm_start


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def warm_start_value(value_model, tokenizer, config, problems_config) -> list[float]:
    """MSE on the value targets of trees merged from noisy solutions (D_V0)."""
    vw = config.value_warm_start
    rng = np.random.default_rng(config.seed + 2)
    samples = []
    for problem in generate_problems(vw.problems, seed=config.seed + 3, config=problems_config):
        solutions = [noisy_expert_steps(problem, rng, vw.error_rate) for _ in range(vw.solutions)]
        tree = tree_from_solutions(
            problem,
            encode(tokenizer, problem.prompt),
            [[encode(tokenizer, s) for s in steps] for steps in solutions],
            [float(verify(problem, "".join(steps))) for steps in solutions],
        )
        samples += collect_training_data([tree], config.self_train.correct_reward)[1]
    return fit_value(
        value_model,
        samples,
        steps=vw.steps,
        batch_size=config.self_train.batch_size,
        learning_rate=vw.lr,
        pad_id=config.warm_start.model.pad_token_id,
        seed=config.seed,
    )


def search(policy, value_model, env, tokenizer, problems, config, *, full: bool, key):
    engine_config = EngineConfig(
        max_step_tokens=config.engine.max_step_tokens,
        max_length=config.engine.max_length,
        sampling=SamplingParams(temperature=config.engine.temperature),
    )
    engine = TreeEngine(
        Sampler(policy),
        env,
        tokenizer,
        ScalarValueFn(value_model, pad_id=config.warm_start.model.pad_token_id),
        engine_config,
        key=key,
    )
    trees = engine.new_trees(problems)
    mcts_star(trees, engine, MCTSConfig(**config.mcts.to_dict(), full=full))
    return trees, engine


def sample(policy, env, tokenizer, problems, config, n: int, key):
    """n episodes per problem at the search temperature (rows problem-major)."""
    rollout_config = RolloutConfig(
        max_step_tokens=config.engine.max_step_tokens,
        max_length=config.engine.max_length,
        sampling=SamplingParams(temperature=config.engine.temperature),
        group_size=n,
    )
    return rollout(Sampler(policy), env, tokenizer, problems, rollout_config, key=key)


def sampled_traces(policy, env, tokenizer, problems, config, key) -> tuple[list[Trace], float]:
    """ReST^EM's policy data: the distinct verified solutions among `samples_per_problem`
    samples per problem, and the fraction of them whose every step is truly correct."""
    n, correct = config.self_train.samples_per_problem, config.self_train.correct_reward
    batch = sample(policy, env, tokenizer, problems, config, n, key)
    traces: dict[tuple[int, ...], Trace] = {}
    process_correct = []
    for row in np.flatnonzero(batch.reward >= correct):
        length = int(batch.input_mask[row].sum())
        tokens = tuple(batch.tokens[row, :length].tolist())
        if tokens not in traces:
            traces[tokens] = Trace(tokens, tuple(batch.loss_mask[row, :length].tolist()))
            steps = [result.step_text for result in batch.steps[row]]
            process_correct.append(all(step_correctness(problems[row // n], steps)))
    return list(traces.values()), float(np.mean(process_correct)) if traces else float("nan")


def fit_steps(fixed: int, examples: int, batch_size: int, epochs: float) -> int:
    """`fixed` Adam steps if set, else `epochs` passes: ceil(epochs · examples / batch_size)."""
    return fixed or max(1, math.ceil(epochs * examples / batch_size))


def evaluate(policy, value_model, env, tokenizer, problems, config, key) -> dict[str, float]:
    correct = config.self_train.correct_reward
    rollout_config = RolloutConfig(
        max_step_tokens=config.engine.max_step_tokens, max_length=config.engine.max_length
    )
    greedy = rollout(Sampler(policy), env, tokenizer, problems, rollout_config)
    greedy_tokens = float(greedy.loss_mask.sum()) / len(problems)
    trees, engine = search(
        policy, value_model, env, tokenizer, problems, config, full=False, key=key
    )
    answers = [tree.answer() for tree in trees]
    results = {
        "greedy_accuracy": float(np.mean(greedy.reward >= correct)),
        "greedy_tokens": greedy_tokens,
        "mcts_accuracy": float(
            np.mean([a is not None and t.correct(a, correct) for t, a in zip(trees, answers)])
        ),
        "mcts_tokens": float(np.mean(list(engine.stats["tokens"].values()))),
    }
    if config.compare:
        n = max(1, round(results["mcts_tokens"] / max(greedy_tokens, 1.0)))
        sampled = sample(policy, env, tokenizer, problems, config, n, jax.random.fold_in(key, 1))
        lengths = sampled.input_mask.sum(axis=1)
        scores = ScalarValueFn(value_model, pad_id=config.warm_start.model.pad_token_id)(
            [row[:length].tolist() for row, length in zip(sampled.tokens, lengths)]
        )
        best_of_n, majority = [], []
        for q, problem in enumerate(problems):
            rows = range(q * n, (q + 1) * n)
            best = max(rows, key=lambda r: scores[r])
            best_of_n.append(sampled.reward[best] >= correct)
            votes = collections.Counter(a for r in rows if (a := sampled.answers[r]) is not None)
            majority.append(bool(votes) and votes.most_common(1)[0][0] == str(problem.answer))
        results.update(
            {
                "n": n,
                "sampled_tokens": float(sampled.loss_mask.sum()) / len(problems),
                "best_of_n_accuracy": float(np.mean(best_of_n)),
                "self_consistency_accuracy": float(np.mean(majority)),
            }
        )
    return results


def process_correct_fraction(trees, correct: float) -> float:
    """Among verified traces, the fraction whose every step is truly correct."""
    flags_ = [
        all(step_correctness(tree.task, tree.step_texts(i)))
        for tree in trees
        for i in tree.done_nodes()
        if tree.correct(i, correct)
    ]
    return float(np.mean(flags_)) if flags_ else float("nan")


def run(config: ml_collections.ConfigDict, workdir: str | None) -> list[dict]:
    start = time.time()
    policy, tokenizer = load_warm_start(config.warm_start)
    env = ChainArithmeticEnv()
    problems_config = ChainConfig(min_ops=config.problems.min_ops, max_ops=config.problems.max_ops)
    train = generate_problems(config.problems.train, seed=config.seed, config=problems_config)
    test = generate_problems(
        config.problems.test, seed=config.seed, split="test", config=problems_config
    )
    value_model = ScalarHeadModel(nnx.clone(policy), rngs=nnx.Rngs(config.seed + 1))
    value_warm = warm_start_value(value_model, tokenizer, config, problems_config)
    key = jax.random.key(config.seed)
    records = []

    def record(iteration: int, extra: dict) -> None:
        metrics = evaluate(
            policy, value_model, env, tokenizer, test, config, jax.random.fold_in(key, 1000)
        )
        records.append({"iteration": iteration, **extra, **metrics, "time_s": time.time() - start})
        print(json.dumps(records[-1]), flush=True)

    record(0, {"value_warm_start_mse": value_warm[-1]})
    st = config.self_train
    for iteration in range(1, st.iterations + 1):
        iteration_key = jax.random.fold_in(key, iteration)
        if st.traces == "sampling":
            traces, process_correct = sampled_traces(
                policy, env, tokenizer, train, config, iteration_key
            )
            samples = []  # ReST^EM has no value model: V stays V_0
            extra = {"traces": len(traces), "trace_process_correct": process_correct}
        else:
            trees, engine = search(
                policy, value_model, env, tokenizer, train, config, full=True, key=iteration_key
            )
            traces, samples = collect_training_data(trees, st.correct_reward)
            extra = {
                "traces": len(traces),
                "value_samples": len(samples),
                "trace_process_correct": process_correct_fraction(trees, st.correct_reward),
                "search_peak_cache_mb": engine.stats["peak_cache_bytes"] / 2**20,
            }
        pad = config.warm_start.model.pad_token_id
        if traces:
            steps = fit_steps(st.policy_steps, len(traces), st.batch_size, st.epochs)
            extra["policy_steps"] = steps
            extra["policy_nll"] = fit_policy(
                policy, traces, steps=steps, batch_size=st.batch_size,
                learning_rate=st.policy_lr, pad_id=pad, seed=iteration,
            )[-1]  # fmt: skip
        if samples:
            steps = fit_steps(st.value_steps, len(samples), st.batch_size, st.epochs)
            extra["value_steps"] = steps
            extra["value_mse"] = fit_value(
                value_model, samples, steps=steps, batch_size=st.batch_size,
                learning_rate=st.value_lr, pad_id=pad, seed=iteration,
            )[-1]  # fmt: skip
        record(iteration, extra)
    if workdir:
        path = pathlib.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "results.json").write_text(
            json.dumps({"config": config.to_dict(), "records": records}, indent=1, default=str)
        )
    return records


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import several experiments.
    _CONFIG = config_flags.DEFINE_config_file(
        "config", "configs/rest_mcts.py", "Experiment config."
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json goes.")
    app.run(main)
