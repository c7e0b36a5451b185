"""Train-step throughput: prm's shared RL update vs google-tunix's GRPO step, same model and batch.

    python -m experiments.bench_train_step
    python -m experiments.bench_train_step --repeats=5 --steps=10 \\
        --tunix_python=/root/.cache/prm/bench-tunix/bin/python

prm side: the loop's jitted, donated update (`prm.training.update.make_update_fn`) with
`prm.training.policy_step.policy_loss` (PPO clip ε=0.2 + dual clip 3, k3 KL β=0.001, token-mean,
entropy logged). tunix side (0.1.7, run in its own venv in a subprocess because importing tunix
flips a flax global): `PeftTrainer.jit_train_and_eval_step(cache_nnx_graph=True)`, the step
tunix's RL trainer runs, with `grpo_loss_fn` configured alike (β=0.001 `low_var_kl`,
ε=0.2, dual clip 3, token-mean; it always computes entropy). Both: a Qwen3-style decoder of the
same shape in float32, AdamW after global-norm clipping, one update per step.

Timing (`experiments.benchmarking.interleave`): after 2 warm-up (compile) steps per side, a
round runs `steps` steps of one side, each waited on with `block_until_ready`; the sides
alternate rounds (the tunix process waits while prm runs and vice versa) and each figure is a
side's best round over `--repeats` rounds, divided by `steps`, printed with the 1-minute load
average and the cores other processes kept busy (the tunix worker's CPU counts as its side's
own). The ratio is printed only when the load held still (`--max-load-change`,
`--max-others`), otherwise REFUSED and why. tokens/s = batch × (prompt + completion) / step
time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.benchmarking import (
    Case,
    add_load_rule_arguments,
    figure,
    format_ratio,
    interleave,
    load_rule,
    verdict,
)

SHAPE = dict(num_layers=4, vocab_size=4096, hidden_size=256, num_heads=8, num_kv_heads=4,
             head_dim=32, intermediate_size=768, rope_theta=1_000_000.0, rms_norm_eps=1e-6)  # fmt: skip
BATCH, PROMPT, COMPLETION = 16, 32, 96
BETA, EPSILON, DUAL_CLIP, LR = 0.001, 0.2, 3.0, 1e-6


def _synthetic(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    prompt = rng.integers(2, SHAPE["vocab_size"], (BATCH, PROMPT), dtype=np.int32)
    completion = rng.integers(2, SHAPE["vocab_size"], (BATCH, COMPLETION), dtype=np.int32)
    advantages = rng.normal(size=(BATCH,)).astype(np.float32)
    old = -rng.uniform(7.0, 9.0, (BATCH, COMPLETION)).astype(np.float32)
    ref = -rng.uniform(7.0, 9.0, (BATCH, COMPLETION)).astype(np.float32)
    return prompt, completion, advantages, old, ref


def _run_steps(step, steps: int) -> None:
    for _ in range(steps):
        step()


def _register_policy_update_trainer() -> None:
    from prm.registry import TRAINERS
    from prm.training.policy_step import PolicyLossConfig, policy_loss
    from prm.training.trainer import Trainer

    loss_config = PolicyLossConfig(
        clip_eps_low=EPSILON, clip_ratio_c=DUAL_CLIP, kl_coef=BETA, kl_estimator="k3"
    )

    @TRAINERS.register("bench_policy_update")
    class _PolicyUpdate(Trainer):
        def loss(self, models, batch, rng):
            return policy_loss(models["policy"], batch, loss_config)

        def evaluate(self, models, step):
            return {}


def prm_step():
    """prm's warmed-up (compiled) train step as a no-argument callable."""
    import jax
    import numpy as np

    from configs.common import base_config
    from prm.registry import TRAINERS
    from prm.training.loop import build_run
    from prm.training.sharding import global_batch
    from prm.training.update import make_update_fn

    if "bench_policy_update" not in TRAINERS:
        _register_policy_update_trainer()
    config = base_config()
    config.trainer = "bench_policy_update"
    config.model.update(SHAPE)
    config.optim.lr = LR
    config.data = dict(name="toy_repeat", batch_size=BATCH, seq_len=8, vocab_size=8)
    prompt, completion, advantages, old, ref = _synthetic()
    pad = np.zeros((BATCH, PROMPT), np.float32)
    host_batch = {
        "tokens": np.concatenate([prompt, completion], axis=1),
        "loss_mask": np.concatenate([pad, np.ones((BATCH, COMPLETION), np.float32)], axis=1),
        "advantages": np.repeat(advantages[:, None], PROMPT + COMPLETION, axis=1),
        "old_logprobs": np.concatenate([pad, old], axis=1),
        "ref_logprobs": np.concatenate([pad, ref], axis=1),
    }
    run = build_run(config, tempfile.mkdtemp())
    run.checkpointer.close()
    with jax.set_mesh(run.mesh):
        batch = global_batch(host_batch, run.mesh)
    update = make_update_fn(run, BATCH)
    rows = np.arange(BATCH, dtype=np.int32)

    def step():
        with jax.set_mesh(run.mesh):
            run.state, metrics = update(run.state, run.frozen, batch, rows)
        jax.block_until_ready(metrics)

    for _ in range(2):
        step()
    return step


def tunix_step():
    """tunix's warmed-up (compiled) GRPO train step as a no-argument callable."""
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tunix.models.qwen3 import model as qwen3
    from tunix.rl.algo_core import grpo_loss_fn
    from tunix.rl.common import TrainExample
    from tunix.rl.grpo.grpo_learner import GRPOConfig
    from tunix.sft import peft_trainer

    model_config = qwen3.ModelConfig(
        num_layers=SHAPE["num_layers"],
        vocab_size=SHAPE["vocab_size"],
        embed_dim=SHAPE["hidden_size"],
        hidden_dim=SHAPE["intermediate_size"],
        num_heads=SHAPE["num_heads"],
        head_dim=SHAPE["head_dim"],
        num_kv_heads=SHAPE["num_kv_heads"],
        rope_theta=int(SHAPE["rope_theta"]),
        norm_eps=SHAPE["rms_norm_eps"],
    )
    model = qwen3.Qwen3(model_config, rngs=nnx.Rngs(0))
    algo = GRPOConfig(
        num_generations=4,
        beta=BETA,
        kl_loss_mode="low_var_kl",
        epsilon=EPSILON,
        loss_agg_mode="token-mean",
    )
    algo.temperature = 1.0
    algo.epsilon_c = DUAL_CLIP
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(LR, weight_decay=0.01))
    trainer = peft_trainer.PeftTrainer(
        model, tx, peft_trainer.TrainingConfig(eval_every_n_steps=10**9)
    )
    trainer.with_loss_fn(
        lambda model, train_example: grpo_loss_fn(model, train_example, algo, 0, 1),
        has_aux=True,
    )
    train_step, _ = trainer.jit_train_and_eval_step(cache_nnx_graph=True)
    prompt, completion, advantages, old, ref = _synthetic()
    example = TrainExample(
        prompt_ids=jnp.asarray(prompt),
        prompt_mask=jnp.ones_like(jnp.asarray(prompt)),
        completion_ids=jnp.asarray(completion),
        completion_mask=jnp.ones((BATCH, COMPLETION), jnp.float32),
        advantages=jnp.asarray(advantages),
        ref_per_token_logps=jnp.asarray(ref),
        old_per_token_logps=jnp.asarray(old),
    )
    import jax

    def step():
        jax.block_until_ready(train_step({"train_example": example}))

    for _ in range(2):
        step()
    return step


def tunix_worker(steps: int) -> None:
    """Runs in the tunix venv: `steps` steps per line read from stdin, then answers "done"."""
    step = tunix_step()
    print("ready", flush=True)
    for _ in sys.stdin:
        _run_steps(step, steps)
        print("done", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per side")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--tunix_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--tunix_python", default=os.path.expanduser("~/.cache/prm/bench-tunix/bin/python")
    )
    add_load_rule_arguments(parser)
    args = parser.parse_args(argv)
    if args.tunix_worker:
        tunix_worker(args.steps)
        return
    worker = subprocess.Popen(
        [args.tunix_python, "-m", "experiments.bench_train_step", "--tunix_worker"]
        + [f"--steps={args.steps}"],
        cwd=Path(__file__).resolve().parents[1],  # the repository root, for `-m`
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    step = prm_step()
    if worker.stdout.readline().strip() != "ready":
        sys.exit(f"tunix side failed to start (exit code {worker.wait()}); run it alone with "
                 f"{args.tunix_python} -m experiments.bench_train_step --tunix_worker to see "
                 "why.")  # fmt: skip

    def tunix_round() -> None:
        worker.stdin.write("go\n")
        worker.stdin.flush()
        if worker.stdout.readline().strip() != "done":
            raise RuntimeError(f"tunix worker stopped (exit code {worker.poll()}).")

    try:
        result = interleave(
            {
                "prm": lambda: _run_steps(step, args.steps),
                "tunix": Case(tunix_round, processes=(worker.pid,)),
            },
            rounds=args.repeats,
            rule=load_rule(args),
        )
    finally:
        worker.stdin.close()
        worker.wait()
    prm, tunix = result["prm"], result["tunix"]
    tokens = BATCH * (PROMPT + COMPLETION)
    print(f"model {SHAPE}, batch {BATCH}×({PROMPT}+{COMPLETION}) tokens, float32, CPU")
    for name, timing in (("prm  ", prm), ("tunix", tunix)):
        seconds = timing.seconds / args.steps
        print(
            figure(
                f"{name} step",
                timing,
                f"{seconds * 1e3:8.1f} ms  {tokens / seconds:10.0f} tokens/s",
            )
        )
    speedup = result.ratio(tunix, prm)
    print(
        f"speed-up prm / tunix: {format_ratio(speedup, result, tunix, prm)} "
        f"{verdict(speedup, 1.2)} (best of {args.repeats} interleaved rounds × {args.steps} "
        f"steps; rounds' load {min(result.loads):.2f}..{max(result.loads):.2f})"
    )


if __name__ == "__main__":
    main()
