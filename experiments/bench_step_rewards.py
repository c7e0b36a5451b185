"""Benchmark: per-step segment sums of token rewards (`prm.rewards.implicit.step_rewards`).

Compares prm's single scatter-add (`jax.ops.segment_sum` over flattened rows) against two
peers on the same inputs: a compare-select-reduce over a [B, S, T] comparison and a one-hot
matmul at HIGHEST precision (both O(B·S·T); prm is O(B·T)). Timing:
`experiments.benchmarking.interleave` (alternating rounds, each run repeating a call for
~0.1 s, the load recorded with every figure); each peer's time per call is printed as a ratio of prm's, or
refused when the load moved.

    python -m experiments.bench_step_rewards --batch=64 --tokens=2048 --steps=128
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarking import (
    add_load_rule_arguments,
    figure,
    format_ratio,
    interleave,
    load_average,
    load_rule,
    repeated,
)
from prm.rewards import implicit


def compare_reduce_peer(rewards, step_id, num_steps):
    in_step = step_id[..., None, :] == jnp.arange(num_steps, dtype=step_id.dtype)[:, None]
    return jnp.sum(jnp.where(in_step, rewards[..., None, :], 0.0), axis=-1)


def one_hot_peer(rewards, step_id, num_steps):
    one_hot = jax.nn.one_hot(step_id, num_steps, dtype=rewards.dtype)
    return jnp.einsum("bt,bts->bs", rewards, one_hot, precision=jax.lax.Precision.HIGHEST)


def prm_step_rewards(rewards, step_id, num_steps):
    return implicit.step_rewards(rewards, step_id, num_steps)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    add_load_rule_arguments(parser)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rewards = jnp.asarray(rng.normal(size=(args.batch, args.tokens)), jnp.float32)
    # Contiguous steps of random length after a prompt, as a real step_id looks.
    boundaries = np.sort(rng.integers(0, args.tokens, size=(args.batch, args.steps)), axis=-1)
    step_id = np.searchsorted(boundaries[0], np.arange(args.tokens)) - 1
    step_id = jnp.asarray(np.broadcast_to(step_id, (args.batch, args.tokens)), jnp.int32)

    candidates = {
        "prm (segment_sum)": prm_step_rewards,
        "compare-select-reduce": compare_reduce_peer,
        "one-hot einsum (HIGHEST)": one_hot_peer,
    }
    jitted = {name: jax.jit(fn, static_argnums=2) for name, fn in candidates.items()}
    reference = np.asarray(jitted["compare-select-reduce"](rewards, step_id, args.steps))
    for fn in jitted.values():
        np.testing.assert_allclose(fn(rewards, step_id, args.steps), reference, atol=1e-3)
    cases = {
        name: repeated(functools.partial(fn, rewards, step_id, args.steps))
        for name, fn in jitted.items()
    }
    calls = {name: count for name, (_, count) in cases.items()}
    result = interleave(
        {name: run for name, (run, _) in cases.items()}, rounds=args.rounds, rule=load_rule(args)
    )

    print(
        f"backend={jax.default_backend()} B={args.batch} T={args.tokens} S={args.steps}, "
        f"{args.rounds} rounds, load at start {result.loads[0]:.2f}, "
        f"at end {load_average():.2f}"
    )
    base = "prm (segment_sum)"
    for name, timing in result.timings.items():
        ratio = result.ratio(timing, result[base])
        if ratio is not None:
            ratio *= calls[base] / calls[name]
        ratio = format_ratio(ratio, result, timing, result[base])
        per_call = f"{timing.seconds / calls[name] * 1e3:9.3f} ms"
        print(
            figure(
                f"{name:26s}",
                timing,
                f"{per_call} ({calls[name]} calls a run)  time / prm's {ratio}",
            )
        )


if __name__ == "__main__":
    main()
