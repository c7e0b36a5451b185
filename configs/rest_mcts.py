"""ReST-MCTS* self-training on chain arithmetic mod 10 (experiments/rest_mcts.py).

    python -m experiments.rest_mcts --config=configs/rest_mcts.py --workdir=/tmp/rest_mcts
    python -m experiments.rest_mcts --config=configs/rest_mcts.py:smoke --workdir=/tmp/rest_smoke

A tiny policy is warm-started by SFT on noisy expert solutions (`noisy_expert_steps`, 20% wrong
results), a value model V_0 by MSE on ReST-MCTS* targets of trees merged from several noisy
solutions per problem (the paper's D_V0), then each self-training iteration runs MCTS* in "full"
mode on the training problems, SFTs the policy on verified traces and regresses V on the
searched trees' value targets. After each iteration: greedy accuracy, MCTS* accuracy and, at
equal generated tokens, best-of-N (V_θ as verifier) and self-consistency (majority answer).

Options: `smoke` (seconds), `iterations=<int>`, `seed=<int>`.
"""

from __future__ import annotations

import ml_collections

from configs.common import model_config, parse_arg
from prm.envs.chain_arithmetic import CHAIN_VOCAB_SIZE

END_OF_TEXT_ID = 0  # the chain tokenizer's <|endoftext|> (end of sequence and padding)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, iterations=2, seed=0)
    model = model_config("qwen3", "tiny", vocab_size=CHAIN_VOCAB_SIZE)
    model.update(
        {
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 16,
            "intermediate_size": 192,
            "max_position_embeddings": 256,
            "eos_token_ids": (END_OF_TEXT_ID,),
            "pad_token_id": END_OF_TEXT_ID,
        }
    )
    c = ml_collections.ConfigDict(
        {
            "seed": opts.seed,
            "model": model,
            "problems": {"min_ops": 2, "max_ops": 4, "train": 24, "test": 32},
            "warm_start": {"steps": 300, "batch_size": 32, "lr": 3e-3, "error_rate": 0.2},
            # D_V0: trees merged from this many noisy solutions per training problem.
            "value_warm_start": {"solutions": 4, "problems": 64, "steps": 200, "lr": 1e-3},
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
                "policy_steps": 60,
                "value_steps": 100,
                "batch_size": 16,
                "policy_lr": 1e-3,
                "value_lr": 1e-3,
                "correct_reward": 1.0,
            },
            "compare": True,  # best-of-N and self-consistency at MCTS*'s token budget
        }
    )
    if opts.smoke:
        c.problems.update({"train": 2, "test": 2})
        c.warm_start.update({"steps": 5, "batch_size": 4})
        c.value_warm_start.update({"problems": 2, "steps": 3})
        c.mcts.iterations = 2
        c.self_train.update({"iterations": 1, "policy_steps": 2, "value_steps": 2, "batch_size": 2})
    return c
