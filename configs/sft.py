"""SFT warm start of the default tiny policy on noisy expert demonstrations (synthetic world).

A ~0.7M-parameter Qwen3-style decoder (d=128, 2 layers, vocabulary 1024, context 256) learns the
Search-R1 protocol from scratch on the noisy expert's trajectories (`prm.data.demonstrations`):
search one hop at a time with a precise query, read the `<information>` block, answer. Rollouts
of RL configs start from its checkpoint (`prm.trainers.sft.ensure_sft_checkpoint`). Launch:

    python -m experiments.train --config=configs/sft.py --workdir=/tmp/sft
    python -m experiments.train --config=configs/sft.py:smoke --workdir=/tmp/sft_smoke

The first run builds the world's tokenizer and BM25 index into `data.cache_dir` (default
`$PRM_CACHE_DIR/worlds` or `~/.cache/prm/worlds`, ~10 s). The demonstrations cover the world's
"train" questions only: `rl_fraction=0.5` holds half of the train share back as the "rl" split,
which RL configs train on (the warm start memorises the questions it is trained on). 600 steps
take ~14 minutes on 2 quiet CPU cores (26 min on a shared machine). At steps 300 and 600 the
trainer plays the test questions greedily with real multi-turn rollouts (sampler + BM25) and
writes `workdir/qa_test_step<N>.{md,csv}`: EM/F1 per question type for the policy next to the
noisy expert with the same retriever. What the run shows (docs/RESULTS.md, seed 0): the loss
falls from log 1024 ≈ 6.9 to ~0.09; test EM 0.254 overall (bridge 0.18, comparison 0.42,
single 0.38, compositional 0) against the noisy expert's 0.93: above zero on every 1-2 hop type
and far below the expert, room for RL.

Options: `smoke` (a few steps on a tiny world, for tests), `steps=<int>`.
"""

from __future__ import annotations

import ml_collections

from configs.common import base_config, model_config, parse_arg

# The world tokenizer's `<|endoftext|>` (its only special token, trained first: id 0).
END_OF_TEXT_ID = 0
VOCAB_SIZE = 1024
SEQ_LEN = 256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, smoke=False, steps=600)
    c = base_config()
    c.trainer = "sft"
    c.total_steps = opts.steps
    c.checkpoint_every = 200
    c.eval_every = 300
    c.model = model_config("qwen3", "tiny", vocab_size=VOCAB_SIZE)
    c.model.update(
        {
            "hidden_size": 128,
            "num_heads": 4,
            "num_kv_heads": 4,
            "head_dim": 32,
            "intermediate_size": 384,
            # Positions past the 256-token context are never trained; the slack lets the
            # sampler decode a full step from any context length before the rollout cuts it.
            "max_position_embeddings": 2 * SEQ_LEN,
            "eos_token_ids": (END_OF_TEXT_ID,),
            "pad_token_id": END_OF_TEXT_ID,
        }
    )
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 30
    c.optim.weight_decay = 0.0
    c.data = ml_collections.ConfigDict(
        {
            "name": "synthetic_demos",
            "batch_size": 32,
            "seq_len": SEQ_LEN,
            # WorldConfig fields. Half the train questions are held back for RL ("rl" split): the
            # warm start memorises the questions it is trained on, so RL learns on unseen ones.
            "world": {"rl_fraction": 0.5},
            "expert": {
                "vague_query_rate": 0.1,
                "wrong_query_rate": 0.1,
                "redundant_search_rate": 0.1,
                "premature_answer_rate": 0.05,
            },
            "env": {},  # EnvConfig fields of the expert's episodes; {} = WORLD_ENV_CONFIG
            "cache_dir": "",
            "vocab_size": VOCAB_SIZE,
            "seed": 0,
        }
    )
    c.eval.num_batches = 4
    c.eval.qa = ml_collections.ConfigDict(
        {
            "split": "test",
            "max_questions": 0,  # 0: the whole split
            "batch_size": 128,
            "max_step_tokens": 48,
            # Forced before the final, answer-only call, after the last observation.
            "forced_answer": "<answer>",
            "expert": True,  # also report the noisy expert with the same retriever
        }
    )
    if opts.smoke:
        c.total_steps = 6
        c.checkpoint_every = 3
        c.eval_every = 6
        c.keep_checkpoints = 2
        c.optim.warmup_steps = 2
        c.progress = False
        c.data.batch_size = 4
        c.data.world = {
            "num_persons": 12,
            "num_cities": 6,
            "num_countries": 2,
            "num_companies": 4,
            "num_films": 4,
            "questions_per_type": (
                ("single", 30),
                ("bridge", 30),
                ("comparison", 10),
                ("compositional", 10),
            ),
            "rl_fraction": 0.5,
        }
        c.data.vocab_size = 512
        c.model.vocab_size = 512
        c.eval.num_batches = 1
        c.eval.qa.max_questions = 4
        c.eval.qa.max_step_tokens = 16
    return c


def rl_config(trainer: str, *, smoke: bool, seed: int, steps: int, evaluations: int,
              questions: int) -> ml_collections.ConfigDict:  # fmt: skip
    """What every RL config on the synthetic world starts from: this SFT run as its warm start
    (policy and frozen reference = a copy of it), its world and evaluation, `questions` per step,
    held-out EM at step 0 and `evaluations` times along the run, one constant-lr optimiser, and
    the shared PPO clip + k3 KL loss with π_old taken from the sampler (exact at temperature 1 up
    to float error between the cached decode and a full forward: no recomputation on CPU)."""
    from prm.training.policy_step import policy_loss_block  # noqa: PLC0415

    warm_start = get_config("smoke" if smoke else None)
    c = get_config("smoke" if smoke else None)
    c.trainer = trainer
    c.seed = seed
    c.total_steps = steps
    c.checkpoint_every = 20
    c.eval_every = max(steps // evaluations, 1)
    c.eval_at_start = True
    c.warm_start = warm_start
    c.reference = "copy"
    # lr 1e-4, chosen on the dev split (docs/RESULTS.md): 3e-4 raises EM on the RL questions
    # faster but drifts (k3 KL ~0.19 after 150 steps) and loses dev EM; 1e-3 collapses.
    c.optim.update(lr=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.0)
    c.data = ml_collections.ConfigDict(
        {**warm_start.data.to_dict(), "name": "world_questions", "batch_size": questions,
         "seed": seed, "train_split": "rl"}
    )  # fmt: skip
    c.policy_loss = policy_loss_block(recompute_old_logprobs=False)
    c.eval.qa.expert = False
    return c


def group_rl_config(trainer: str, opts: ml_collections.ConfigDict, group_size: int = 5,
                    **rollout: object) -> ml_collections.ConfigDict:  # fmt: skip
    """`rl_config` in Search-R1's comparison setting, shared by the trainers that play groups of
    full trajectories (`configs/search_r1.py`, `spa_rl.py`, `step_search.py`, `prime.py`): 8
    questions × `group_size` trajectories per step at temperature 1, steps of at most 48 tokens,
    3 evaluations; `opts.smoke`: 3 steps of 2 questions × 2 trajectories, steps of 16 tokens.
    `opts` holds smoke, seed and steps; `rollout` adds fields to the rollout block."""
    c = rl_config(trainer, smoke=opts.smoke, seed=opts.seed, steps=opts.steps, evaluations=3,
                  questions=8)  # fmt: skip
    c.rollout = ml_collections.ConfigDict(
        {"group_size": group_size, "temperature": 1.0, "max_step_tokens": 48, **rollout}
    )
    if opts.smoke:
        c.total_steps = 3
        c.checkpoint_every = 2
        c.eval_every = 3
        c.data.batch_size = 2
        c.rollout.group_size = 2
        c.rollout.max_step_tokens = 16
    return c
