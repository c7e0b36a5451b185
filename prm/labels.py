"""Process labels from rollouts and search trees: Math-Shepherd, ReST-MCTS*, OmegaPRM.

* Math-Shepherd (Wang et al. 2023, arXiv 2312.08935, Eq. 3–4): a step's label is estimated from
  N completions sampled after it — hard (some completion reaches the gold answer) or soft (the
  fraction that does).
* ReST-MCTS* (Zhang et al. 2024, arXiv 2406.03816, Eq. 1–2): value targets v_k accumulated
  along a solution from step correctness and the reasoning distance to a correct answer.
* OmegaPRM (Luo et al. 2024, arXiv 2406.06592, §3.2–3.3): the rollout-selection score Q + U and
  the binary search for the first error of an incorrect solution.

Labels, value targets and selection scores are pure array functions (jit- and vmap-safe); the
binary search is host-side Python that drives a callback, one Monte Carlo estimate per call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from prm import masked


def _completion_mask(correct: chex.Array, mask: chex.Array | None) -> chex.Array:
    if mask is None:
        return jnp.ones(correct.shape, dtype=bool)
    chex.assert_equal_shape([correct, mask])
    return mask.astype(bool)


def hard_estimation_labels(correct: chex.Array, mask: chex.Array | None = None) -> chex.Array:
    """Math-Shepherd hard estimation (Eq. 3): y^HE = 1 if any completion reaches the answer.

    Args:
      correct: `[..., N]` bool, whether completion j from this step reached the gold answer.
      mask: optional `[..., N]`, 1 on completions that exist (ragged N).

    Returns:
      `[...]` float32 in {0, 1}; 0 for a step with no completions. The released Math-Shepherd PRM
      was trained on these labels; OmegaPRM's "correct prefix" test (MC > 0) is the same rule.
    """
    keep = _completion_mask(correct, mask)
    return jnp.any(keep & correct.astype(bool), axis=-1).astype(jnp.float32)


def soft_estimation_labels(correct: chex.Array, mask: chex.Array | None = None) -> chex.Array:
    """Math-Shepherd soft estimation (Eq. 4): y^SE = Σ_j 1[a_j = a*] / N, the MC success rate.

    Same arguments as `hard_estimation_labels`; `[...]` float32 in [0, 1], 0 for a step with no
    completions. OmegaPRM's MC(s) (its Eq. 1) and its soft PRM targets are this quantity.
    """
    keep = _completion_mask(correct, mask)
    return masked.masked_mean(correct.astype(jnp.float32), keep, axis=-1)


def rest_mcts_value_targets(
    step_errors: chex.Array, distances: chex.Array, step_mask: chex.Array
) -> tuple[chex.Array, chex.Array]:
    """ReST-MCTS* inferred value targets along a partial solution (paper Eq. 1–2).

        w_k = (1 − v_{k−1}) / (m_k + 1) · (1 − 2·r_k),    v_0 = 0,    v_k = max(v_{k−1} + w_k, 0)

    Args:
      step_errors: `[..., K]` r_k in [0, 1]: 0 for a step from which a correct answer is
        reachable, 1 for one from which it is not (the paper's Math-Shepherd hard estimate; the
        code's node reward is 1 − 2·r_k = ±1).
      distances: `[..., K]` m_k ≥ 0, the reasoning distance: the fewest further steps to a correct
        answer (0 at the correct final step). Wrong steps take the distance of their nearest
        ancestor with a known one, as in the released code.
      step_mask: `[..., K]`, 1 on steps that exist (a prefix mask for ragged solutions).

    Returns:
      `(values, weights)`, both `[..., K]`: v_k and w_k, 0 at masked steps. For r_k ∈ [0, 1] and
      m_k ≥ 0 every v_k lies in [0, 1] (the paper's Theorem 1), reaching 1 only at a correct step
      with m_k = 0.
    """
    chex.assert_equal_shape([step_errors, distances, step_mask])
    present = step_mask.astype(bool)

    def step(previous_value, inputs):
        error, distance, exists = inputs
        weight = (1.0 - previous_value) / (distance + 1.0) * (1.0 - 2.0 * error)
        value = jnp.maximum(previous_value + weight, 0.0)
        # A missing step leaves the running value where it was.
        return jnp.where(exists, value, previous_value), (value, weight)

    errors = jnp.moveaxis(step_errors.astype(jnp.float32), -1, 0)
    dists = jnp.moveaxis(distances.astype(jnp.float32), -1, 0)
    exists = jnp.moveaxis(present, -1, 0)
    initial = jnp.zeros(step_errors.shape[:-1], jnp.float32)
    _, (values, weights) = jax.lax.scan(step, initial, (errors, dists, exists))
    values = jnp.moveaxis(values, 0, -1)
    weights = jnp.moveaxis(weights, 0, -1)
    return jnp.where(present, values, 0.0), jnp.where(present, weights, 0.0)


def omegaprm_rollout_value(
    mc: chex.Array,
    rollout_length: chex.Array,
    alpha: float = 0.5,
    beta: float = 0.9,
    length_scale: float = 500.0,
) -> chex.Array:
    """OmegaPRM's rollout value Q(s, r) = α^{1 − MC(s)} · β^{len(r) / L} (Eq. 2).

    Highest for long-shot mistakes: a wrong rollout `r` from a state `s` that usually succeeds
    (MC(s) near 1), discounted by the rollout's length in tokens. Defaults are the paper's
    (α = 0.5, β = 0.9, L = 500); the constants are static Python numbers. Broadcasts `mc`
    against `rollout_length`.
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must lie in (0, 1] (OmegaPRM Eq. 2), got {value}.")
    if not length_scale > 0.0:
        raise ValueError(f"length_scale L must be > 0 (OmegaPRM Eq. 2), got {length_scale}.")
    return alpha ** (1.0 - mc) * beta ** (rollout_length / length_scale)


def omegaprm_exploration_bonus(
    visits: chex.Array, total_visits: chex.Array, c_puct: float = 0.125
) -> chex.Array:
    """OmegaPRM's exploration term U(s) = c_puct · sqrt(Σ_i N(s_i)) / (1 + N(s)) (Eq. 3).

    `visits` is N(s) of each candidate's state, `total_visits` the sum of N over the pool's
    distinct states (not over rollouts: several rollouts share a state). Select the rollout that
    maximises `omegaprm_rollout_value + omegaprm_exploration_bonus` among incorrect rollouts of
    states with 0 < MC < 1. c_puct = 0.125 in the paper.
    """
    if not c_puct >= 0.0:
        raise ValueError(f"c_puct must be >= 0 (OmegaPRM Eq. 3), got {c_puct}.")
    return c_puct * jnp.sqrt(total_visits) / (1.0 + visits)


@dataclasses.dataclass(frozen=True)
class FirstErrorSearch:
    """Result of `locate_first_error`.

    Attributes:
      first_error: 1-based index of the first incorrect step: the shortest prefix with MC = 0.
      estimates: `(prefix_length, mc)` for every prefix the search rolled out, in call order.
        Prefixes before `first_error` with MC > 0 are OmegaPRM's new correct states (their MC
        is a soft label); the prefix of length `first_error`, if rolled out, is the negative.
    """

    first_error: int
    estimates: tuple[tuple[int, float], ...]


class FirstErrorBisection:
    """OmegaPRM's binary search for the first error (§3.2) as a state machine.

    `locate_first_error` runs one search to its end through a callback; holding the state here
    lets many searches advance in lockstep, the probes of all of them rolled out by one batched
    sampler call per round:

        searches = [FirstErrorBisection(len(steps)) for steps in solutions]
        while live := [s for s in searches if not s.done]:
            mcs = estimate([s.probe() for s in live])     # one batched rollout call
            for search, mc in zip(live, mcs):
                search.record(mc)

    The span (last_correct, first_incorrect] holds the first error: MC(x_{1:last_correct}) > 0
    and x_{1:first_incorrect} is incorrect (the whole solution, M steps, is by assumption).
    """

    def __init__(self, num_steps: int):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
        self.last_correct, self.first_incorrect = 0, num_steps
        self.estimates: list[tuple[int, float]] = []

    @property
    def done(self) -> bool:
        """The span holds a single step: the first error is `first_incorrect`."""
        return self.first_incorrect - self.last_correct <= 1

    def probe(self) -> int:
        """The prefix length t to roll out next: the midpoint of the span (1 ≤ t < M)."""
        if self.done:
            raise ValueError("The search is done; read result() instead of probing again.")
        return (self.last_correct + self.first_incorrect) // 2

    def record(self, mc: float) -> None:
        """Records MC(x_{1:t}) for t = probe(): > 0 moves the span after t, 0 to before it."""
        middle, mc = self.probe(), float(mc)
        if not 0.0 <= mc <= 1.0:  # Also rejects NaN.
            raise ValueError(
                f"mc_estimate({middle}) returned {mc}; it must return the fraction of rollouts "
                "that reach the gold answer, a number in [0, 1]."
            )
        self.estimates.append((middle, mc))
        if mc > 0.0:
            self.last_correct = middle
        else:
            self.first_incorrect = middle

    def result(self) -> FirstErrorSearch:
        if not self.done:
            raise ValueError("The search is not done yet; record() the estimate of probe().")
        return FirstErrorSearch(self.first_incorrect, tuple(self.estimates))


def locate_first_error(num_steps: int, mc_estimate: Callable[[int], float]) -> FirstErrorSearch:
    """OmegaPRM's binary search for the first error of an incorrect solution (§3.2).

    The solution's steps x_1..x_M follow a state known to be correct (MC > 0) and end in a wrong
    answer, so the full prefix x_{1:M} counts as incorrect without a rollout. Each round rolls out
    from the midpoint m of the span that holds the first error: MC(x_{1:m}) > 0 puts the error
    after m, MC = 0 at or before m. Steps are whatever units the caller splits the solution into
    (OmegaPRM uses token spans of about 1/16 of the mean solution length). Noisy estimates need
    not be monotone in t; the result is then the first error the probed prefixes imply, as in
    the paper. `FirstErrorBisection` runs many such searches in lockstep.

    Callback contract: `mc_estimate(t)` rolls out k completions from the prefix x_{1:t}
    (1 ≤ t < M) and returns the fraction that reach the gold answer, a float in [0, 1]. It is
    called at most ⌈log2 M⌉ times, never twice for one t, and never for t = 0 or t = M. A linear
    scan would need up to M − 1 calls.

    Raises:
      ValueError: if `num_steps` < 1, or a callback result is not a number in [0, 1].
    """
    search = FirstErrorBisection(num_steps)
    while not search.done:
        search.record(mc_estimate(search.probe()))
    return search.result()
