"""Benchmarks for prm.advantages / prm.losses against peers, printed as ratios in one run.

  .venv/bin/python -m experiments.bench_advantages_losses

GAE: prm's jitted reverse lax.scan vs (a) the same recurrence as a log-depth associative scan
in JAX and (b) a per-timestep torch loop shaped like verl's `compute_gae_advantage_return`.
Entropy: prm's token_entropy (all at once / chunked) vs the naive −Σ softmax·log_softmax, value
and gradient: wall time and XLA temp memory of the compiled function.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from experiments.benchmarking import best_seconds
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


def bench_gae():
    rng = np.random.default_rng(0)
    print("GAE (γ=0.99, λ=0.95, 20% masked tokens), float32, ms per call")
    for batch, length in [(64, 512), (64, 4096), (512, 1024)]:
        r, v = rng.normal(size=(2, batch, length)).astype(np.float32)
        m = rng.random((batch, length)) < 0.8
        args = (jnp.asarray(r), jnp.asarray(v), jnp.asarray(m))
        ours = jax.jit(functools.partial(generalized_advantage_estimation, gamma=0.99, lam=0.95))
        assoc = jax.jit(functools.partial(associative_gae, gamma=0.99, lam=0.95))
        t_ours = best_seconds(ours, *args, repeats=10)
        t_assoc = best_seconds(assoc, *args, repeats=10)
        targs = (torch.from_numpy(r), torch.from_numpy(v), torch.from_numpy(m))
        start = time.perf_counter()
        expected = torch_gae(*targs, 0.99, 0.95)
        t_torch = time.perf_counter() - start
        err = np.abs(np.asarray(ours(*args)[0]) - expected.numpy()).max()
        err = max(err, np.abs(np.asarray(assoc(*args)) - expected.numpy()).max())
        print(
            f"  B={batch:4d} T={length:5d}: prm scan {t_ours * 1e3:7.2f} | associative "
            f"{t_assoc * 1e3:7.2f} ({t_assoc / t_ours:.2f}x slower) | torch loop "
            f"{t_torch * 1e3:8.2f} ({t_torch / t_ours:.1f}x slower) | max|diff| {err:.1e}"
        )


def naive_entropy(logits, mask):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.where(mask, -jnp.sum(jnp.exp(logp) * logp, axis=-1), 0.0)


def bench_entropy():
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
    base = None
    for name, fn in variants.items():
        grad_fn = jax.jit(jax.value_and_grad(lambda z, f=fn: f(z, mask).sum()))
        compiled = grad_fn.lower(logits).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
        seconds = best_seconds(grad_fn, logits, repeats=3)
        base = base or (seconds, temp)
        print(
            f"  {name:16s}: {seconds * 1e3:7.1f} ms ({seconds / base[0]:.2f}x naive), "
            f"XLA temp {temp:7.1f} MiB ({temp / base[1]:.2f}x naive)"
        )


if __name__ == "__main__":
    print(jax.devices()[0].platform, jax.__version__)
    bench_gae()
    bench_entropy()
