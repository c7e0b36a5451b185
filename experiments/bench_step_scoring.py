"""Benchmark: implicit-PRM step rewards from one forward vs one forward per step prefix.

prm scores every step of a batch with one PRM and one reference forward over the whole rows
(`prm.trainers.implicit_prm.implicit_step_rewards`: token rewards β·log π_φ/π_ref, summed per
step). The peer scores the way a per-step verifier is queried: for each step k, the PRM and the
reference run on the prefix that ends with step k (cut at the batch's longest such prefix), the
prefix's Q value q^k = Σ of its token rewards is read, and r^k = q^k − q^{k−1}. Both give the
same step rewards (checked here before timing, and in `tests/experiments/test_bench_step_scoring.py`);
the peer costs S forward pairs of growing length instead of one.

The model is the shape of the synthetic world's SFT policy (Qwen3, d=128, 2 layers, vocab
1024), random weights; rows are a `--prompt`-token prompt then S steps of `--step_tokens`
tokens each. Timing: `experiments.benchmarking.interleave` (alternating rounds, the load average
and other processes' busy cores recorded; a ratio is refused under moving load).

    python -m experiments.bench_step_scoring --steps=4,8,16 --rounds=5
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarking import LoadRule, format_ratio, interleave, load_average
from prm.models import ModelConfig, Transformer
from prm.trainers.implicit_prm import implicit_step_rewards, implicit_token_rewards

BETA = 0.05


def per_prefix_step_rewards(
    prm: nnx.Module,
    reference: nnx.Module,
    tokens: np.ndarray,
    input_mask: np.ndarray,
    step_id: np.ndarray,
    beta: float,
    num_steps: int,
) -> np.ndarray:
    """`[B, S]` step rewards r^k = q^k − q^{k−1}, where q^k is the implicit Q value of the prefix
    ending with step k, scored by its own PRM and reference forward (0 for absent steps)."""
    tokens, input_mask, step_id = map(np.asarray, (tokens, input_mask, step_id))
    rows, length = tokens.shape
    positions = np.arange(length)
    q_before = np.zeros(rows, np.float32)
    out = np.zeros((rows, num_steps), np.float32)
    for k in range(num_steps):
        in_step = step_id == k
        present = in_step.any(axis=1)
        if not present.any():
            continue
        end = np.where(present, length - 1 - np.argmax(in_step[:, ::-1], axis=1), -1)
        cut = int(end.max()) + 1
        prefix_mask = input_mask[:, :cut] & (positions[:cut] <= end[:, None])
        scored = (step_id[:, :cut] >= 0) & (step_id[:, :cut] <= k)
        rewards, _ = implicit_token_rewards(
            prm, reference, tokens[:, :cut], prefix_mask, scored, beta
        )
        q = np.asarray(jnp.sum(rewards, axis=-1))
        out[:, k] = np.where(present, q - q_before, 0.0)
        q_before = np.where(present, q, q_before)
    return out


def world_shaped_model(seed: int) -> Transformer:
    config = ModelConfig(
        family="qwen3", vocab_size=1024, hidden_size=128, num_layers=2, num_heads=4,
        num_kv_heads=4, head_dim=32, intermediate_size=384, max_position_embeddings=2048,
    )  # fmt: skip
    return Transformer(config, rngs=nnx.Rngs(seed))


def rows_with_steps(
    batch: int, prompt: int, steps: int, step_tokens: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, input_mask, step_id) of `batch` rows: a prompt, then `steps` steps; odd rows stop
    one step early and are right-padded, so per-row prefixes differ."""
    length = prompt + steps * step_tokens
    tokens = np.random.default_rng(seed).integers(1, 1024, (batch, length)).astype(np.int32)
    step_id = np.full((batch, length), -1, np.int32)
    step_id[:, prompt:] = np.repeat(np.arange(steps), step_tokens)
    input_mask = np.ones((batch, length), bool)
    short = np.arange(batch) % 2 == 1
    step_id[short, length - step_tokens :] = -1
    input_mask[short, length - step_tokens :] = False
    return tokens, input_mask, step_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--steps", default="4,8,16", help="numbers of steps S, comma-separated")
    parser.add_argument("--step_tokens", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    prm, reference = world_shaped_model(0), world_shaped_model(1)
    print(f"backend={jax.default_backend()} B={args.batch} prompt={args.prompt} "
          f"step_tokens={args.step_tokens} load at start {load_average():.2f}")  # fmt: skip
    for steps in (int(s) for s in args.steps.split(",")):
        tokens, input_mask, step_id = rows_with_steps(
            args.batch, args.prompt, steps, args.step_tokens, seed=steps
        )
        inputs = (prm, reference, tokens, input_mask, step_id, BETA, steps)
        one = functools.partial(implicit_step_rewards, *inputs)
        per = functools.partial(per_prefix_step_rewards, *inputs)
        np.testing.assert_allclose(np.asarray(one()[0]), per(), atol=1e-5)
        result = interleave({"one forward": one, "per prefix": per}, rounds=args.rounds,
                            rule=LoadRule())  # fmt: skip
        fast, slow = result["one forward"], result["per prefix"]
        ratio = result.ratio(slow, fast)
        print(
            f"S={steps:3d} T={tokens.shape[1]:4d} | one forward {fast.seconds * 1e3:8.2f} ms "
            f"[{fast.describe()}] | per prefix {slow.seconds * 1e3:8.2f} ms [{slow.describe()}] "
            f"| per prefix / one forward {format_ratio(ratio, result, slow, fast)} "
            f"(raw {slow.seconds / fast.seconds:.2f}x; loads {min(result.loads):.2f}.."
            f"{max(result.loads):.2f})"
        )


if __name__ == "__main__":
    main()
