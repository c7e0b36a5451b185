"""PAV's didactic planted-subsequence task, with exact prover values by dynamic programming.

Setlur et al. 2024, "Rewarding Progress: Scaling Automated Process Verifiers for LLM Reasoning"
(arXiv 2410.08146), §3.3 and App. B. A response is `length` tokens over `vocab_size` tokens; the
`eos` token ends it (it and everything after it are masked). The reward is 1 iff the planted
sequence y* appears contiguously in the response before EOS (paper: length 10, 15 tokens, EOS 14,
y* = [3, 6, 0, 3, 5]).

Whether y* has appeared depends on a prefix only through its *match state*: the length k of the
longest suffix of the prefix that is a prefix of y* (k = m = |y*| once y* has appeared, which is
absorbing). So for any policy whose next-token distribution depends on the prefix only through
(k, position), such as the γ-family provers, the success probability of every prefix is an exact
backward recursion over (k, position) (`automaton_values`): no rollouts. `prefix_tree_values`
does the same recursion over the whole prefix tree for any per-prefix policy (small instances).

γ-family prover μ(γ) (§3.3): from match state k < m the next token of y*, y*_{k+1}, has weight γ
and every other token (EOS included) weight 1, so P(y*_{k+1}) = γ / (γ + V − 1). As γ → ∞, μ
always completes y*. A Best-of-K prover is `prm.rewards.best_of_k_values` of a value table
(PAV Eq. 30): 1 − (1 − Q)^K holds prefix by prefix.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PlantedTask:
    """The task: responses of `length` tokens over `range(vocab_size)`, `eos` ends a response."""

    length: int = 10
    vocab_size: int = 15
    eos: int = 14
    planted: tuple[int, ...] = (3, 6, 0, 3, 5)

    def __post_init__(self):
        if not 1 <= len(self.planted) <= self.length:
            raise ValueError(
                f"planted must hold 1 to length={self.length} tokens, got {self.planted!r}."
            )
        if not 0 <= self.eos < self.vocab_size:
            raise ValueError(
                f"eos={self.eos} must be a token in range(vocab_size={self.vocab_size})."
            )
        if any(not 0 <= t < self.vocab_size or t == self.eos for t in self.planted):
            raise ValueError(
                f"planted tokens must lie in range({self.vocab_size}) and differ from eos="
                f"{self.eos}; got {self.planted!r}."
            )

    @property
    def num_states(self) -> int:
        """Match states 0..m, m = len(planted) meaning y* has appeared."""
        return len(self.planted) + 1


def match_transitions(task: PlantedTask) -> np.ndarray:
    """`[m + 1, V]` next match state δ(k, a): the longest prefix of y* ending the prefix + a.

    The KMP automaton of y*, built by direct suffix comparison (m ≤ length is small). State m is
    absorbing; δ(k, eos) = k (EOS ends the response, so the state is final).
    """
    planted, m = list(task.planted), len(task.planted)
    table = np.zeros((m + 1, task.vocab_size), np.int32)
    for k in range(m + 1):
        for a in range(task.vocab_size):
            if k == m or a == task.eos:
                table[k, a] = k
                continue
            text = planted[:k] + [a]
            table[k, a] = max(j for j in range(k + 2) if text[len(text) - j :] == planted[:j])
    return table


def gamma_prover_probs(task: PlantedTask, gamma: float) -> jax.Array:
    """`[m + 1, V]` next-token distribution of the γ-family prover μ(γ) per match state.

    Weight γ on y*_{k+1} and 1 on every other token (PAV §3.3; the notes' reading of "all other
    tokens share the remaining mass uniformly"). In state m the value is 1 whatever μ does; the
    row is uniform.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 (the weight of the next planted token), got {gamma}.")
    weights = np.ones((task.num_states, task.vocab_size))
    weights[np.arange(len(task.planted)), task.planted] = gamma
    return jnp.asarray(weights / weights.sum(-1, keepdims=True), jnp.float32)


def automaton_values(task: PlantedTask, next_token_probs: chex.Array) -> jax.Array:
    """`[m + 1, L + 1]` success probability W[k, t] of a prefix of t tokens in match state k.

    Exact backward recursion for a policy that sees the prefix only through (k, t):

        W[m, t] = 1,    W[k, L] = 0 (k < m),
        W[k, t] = Σ_{a ≠ eos} p(a | k, t) · W[δ(k, a), t + 1]      (EOS before y* scores 0).

    Q^p(s, a) of a prefix s (state k, t tokens) and a next token a ≠ eos is W[δ(k, a), t + 1],
    and V^p(s) = W[k, t]. `next_token_probs` is `[m + 1, V]` (the same at every position) or
    `[m + 1, L, V]`.
    """
    m, length = len(task.planted), task.length
    probs = jnp.asarray(next_token_probs, jnp.float32)
    if probs.ndim == 2:
        probs = jnp.broadcast_to(probs[:, None], (m + 1, length, task.vocab_size))
    chex.assert_shape(probs, (m + 1, length, task.vocab_size))
    delta = jnp.asarray(match_transitions(task))
    not_eos = jnp.arange(task.vocab_size) != task.eos
    found = jnp.arange(m + 1) == m
    columns = [found.astype(jnp.float32)]  # t = L
    for t in reversed(range(length)):
        following = jnp.where(not_eos, columns[-1][delta], 0.0)  # [m + 1, V]
        columns.append(jnp.where(found, 1.0, jnp.sum(probs[:, t] * following, -1)))
    return jnp.stack(columns[::-1], axis=1)


class Trace(NamedTuple):
    """What a batch of responses did: `[B, L + 1]` match states (index 0 is the empty prefix),
    `[B, L]` step mask (1 up to and including the first EOS) and `[B]` outcome in {0, 1}."""

    states: jax.Array
    step_mask: jax.Array
    outcome: jax.Array


def trace(task: PlantedTask, tokens: chex.Array) -> Trace:
    """Runs the match automaton over `[B, L]` responses (tokens after the first EOS are ignored)."""
    chex.assert_shape(tokens, (None, task.length))
    delta = jnp.asarray(match_transitions(task))
    is_eos = tokens == task.eos
    before_eos = jnp.cumsum(is_eos, axis=-1) - is_eos == 0  # no EOS strictly before step h
    states = [jnp.zeros(tokens.shape[0], jnp.int32)]
    for h in range(task.length):
        states.append(jnp.where(before_eos[:, h], delta[states[-1], tokens[:, h]], states[-1]))
    states = jnp.stack(states, axis=1)
    outcome = (states[:, -1] == len(task.planted)).astype(jnp.float32)
    return Trace(states, before_eos.astype(jnp.float32), outcome)


def prefix_values(task: PlantedTask, values: chex.Array, run: Trace) -> jax.Array:
    """`[B, L + 1]` value of every prefix of the responses under a value table W.

    Index 0 is V(x) = W[0, 0]; index h ≥ 1 is Q(s_h, a_h), the value after step h: W[k_h, h], or
    the outcome so far (1 iff y* has appeared) when a_h is EOS. Entries after EOS are 0. This is
    the `prefix_values` input of `prm.rewards.prover_advantages`.
    """
    chex.assert_shape(values, (task.num_states, task.length + 1))
    table = values[run.states, jnp.arange(task.length + 1)]  # [B, L + 1]
    mask = run.step_mask
    # After the last step (an EOS, or the L-th token) the value is the outcome: W[k, L] = [k = m].
    last = mask * (1.0 - jnp.pad(mask[:, 1:], ((0, 0), (0, 1))))
    found = (run.states[:, 1:] == len(task.planted)).astype(jnp.float32)
    after = jnp.where(last > 0, found, table[:, 1:]) * mask
    return jnp.concatenate([table[:, :1], after], axis=1)


def prefix_tree_values(
    task: PlantedTask, next_token_probs: Callable[[tuple[int, ...]], np.ndarray]
) -> dict[tuple[int, ...], float]:
    """Exact success probability of every EOS-free prefix, for any per-prefix policy.

    Backward recursion over the whole prefix tree, V(s) = Σ_a p(a | s)·[a = eos ? r(s) : V(s+a)]
    with V(s) = r(s) at full length, where r(s) = 1 iff y* appears in s. `next_token_probs(s)`
    returns the `[V]` distribution after prefix `s`. There are (V − 1)^L leaves: for small
    instances (it refuses more than 10^6).
    """
    body = [t for t in range(task.vocab_size) if t != task.eos]
    if len(body) ** task.length > 10**6:
        raise ValueError(
            f"prefix_tree_values enumerates (vocab_size - 1)^length = {len(body) ** task.length} "
            "prefixes; use a smaller task, or automaton_values for a policy that sees the prefix "
            "only through its match state."
        )
    planted = task.planted

    def found(prefix):
        return any(prefix[i : i + len(planted)] == planted for i in range(len(prefix)))

    values = {p: float(found(p)) for p in itertools.product(body, repeat=task.length)}
    for t in reversed(range(task.length)):
        for prefix in itertools.product(body, repeat=t):
            probs = np.asarray(next_token_probs(prefix), np.float64)
            values[prefix] = float(found(prefix)) * probs[task.eos] + sum(
                probs[a] * values[prefix + (a,)] for a in body
            )
    return values
