"""SFT warm start of a tiny policy on chain arithmetic mod 10 (noisy expert demonstrations).

A ~0.4M-parameter Qwen3-style decoder with a character-level vocabulary (`prm.envs.
chain_arithmetic`) learns from scratch to solve problems of 2..6 operations one line per step,
from a noisy expert that writes a wrong result with probability 0.1 per operation
(`prm.data.chain`). Its sampled solutions are the raw material of Math-Shepherd and OmegaPRM
step labels (`experiments/collect.py`): mostly right, sometimes wrong at a known step.

    python -m experiments.train --config=configs/chain_sft.py --workdir=/tmp/chain_sft
    python -m experiments.train --config=configs/chain_sft.py:smoke --workdir=/tmp/chain_smoke

Label collection (`configs/math_shepherd.py`, `configs/omegaprm.py`) names this config as its
warm start: `prm.training.loop.ensure_warm_start` trains it once into
`~/.cache/prm/warm_starts/sft-<hash>/` (or `$PRM_CACHE_DIR/warm_starts`) and reuses it.

Options: `smoke` (a few steps, for tests), `steps=<int>`, `error_rate=<float>`.
"""

from __future__ import annotations

import ml_collections

from configs.common import base_config, model_config, parse_arg
from prm.envs.chain_arithmetic import CHAIN_VOCAB_SIZE

END_OF_TEXT_ID = 0  # the chain tokenizer's <|endoftext|>
SEQ_LEN = 100  # the longest 6-operation demonstration has 98 tokens


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, steps=300, error_rate=0.1)
    c = base_config()
    c.trainer = "sft"
    c.total_steps = opts.steps
    c.checkpoint_every = 100
    c.eval_every = 150
    c.model = model_config("qwen3", "tiny", vocab_size=CHAIN_VOCAB_SIZE)
    c.model.update(
        {
            "hidden_size": 128,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 4,
            "head_dim": 32,
            "intermediate_size": 384,
            "max_position_embeddings": 256,
            "eos_token_ids": (END_OF_TEXT_ID,),
            "pad_token_id": END_OF_TEXT_ID,
        }
    )
    c.optim.lr = 3e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 30
    c.optim.weight_decay = 0.0
    c.data = ml_collections.ConfigDict(
        {
            "name": "chain_demos",
            "batch_size": 32,
            "seq_len": SEQ_LEN,
            "min_ops": 2,
            "max_ops": 6,
            "operators": "+-*",
            "error_rate": opts.error_rate,
            "seed": 0,
        }
    )
    c.eval.num_batches = 4
    if opts.smoke:
        c.total_steps = 4
        c.checkpoint_every = 2
        c.eval_every = 4
        c.keep_checkpoints = 2
        c.optim.warmup_steps = 1
        c.progress = False
        c.data.batch_size = 4
        c.eval.num_batches = 1
    return c
