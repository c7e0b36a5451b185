"""Benchmarks for prm.advantages / prm.losses against peers, printed as ratios in one run.

  python -m experiments.bench_advantages_losses --rounds=5

GAE: prm's jitted reverse lax.scan vs (a) the same recurrence as a log-depth associative scan
in JAX and (b) a per-timestep torch loop shaped like verl's `compute_gae_advantage_return`.
Entropy: prm's token_entropy (all at once / chunked) vs the naive −Σ softmax·log_softmax, value
and gradient: wall time and XLA temp memory of the compiled function. Timing:
`experiments.benchmarking.interleave` (alternating rounds, the load recorded with every figure,
the torch peer pinned to 1 and 2 threads and its faster figure taken); a ratio is refused when
the load moved.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments.benchmarking import (
    Rounds,
    add_load_rule_arguments,
    figure,
    format_ratio,
    interleave,
    load_average,
    load_rule,
    repeated,
    torch_peer,
)
from prm.advantages import generalized_advantage_estimation
from prm.losses import token_entropy


def _reverse_linear_recurrence(offset, scale):
    """x_t = offset_t + scale_t·x_{t+1} (x_T = 0) along the last axis, in log depth."""
    return jax.lax.associative_scan(
        lambda later, earlier: (earlier[0] + earlier[1] * later[0], earlier[1] * later[1]),
        (offset, scale),
        reverse=True,
        axis=offset.ndim - 1,
    )[0]


def associative_gae(rewards, values, mask, gamma, lam):
    """The same masked GAE as prm's, as two associative scans (the TPU/GPU-friendly form)."""
    keep = mask.astype(rewards.dtype)
    rewards, values = rewards * keep, values * keep
    # value of the next kept token: y_t = keep_t·v_t + (1 − keep_t)·y_{t+1}, read at t + 1
    padded_keep = jnp.pad(keep, [(0, 0), (0, 1)], constant_values=1.0)
    padded_values = jnp.pad(values, [(0, 0), (0, 1)])
    next_value = _reverse_linear_recurrence(padded_keep * padded_values, 1.0 - padded_keep)[:, 1:]
    delta = rewards + gamma * next_value - values
    advantages = _reverse_linear_recurrence(keep * delta, keep * gamma * lam + 1.0 - keep)
    return advantages * keep


def torch_gae(rewards, values, mask, gamma, lam):
    # per-timestep loop over [B] vectors, skipping masked tokens
    batch, length = rewards.shape
    next_value = torch.zeros(batch)
    running = torch.zeros(batch)
    out = torch.zeros_like(rewards)
    for t in reversed(range(length)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        running = torch.where(m, candidate, running)
        next_value = torch.where(m, values[:, t], next_value)
        out[:, t] = torch.where(m, candidate, torch.zeros(()))
    return out


def per_call_figures(result: Rounds, calls: dict[str, int], base: str) -> str:
    """Each case's time per call, and its ratio to `base`'s (refused when the load moved)."""

    def per_call(name: str) -> float:
        return result[name].seconds / calls[name]

    parts = []
    for name in calls:
        ratio = result.ratio(result[name], result[base])
        if ratio is not None:
            ratio = per_call(name) / per_call(base)
        text = f"{per_call(name) * 1e3:8.2f} ms"
        if name != base:
            text += f" ({format_ratio(ratio, result, result[name], result[base])} {base})"
        parts.append(figure(name, result[name], text))
    return " | ".join(parts)


def bench_gae(args):
    rng = np.random.default_rng(0)
    print("GAE (γ=0.99, λ=0.95, 20% masked tokens), float32, time per call")
    for batch, length in [(64, 512), (64, 4096), (512, 1024)]:
        r, v = rng.normal(size=(2, batch, length)).astype(np.float32)
        m = rng.random((batch, length)) < 0.8
        args_jax = (jnp.asarray(r), jnp.asarray(v), jnp.asarray(m))
        args_torch = (torch.from_numpy(r), torch.from_numpy(v), torch.from_numpy(m))
        ours = jax.jit(functools.partial(generalized_advantage_estimation, gamma=0.99, lam=0.95))
        assoc = jax.jit(functools.partial(associative_gae, gamma=0.99, lam=0.95))
        expected = torch_gae(*args_torch, 0.99, 0.95).numpy()
        err = max(
            np.abs(np.asarray(ours(*args_jax)[0]) - expected).max(),
            np.abs(np.asarray(assoc(*args_jax)) - expected).max(),
        )
        # The torch loop lasts long enough to time one call a run; the jitted scans do not.
        peer = torch_peer("torch loop", functools.partial(torch_gae, *args_torch, 0.99, 0.95))
        scan, scan_calls = repeated(functools.partial(ours, *args_jax))
        associative, associative_calls = repeated(functools.partial(assoc, *args_jax))
        result = interleave(
            {"prm scan": scan, "associative": associative, **peer},
            rounds=args.rounds,
            rule=load_rule(args),
        )
        peer_name, _ = result.best(list(peer))
        calls = {"prm scan": scan_calls, "associative": associative_calls, peer_name: 1}
        print(f"  B={batch:4d} T={length:5d}: {per_call_figures(result, calls, 'prm scan')} "
              f"| max|diff| {err:.1e}")  # fmt: skip


def naive_entropy(logits, mask):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.where(mask, -jnp.sum(jnp.exp(logp) * logp, axis=-1), 0.0)


def bench_entropy(args):
    batch, length, vocab = 4, 256, 32768
    logits = jax.random.normal(jax.random.key(0), (batch, length, vocab), jnp.bfloat16)
    mask = jnp.ones((batch, length), bool)
    print(
        f"Entropy value+grad, bf16 logits [{batch},{length},{vocab}] (input {logits.nbytes / 2**20:.0f} MiB)"
    )
    variants = {
        "naive -Σp·logp": naive_entropy,
        "prm all at once": token_entropy,
        "prm chunk 128": functools.partial(token_entropy, chunk_size=128),
    }
    grad_fns, temps = {}, {}
    for name, fn in variants.items():
        grad_fns[name] = jax.jit(jax.value_and_grad(lambda z, f=fn: f(z, mask).sum()))
        compiled = grad_fns[name].lower(logits).compile()
        temps[name] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    result = interleave(
        {name: functools.partial(fn, logits) for name, fn in grad_fns.items()},
        rounds=args.rounds,
        rule=load_rule(args),
    )
    base = "naive -Σp·logp"
    figures = per_call_figures(result, dict.fromkeys(variants, 1), base).split(" | ")
    for name, text in zip(variants, figures):
        print(f"  {text}, XLA temp {temps[name]:7.1f} MiB ({temps[name] / temps[base]:.2f}x naive)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    add_load_rule_arguments(parser)
    args = parser.parse_args()
    print(jax.devices()[0].platform, jax.__version__, f"load at start {load_average():.2f}")
    bench_gae(args)
    bench_entropy(args)


if __name__ == "__main__":
    main()
