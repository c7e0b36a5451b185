"""PAV's didactic RL experiment: a MADE policy on the planted-subsequence task, rewarded by
outcome only, by the effective reward Q^π + α·A^μ, or by Q^π + α·Q^μ.

Setlur et al. 2024 (arXiv 2410.08146), §3.3 and App. B:
- policy: a MADE-style autoregressive MLP, 3 layers, 128 hidden units (read here as 3 masked
  linear layers, L·V → 128 → 128 → L·V, ReLU; the logits of position t see tokens < t only);
- warm start: 50 iterations of next-token SFT, batch 64, on 3,200 responses of the γ = 5 prover;
- RL: policy gradient Σ_h ∇log π(a_h | s_h)·r_h (PAV Eq. 5), Adam at a constant lr 1e-3,
  batch 64, α = 1, where r_h is
    (a) outcome only:     Q^π(s_h, a_h)                        (α = 0),
    (b) effective reward: Q^π(s_h, a_h) + α·A^μ(s_h, a_h),
    (c) Q^μ as reward:    Q^π(s_h, a_h) + α·Q^μ(s_h, a_h)      (App. G's failure mode).
  A^μ and Q^μ are exact (`automaton_values`). Q^π(s_h, a_h) is estimated by the sampled outcome
  of the response, an unbiased one-rollout estimate; the paper used Monte Carlo with more than
  100 rollouts per state, which costs ~10^3 times more policy evaluations than this CPU budget.

A run is one (prover value table, α, reward kind, seed); `train_runs` vmaps runs and scans over
iterations under one jit, so a whole sweep is one program.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prm.didactic.planted_subsequence import (
    PlantedTask,
    gamma_prover_probs,
    match_transitions,
    prefix_values,
    trace,
)
from prm.rewards.progress import effective_rewards, prover_advantages

Params = list[tuple[jax.Array, jax.Array]]

# Reward kinds of a run (an int so runs of every kind vmap together).
OUTCOME, ADVANTAGE, PROVER_Q = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """MADE policy and optimiser (paper defaults)."""

    hidden: int = 128
    hidden_layers: int = 2
    learning_rate: float = 1e-3
    batch_size: int = 64
    sft_iterations: int = 50
    sft_gamma: float = 5.0


def made_masks(task: PlantedTask, hidden: int, hidden_layers: int) -> list[np.ndarray]:
    """Connectivity masks of a MADE (Germain et al. 2015) over L positions of V-way one-hots.

    Input unit (t, v) has degree t + 1, hidden units cycle through degrees 1..L − 1, and a
    hidden unit of degree d feeds the next layer's units of degree ≥ d and the logits of
    positions t ≥ d. So position t's logits depend on tokens 0..t − 1 only (position 0's on
    the biases alone).
    """
    length, vocab = task.length, task.vocab_size
    in_degree = np.repeat(np.arange(1, length + 1), vocab)
    out_degree = np.repeat(np.arange(1, length + 1), vocab)
    hidden_degree = 1 + np.arange(hidden) % max(length - 1, 1)
    degrees = [in_degree] + [hidden_degree] * hidden_layers
    masks = [(d_out[None, :] >= d_in[:, None]) for d_in, d_out in zip(degrees, degrees[1:])]
    masks.append(out_degree[None, :] > hidden_degree[:, None])
    return [m.astype(np.float32) for m in masks]


def init_policy(key: jax.Array, task: PlantedTask, config: PolicyConfig) -> Params:
    """LeCun-normal weights (scaled for the mask's fan-in) and zero biases."""
    masks = made_masks(task, config.hidden, config.hidden_layers)
    params = []
    for layer_key, mask in zip(jax.random.split(key, len(masks)), masks):
        fan_in = np.maximum(mask.sum(0), 1.0)
        w = jax.random.normal(layer_key, mask.shape) / np.sqrt(fan_in)
        params.append((w * mask, jnp.zeros(mask.shape[1])))
    return params


def policy_logits(params: Params, masks: list[np.ndarray], tokens: chex.Array) -> jax.Array:
    """`[B, L, V]` next-token logits at every position of `[B, L]` responses (teacher forcing)."""
    batch, length = tokens.shape
    vocab = params[-1][1].shape[0] // length
    x = jax.nn.one_hot(tokens, vocab).reshape(batch, length * vocab)
    for i, ((w, b), mask) in enumerate(zip(params, masks)):
        x = x @ (w * mask) + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x.reshape(batch, length, vocab)


def sample_responses(
    key: jax.Array,
    task: PlantedTask,
    batch: int,
    next_token_logits: Callable[[jax.Array, jax.Array, int], jax.Array],
) -> jax.Array:
    """`[batch, L]` responses sampled token by token; tokens after the first EOS are EOS.

    `next_token_logits(tokens, states, t)` gives `[batch, V]` logits for position t from the
    tokens so far (positions ≥ t hold EOS) and the match states `[batch]`.
    """
    delta = jnp.asarray(match_transitions(task))

    def position(carry, inputs):
        tokens, states, ended = carry
        t, key = inputs
        token = jax.random.categorical(key, next_token_logits(tokens, states, t))
        token = jnp.where(ended, task.eos, token)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, t, axis=1)
        return (tokens, delta[states, token], ended | (token == task.eos)), None

    start = (
        jnp.full((batch, task.length), task.eos, jnp.int32),
        jnp.zeros(batch, jnp.int32),
        jnp.zeros(batch, bool),
    )
    keys = jax.random.split(key, task.length)
    (tokens, _, _), _ = jax.lax.scan(position, start, (jnp.arange(task.length), keys))
    return tokens


def sample_policy(key, task, params, masks, batch) -> jax.Array:
    """Responses of the MADE policy at temperature 1."""
    return sample_responses(
        key,
        task,
        batch,
        lambda tokens, states, t: jnp.take(policy_logits(params, masks, tokens), t, axis=1),
    )


def sample_prover(key, task, next_token_probs, batch) -> jax.Array:
    """Responses of a policy given per match state, `[m + 1, V]` (e.g. `gamma_prover_probs`)."""
    logits = jnp.log(next_token_probs)
    return sample_responses(key, task, batch, lambda tokens, states, t: logits[states])


def token_logprobs(params, masks, tokens) -> jax.Array:
    """`[B, L]` log π(a_h | s_h) of the responses' tokens."""
    logp = jax.nn.log_softmax(policy_logits(params, masks, tokens))
    return jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]


def run_rewards(
    task: PlantedTask, tokens: chex.Array, prover_values: chex.Array, alpha, kind
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-step reward r_h `[B, L]`, step mask `[B, L]` and outcome `[B]` of a run's reward kind.

    Q^π(s_h, a_h) is the response's sampled outcome at every step; A^μ comes from
    `prover_advantages` over the prefix values, Q^μ(s_h, a_h) is the value after step h.
    """
    run = trace(task, tokens)
    q_prover = prefix_values(task, prover_values, run)  # [B, L + 1]
    advantage = prover_advantages(q_prover, run.step_mask)
    shaping = jnp.where(kind == PROVER_Q, q_prover[:, 1:], advantage)
    policy_q = jnp.broadcast_to(run.outcome[:, None], run.step_mask.shape)
    alpha = jnp.where(kind == OUTCOME, 0.0, alpha)
    return effective_rewards(policy_q, shaping, run.step_mask, alpha), run.step_mask, run.outcome


def policy_gradient_loss(params, masks, tokens, rewards, step_mask) -> jax.Array:
    """−(1/B) Σ_b Σ_h log π(a_h | s_h)·r_h over the steps taken (PAV Eq. 5), rewards fixed."""
    logp = token_logprobs(params, masks, tokens)
    return -jnp.mean(jnp.sum(logp * jax.lax.stop_gradient(rewards) * step_mask, -1))


def prover_signal(task, params, masks, tokens, prover_values, step_mask) -> jax.Array:
    """Mean over visited states of Var_{a∼π(·|s)}[A^μ(s, a)], Theorem 3.1's distinguishability."""
    delta = jnp.asarray(match_transitions(task))
    probs = jax.nn.softmax(policy_logits(params, masks, tokens))  # [B, L, V]
    states = trace(task, tokens).states[:, :-1]  # state before step h
    steps = jnp.arange(task.length)
    after = prover_values[delta[states], steps[None, :, None] + 1]  # [B, L, V]
    found = (states == len(task.planted))[..., None]
    q = jnp.where(jnp.arange(task.vocab_size) == task.eos, found * 1.0, after)
    mean = jnp.sum(probs * q, -1, keepdims=True)
    variance = jnp.sum(probs * (q - mean) ** 2, -1)
    return jnp.sum(variance * step_mask) / jnp.sum(step_mask)


def warm_start(key: jax.Array, task: PlantedTask, config: PolicyConfig) -> Params:
    """SFT on `sft_iterations × batch_size` fresh responses of the γ = `sft_gamma` prover."""
    masks = made_masks(task, config.hidden, config.hidden_layers)
    init_key, data_key = jax.random.split(key)
    params = init_policy(init_key, task, config)
    prover = gamma_prover_probs(task, config.sft_gamma)
    optimizer = optax.adam(config.learning_rate)

    def step(carry, key):
        params, opt_state = carry
        tokens = sample_prover(key, task, prover, config.batch_size)
        mask = trace(task, tokens).step_mask

        def nll(params):
            return -jnp.sum(token_logprobs(params, masks, tokens) * mask) / jnp.sum(mask)

        loss, grads = jax.value_and_grad(nll)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(data_key, config.sft_iterations)
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), keys)
    return params


class Runs(NamedTuple):
    """A batch of R runs: `[R, m + 1, L + 1]` prover value tables, `[R]` α, kind and seed."""

    prover_values: jax.Array
    alpha: jax.Array
    kind: jax.Array
    seed: jax.Array


@functools.partial(
    jax.jit, static_argnames=("task", "config", "iterations", "pass_at_iteration", "pass_samples")
)
def train_runs(
    task: PlantedTask,
    config: PolicyConfig,
    runs: Runs,
    iterations: int,
    pass_at_iteration: int,
    pass_samples: int,
) -> dict[str, jax.Array]:
    """Warm start and RL for every run at once (vmapped), one jit.

    Returns per run: `accuracy` `[R, iterations]` (the batch's mean outcome before each update),
    `response_length` `[R, iterations]` (steps up to and including EOS), `signal` `[R,
    iterations]` (`prover_signal`), `pass_correct` `[R]` (correct responses out of
    `pass_samples` drawn after `pass_at_iteration` updates) and `warm_accuracy` `[R]` (the same
    count's fraction at the warm start).
    """
    if not 0 <= pass_at_iteration <= iterations:
        raise ValueError(
            f"pass_at_iteration={pass_at_iteration} must lie in [0, iterations={iterations}]."
        )
    masks = made_masks(task, config.hidden, config.hidden_layers)
    optimizer = optax.adam(config.learning_rate)

    def one_run(prover_values, alpha, kind, seed):
        warm_key, rl_key, pass_key, warm_pass_key = jax.random.split(jax.random.key(seed), 4)
        params = warm_start(warm_key, task, config)

        def step(carry, key):
            params, opt_state = carry
            tokens = sample_policy(key, task, params, masks, config.batch_size)
            rewards, mask, outcome = run_rewards(task, tokens, prover_values, alpha, kind)
            grads = jax.grad(policy_gradient_loss)(params, masks, tokens, rewards, mask)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            metrics = {
                "accuracy": jnp.mean(outcome),
                "response_length": jnp.mean(jnp.sum(mask, -1)),
                "signal": prover_signal(task, params, masks, tokens, prover_values, mask),
            }
            return (optax.apply_updates(params, updates), opt_state), metrics

        def correct(key, params):
            tokens = sample_policy(key, task, params, masks, pass_samples)
            return jnp.sum(trace(task, tokens).outcome)

        keys = jax.random.split(rl_key, iterations)
        carry = (params, optimizer.init(params))
        carry, first = jax.lax.scan(step, carry, keys[:pass_at_iteration])
        pass_correct = correct(pass_key, carry[0])
        carry, rest = jax.lax.scan(step, carry, keys[pass_at_iteration:])
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, rest)
        metrics["pass_correct"] = pass_correct
        metrics["warm_accuracy"] = correct(warm_pass_key, params) / pass_samples
        return metrics

    return jax.vmap(one_run)(runs.prover_values, runs.alpha, runs.kind, runs.seed)


def pass_at_n(num_samples: int, num_correct: int, n: int) -> float:
    """Unbiased Pass@N from c correct of M samples: 1 − C(M − c, N) / C(M, N) (Chen et al. 2021).

    With one task (as here) it estimates 1 − (1 − p)^N for the policy's success rate p.
    """
    if not 1 <= n <= num_samples:
        raise ValueError(f"n={n} must lie in [1, num_samples={num_samples}].")
    if num_samples - num_correct < n:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, n) / math.comb(num_samples, n)
