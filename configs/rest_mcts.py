"""ReST-MCTS* self-training on chain arithmetic mod 10 (experiments/rest_mcts.py).

    python -m experiments.rest_mcts --config=configs/rest_mcts.py --workdir=/tmp/rest_mcts
    python -m experiments.rest_mcts --config=configs/rest_mcts.py:smoke --workdir=/tmp/rest_smoke

The policy is the chain SFT warm start (`configs/chain_sft.py`: ~0.4M parameters, SFT on noisy
expert solutions of 2-6 operations, 10% wrong results), trained once into
`~/.cache/prm/warm_starts/` by `prm.training.loop.ensure_warm_start` and shared with the label
collection configs. A value model V_0 (a scalar head on a copy of it) is fitted by MSE on
ReST-MCTS* targets of trees merged from several noisy solutions per problem (the paper's D_V0),
then each self-training iteration runs MCTS* in "full"
mode on the training problems, SFTs the policy on verified traces and regresses V on the
searched trees' value targets. After each iteration: greedy accuracy, MCTS* accuracy and, at
equal generated tokens, best-of-N (V_θ as verifier) and self-consistency (majority answer).

Each fit runs `epochs` passes over its data (ceil(epochs · examples / batch) Adam steps; the paper
trains 2-3 epochs), and the policy fine-tunes at `policy_lr` = 1e-4, a thirtieth of its SFT rate
(the paper's 3e-6 to 2e-5 for 7B models): the first runs (24 training problems, 60 policy steps
at 1e-3: `train=24,test=32,policy_steps=60,value_steps=100,policy_lr=0.001`) collapsed the policy
after one iteration, and at 1e-3 even 8 steps do (docs/RESULTS.md).
`traces=sampling` is the paper's ReST^EM baseline: the policy data are the verified ones among
`samples` temperature samples per training problem (no search, no value update), for the
trace-quality and self-training comparison of ReST-MCTS* §4.

What a default run should show: MCTS* traces more often process-correct than sampled ones
(`trace_process_correct`), and greedy accuracy after self-training at least that of ReST^EM.

Options: `smoke` (seconds; the chain SFT smoke warm start), `iterations=<int>`, `seed=<int>`,
`train=<int>` and `test=<int>` (problems searched per iteration and evaluated),
`traces=mcts|sampling`, `samples=<int>` (ReST^EM samples per problem), `epochs=<float>`,
`policy_steps=<int>` and `value_steps=<int>` (fixed step counts instead of epochs; 0 = epochs),
`policy_lr=<float>`.

    python -m experiments.rest_mcts --config=configs/rest_mcts.py:traces=sampling --workdir=/tmp/rest_em
"""

from __future__ import annotations

import ml_collections

from configs import chain_sft
from configs.common import parse_arg

TRACE_SOURCES = ("mcts", "sampling")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, iterations=2, seed=0, train=96, test=64, traces="mcts",
                     samples=16, epochs=3.0, policy_steps=0, value_steps=0,
                     policy_lr=1e-4)  # fmt: skip
    if opts.traces not in TRACE_SOURCES:
        raise ValueError(f"traces={opts.traces!r}: use one of {', '.join(TRACE_SOURCES)}.")
    c = ml_collections.ConfigDict(
        {
            "seed": opts.seed,
            # The policy's warm start (a whole run config); its model config is the policy's.
            "warm_start": chain_sft.get_config("smoke" if opts.smoke else None),
            "problems": {"min_ops": 2, "max_ops": 4, "train": opts.train, "test": opts.test},
            # D_V0: trees merged from `solutions` noisy expert solutions per problem, each result
            # wrong with probability `error_rate` (enough wrong branches to learn from).
            "value_warm_start": {
                "solutions": 4,
                "problems": 64,
                "error_rate": 0.2,
                "steps": 200,
                "lr": 1e-3,
            },
            "engine": {"max_step_tokens": 12, "max_length": 128, "temperature": 0.7},
            # Self-training search (full mode) and test-time search (evaluation mode).
            "mcts": {
                "iterations": 12,
                "branch": 3,
                "exploration": 0.5,
                "unvisited_bonus": 0.9,
                "roll_forward_steps": 1,
                "roll_branch": 1,
                "alpha": 0.5,
                "end_gate": 0.8,
            },
            "self_train": {
                "iterations": opts.iterations,
                "traces": opts.traces,
                "samples_per_problem": opts.samples,
                "epochs": opts.epochs,
                "policy_steps": opts.policy_steps,  # 0: ceil(epochs * traces / batch_size)
                "value_steps": opts.value_steps,  # 0: ceil(epochs * samples / batch_size)
                "batch_size": 16,
                "policy_lr": opts.policy_lr,
                "value_lr": 1e-3,
                "correct_reward": 1.0,
            },
            "compare": True,  # best-of-N and self-consistency at MCTS*'s token budget
        }
    )
    if opts.smoke:
        c.problems.update({"train": 2, "test": 2})
        c.value_warm_start.update({"problems": 2, "steps": 3})
        c.mcts.iterations = 2
        c.self_train.update({"iterations": 1, "batch_size": 2, "samples_per_problem": 2})
    return c
