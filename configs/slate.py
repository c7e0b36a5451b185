"""SLATE on the synthetic multi-hop world, from the SFT warm start (and the paper's settings).

SLATE (Samarinas et al., arXiv 2602.23440; notes: slate.md; trainer: `prm/trainers/slate.py`):
per question one trajectory grows step by step; at every step k = 5 siblings are sampled from
the shared prefix (one fork of the KV cache), each judged on its reasoning and its query or
answer (ternary; here the world's reference judge, exact from the gold chain, `judge_error=p`
corrupts a fraction p of its scores), rewarded by Eq. 3/4 (λ = 0.1, B = 4), given advantages
among its siblings only (Eq. 5), and the trajectory continues with a sibling drawn from
softmax(A/η), η = 0.7. Every sibling of every step is trained: PPO clip 0.2 (dual clip 3) + k3
KL 0.001 to the frozen initial policy, token-level ratio and token-mean (verl's actor; the paper's
sequence ratio by `--config.policy_loss.ratio_level=sequence`), one update per batch. Launch:

    python -m experiments.train --config=configs/slate.py --workdir=workdirs/slate
    python -m experiments.train --config=configs/slate.py:seed=1 --workdir=workdirs/slate_s1
    python -m experiments.train --config=configs/slate.py:smoke --workdir=/tmp/slate_smoke

The policy is the SFT warm start of `configs/sft.py`, shipped with prm (`prm/assets/warm_starts/`;
were its config changed, it is trained once into `~/.cache/prm/warm_starts/`, ~14 min on 2 CPU
cores). The default run: 8 questions per step × up to
B·k = 20 siblings each (rows padded to a multiple of 8·k), 60 steps, held-out EM at steps 0, 30
and 60, on the world's "rl" questions (never seen by the warm start). Measured on 2 CPU cores
(2026-12-01, first warm start): 60 steps in 3 min 51 s with the cores to itself (3.7 s per step,
nearly all of it the update; sampling, retrieval and judging < 1 s), ~9 s per step with the
cores shared; ~2.7 judged steps per question, < 1 % invalid siblings, ~50 % tied groups.
Held-out EM (2026-12-02, lr 1e-4): 0.254 at the start, 0.287 at step 60 with seed 0 (what
`make train` prints), 0.279 ± 0.008 over 3 seeds — docs/RESULTS.md.

The SFT policy writes no `<think>` (its demonstrations have none), so every sibling's reasoning
scores −1 (empty) and that term cancels in Eq. 5: the signal is the query and answer scores.
What the run should show (docs/RESULTS.md): held-out EM on the test split at step 0 (the SFT
start) and at the end, per question type; over the steps, the judge's scores rising (`judge/query`,
`judge/answer`), `invalid_sibling_fraction` and `tied_group_fraction` falling, training EM of the
chosen trajectories rising, `chosen_rank` near 1 (selection follows the judge); and the measured
`advantage_variance/step` of SLATE's sibling advantages, to compare with Search-R1's.

Options: `smoke` (2 steps of 2 questions, k = 2, B = 2, on a tiny world, for tests),
`steps=<int>`, `seed=<int>`, `k=<int>`, `eta=<float>|argmax` (≤ 0 or argmax: the best sibling
continues), `budget=<int>` (B), `judge_error=<float>`, `action_choice=free|constrained` (free
generation parsed by the env, or the released code's choice of the action tag by
log-probability, §2.3), `questions=<int>` (per step).

Sweeps (`experiments.compare` takes several options per config; each (config, seed) is its own
run, named after its options, e.g. `slate-k=2-seed0`; 3 seeds each):

    python -m experiments.compare --seeds=3 --results=results/slate_k \
        --configs=configs/slate.py:k=2,configs/slate.py:k=5,configs/slate.py:k=8
    python -m experiments.compare --seeds=3 --results=results/slate_eta \
        --configs=configs/slate.py:eta=argmax,configs/slate.py:eta=0.3,configs/slate.py:eta=0.7,configs/slate.py:eta=2.0
    python -m experiments.compare --seeds=3 --results=results/slate_budget \
        --configs=configs/slate.py:budget=2,configs/slate.py:budget=3,configs/slate.py:budget=4
    python -m experiments.compare --seeds=3 --results=results/slate_judge_error \
        --configs=configs/slate.py:judge_error=0.0,configs/slate.py:judge_error=0.1,configs/slate.py:judge_error=0.3
    python -m experiments.compare --seeds=3 --results=results/slate_k2_argmax \
        --configs=configs/slate.py:k=2,eta=argmax,configs/slate.py:k=8,eta=argmax

What the sweeps should show: k, EM against sampled tokens (larger k costs k-fold tokens per
step; `tied_group_fraction` falls with k); η, argmax greedy paths against softmax exploration
(`chosen_rank`); B, a bridge or comparison question takes two searches and an answer, a
compositional one up to five steps, so a small B forces answers (`end/forced_answer`); judge error, how held-out EM degrades as a fraction of the judge's
scores is corrupted (`judge_stats/corrupted`). The ablations are configs/slate_full_trajectory.py
(no truncation) and configs/slate_mc.py (no judge).

`model=qwen2.5-3b|qwen2.5-7b` carries the paper's settings (§5): that Qwen2.5 architecture
loaded from a local HF directory (`init_from=<dir>` or `--config.model.init_from`; nothing is
downloaded), LoRA rank 16 / alpha 64 on all linear layers with the reference = LoRA off, AdamW
lr 1e-6 with 28.5 % warmup over 500 steps, 32 questions per step (≤ 640 sibling rows, one update,
micro-batches of 8), k = 5, B = 4, η = 0.7, Search-R1's NQ + HotpotQA training parquet with
top-3 retrieval from a Search-R1 retriever (`data.retriever_url`), observations ≤ 500 tokens,
`<think>` forced at every step, and the HTTP judge (Gemma-3-27B-it at temperature 0,
`judge.base_url`), greedy EM/F1 per data source on the test parquet every 100 steps. The
questions, tokenizer and retriever come from the `search_r1_questions` source
(`prm/data/questions.py`): the Search-R1 rows of `data.train_files` / `data.eval_files`, the HF
tokenizer of `model.init_from` (its chat template wraps Search-R1's prompt, `data.template`),
and the retriever server at `data.retriever_url`. Given a checkpoint, a retriever and a judge:

    python -m experiments.train --config=configs/slate.py:model=qwen2.5-3b,init_from=<hf dir> \
        --config.data.retriever_url=http://<host>:8000/retrieve \
        --config.judge.base_url=http://<host>:9000/v1 --workdir=workdirs/slate_qwen3b

The memory each device needs (no weights or devices: `prm.training.memory_plan`), on the
simulated `dry_run_devices` (default 8xH200), and a setting that does not fit (exit status 2):

    python -m experiments.train --config=configs/slate.py:model=qwen2.5-3b --config.dry_run=True
    python -m experiments.train --config=configs/slate.py:model=qwen2.5-7b --config.dry_run=True \
        --config.dry_run_devices=v5p-8
    python -m experiments.train --config=configs/slate.py:model=qwen2.5-7b --config.dry_run=True \
        --config.dry_run_devices=v5e-8 --config.mesh.fsdp=1 --config.mesh.data=8
"""

from __future__ import annotations

import ml_collections

from configs import sft
from configs.common import base_config, model_config, parse_arg
from prm.training.policy_step import policy_loss_block

# Qwen2.5 base models (their config.json; the weights come from `model.init_from`).
QWEN25 = {
    "qwen2.5-3b": dict(vocab_size=151936, hidden_size=2048, num_layers=36, num_heads=16,
                       num_kv_heads=2, head_dim=128, intermediate_size=11008,
                       tie_word_embeddings=True, max_position_embeddings=32768),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                       num_kv_heads=4, head_dim=128, intermediate_size=18944,
                       tie_word_embeddings=False, max_position_embeddings=131072),
}  # fmt: skip
QWEN_END_OF_TEXT = 151643


# The options of this file; the ablation configs (slate_full_trajectory.py, slate_mc.py) take
# those of them that apply to them.
OPTIONS = dict(
    smoke=False, steps=60, seed=0, k=5, eta="0.7", budget=4, judge_error=0.0,
    action_choice="free", questions=8, model="world", init_from="",
)  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = parse_arg(arg, **OPTIONS)
    if opts.model != "world":
        return paper_config(opts)
    return world_config("slate", opts)


def selection_temperature(eta: str) -> float:
    """The `eta` option: a float, or "argmax" (η = 0: the best sibling continues)."""
    if eta == "argmax":
        return 0.0
    try:
        return float(eta)
    except ValueError:
        raise ValueError(f"Config option 'eta' is a float or 'argmax'; got {eta!r}.") from None


def world_config(trainer: str, opts: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`trainer` on the synthetic world from the SFT warm start, with the reference judge; `opts`
    holds every name of `OPTIONS`."""
    c = sft.rl_config(trainer, smoke=opts.smoke, seed=opts.seed, steps=opts.steps,
                      evaluations=2, questions=opts.questions)  # fmt: skip
    c.rollout = rollout_config(opts, max_step_tokens=48, forced_answer="<answer>")
    c.judge = ml_collections.ConfigDict(
        # The world's exact judge; world, cache_dir and vocab_size come from `data`.
        {"name": "reference", "error_rate": opts.judge_error, "seed": opts.seed}
    )
    if opts.smoke:
        c.total_steps = 2
        c.checkpoint_every = 1
        c.eval_every = 2
        c.data.batch_size = 2
        c.rollout.k = 2
        c.rollout.budget = 2
        c.rollout.max_step_tokens = 12
    return c


def rollout_config(opts, *, max_step_tokens: int, forced_answer: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "k": opts.k,  # siblings per step
            "budget": opts.budget,  # B: judged steps per question
            "eta": selection_temperature(opts.eta),  # of softmax(A/η); ≤ 0: argmax
            "action_choice": opts.action_choice,
            "temperature": 1.0,
            "max_step_tokens": max_step_tokens,  # decode budget of one step (per stage)
            "invalid_reward": (-1, -1),  # (reasoning, action) of a sibling with no valid action
            "early_answer_bonus": 0.1,  # λ
            "bonus_indexing": "paper",  # t 1-indexed in λ(B − t)/B; "code": the released code's
            "forced_answer": forced_answer,  # forced after B steps without an answer
        }
    )


def paper_config(opts) -> ml_collections.ConfigDict:
    """The paper's run (slate.md §2.6, §5) for `opts.model` (see the module docstring)."""
    if opts.model not in QWEN25:
        raise ValueError(f"Unknown model {opts.model!r}; use world, {', '.join(QWEN25)}.")
    if opts.judge_error:
        raise ValueError("judge_error corrupts the world's reference judge; the paper's is HTTP.")
    c = base_config()
    c.trainer = "slate"
    c.seed = opts.seed
    c.total_steps = 500
    c.checkpoint_every = 100
    c.eval_every = 100
    c.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})  # weights and batch over all devices
    c.model = model_config("qwen2", init_from=opts.init_from)
    c.model.update(
        {
            **QWEN25[opts.model],
            "rope_theta": 1_000_000.0,
            "eos_token_ids": (QWEN_END_OF_TEXT,),
            "pad_token_id": QWEN_END_OF_TEXT,
            "dtype": "bfloat16",
            "param_dtype": "bfloat16",
            "remat": True,
        }
    )
    c.lora.rank = 16
    c.lora.alpha = 64.0
    c.reference = "lora_off"
    c.optim.lr = 1e-6
    c.optim.schedule = "constant"
    c.optim.warmup_steps = round(0.285 * c.total_steps)
    c.data = ml_collections.ConfigDict(
        {
            "name": "search_r1_questions",
            "train_files": ("data/nq_hotpotqa_train/train.parquet",),
            "eval_files": ("data/nq_hotpotqa_train/test.parquet",),
            "batch_size": 32,
            "seq_len": 4096 + 500,  # max_prompt_length + max_response_length
            "retriever_url": "http://127.0.0.1:8000/retrieve",
            "template": "search_r1",  # prm.data.questions.TEMPLATES
            # The policy's HF tokenizer (its chat template wraps the prompt): model.init_from's.
            "tokenizer": c.model.get_ref("init_from"),
            "env": {
                "topk": 3,
                "max_turns": 4,
                "max_obs_tokens": 500,
                "after_observation": "<think>",
            },
            "seed": opts.seed,
        }
    )
    c.rollout = rollout_config(opts, max_step_tokens=500, forced_answer="\n<answer>")
    # Greedy EM/F1 per data source on the eval files (`prm.evaluation.evaluate_dataset_config`).
    c.eval.qa = ml_collections.ConfigDict(
        {"split": "test", "max_questions": 0, "batch_size": 64, "max_step_tokens": 500,
         "forced_answer": c.rollout.forced_answer}
    )  # fmt: skip
    c.judge = ml_collections.ConfigDict(
        {
            "name": "http",
            "base_url": "http://127.0.0.1:9000/v1",
            "model": "google/gemma-3-27b-it",
            "temperature": 0.0,
            "cache_dir": "",
        }
    )
    c.policy_loss = policy_loss_block()  # verl's actor: π_old recomputed
    c.updates = ml_collections.ConfigDict(
        {"ppo_epochs": 1, "num_mini_batches": 1, "micro_batch_size": 8, "shuffle": True}
    )
    return c
