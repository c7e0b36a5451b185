"""Variance of truncated (SLATE) vs full-trajectory group advantages: closed forms and Monte Carlo.

SLATE (Samarinas et al., arXiv 2602.23440, §4; reconstructed statement in the reference notes)
claims that, under the same dense step rewards, sampling k siblings from a shared prefix cuts the
variance of step t's advantage by up to a factor T against sampling k complete trajectories.

Setting. A T-step episode; step t's reward r_t has conditional variance v_t = Var(r_t | τ_<t)
given the prefix. Assumptions:

    (A1) the return is additive, R = Σ_t r_t (reward-to-go: R_≥t = Σ_{t'≥t} r_t');
    (A2) given the prefix, step rewards are uncorrelated across steps and their conditional law
         does not depend on the prefix;
    (A3) both schemes centre with the mean of their own group of k (no std normalisation).

The two advantages of sample j at step t are

    full (GRPO, dense reward):  Â_full,t^j = R^j − (1/k) Σ_i R^i        (or R_≥t for reward-to-go)
    truncated (SLATE):          Â_tr,t^j   = r_t^j − (1/k) Σ_i r_t^i    (k siblings, one prefix)

and, since Var(x_j − x̄) = (1 − 1/k)·Var(x) for k i.i.d. draws,

    Var(Â_tr,t)   = (1 − 1/k)·v_t
    Var(Â_full,t) = (1 − 1/k)·Σ_{t'} v_t'            (reward-to-go: Σ_{t'≥t} v_t')
    ratio_t       = Σ_{t'} v_t' / v_t                 (reward-to-go: Σ_{t'≥t} v_t' / v_t)

which is exactly T (resp. T − t + 1) for equal v_t. Per step, either ratio exceeds T wherever
v_t is small enough; summed over the steps of an episode, Σ_t Var(Â_full,t) / Σ_t Var(Â_tr,t) is
exactly T for the total return and Σ_t t·v_t / Σ_t v_t ≤ T for reward-to-go, whatever the v_t.

The synthetic process used to check this (reference notes §4.3): per-step softmax policies π_t
over m actions, r_t = q_t[a_t] + c·q_{t−1}[a_{t−1}] + σ_t·ε. With c = 0 it satisfies A1–A3; with
c ≠ 0 step rewards depend on the prefix (A2 fails), which `predict` also handles exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

# Denominator guard of the GRPO/SLATE std-normalised advantage (SLATE Eq. 5).
NORMALISATION_EPS = 1e-6


def _check_group_size(group_size: int) -> None:
    if group_size < 2:
        raise ValueError(
            f"group_size must be at least 2 (got {group_size}): with one sample the group-centred "
            "advantage is identically zero."
        )


def _check_step_variances(step_variances: chex.Array) -> None:
    if jnp.ndim(step_variances) < 1:
        raise ValueError(
            "step_variances must have a trailing step axis [..., T]; got a scalar. Pass "
            "jnp.full((T,), v) for T equal steps."
        )


def truncated_advantage_variance(step_variances: chex.Array, group_size: int) -> chex.Array:
    """Var(Â_tr,t) = (1 − 1/k)·v_t (SLATE §4, truncated sampling).

    Args:
      step_variances: [..., T] conditional step-reward variances v_t = Var(r_t | τ_<t).
      group_size: k, the number of siblings per prefix.

    Returns:
      [..., T] variance of the group-centred step advantage.
    """
    _check_step_variances(step_variances)
    _check_group_size(group_size)
    return (1.0 - 1.0 / group_size) * step_variances


def full_advantage_variance(
    step_variances: chex.Array, group_size: int, reward_to_go: bool = False
) -> chex.Array:
    """Var(Â_full,t) = (1 − 1/k)·Σ_{t'} v_t' (reward-to-go: Σ_{t'≥t} v_t'), under A1–A3.

    Args:
      step_variances: [..., T] step-reward variances v_t.
      group_size: k, the number of complete trajectories per group.
      reward_to_go: centre R_≥t instead of the total return R.

    Returns:
      [..., T] variance of the group-centred return advantage at each step.
    """
    _check_step_variances(step_variances)
    _check_group_size(group_size)
    return (1.0 - 1.0 / group_size) * _return_variances(step_variances, reward_to_go)


def advantage_variance_ratio(step_variances: chex.Array, reward_to_go: bool = False) -> chex.Array:
    """Var(Â_full,t) / Var(Â_tr,t) = Σ_{t'} v_t' / v_t (reward-to-go: Σ_{t'≥t} v_t' / v_t).

    Equal v_t give T (reward-to-go: T − t + 1). The (1 − 1/k) factors cancel, so the ratio does
    not depend on the group size.

    Returns:
      [..., T] ratios; +inf where v_t = 0 (that step's truncated advantage is identically zero).
    """
    _check_step_variances(step_variances)
    full = _return_variances(step_variances, reward_to_go)
    positive = step_variances > 0
    return jnp.where(positive, full / jnp.where(positive, step_variances, 1.0), jnp.inf)


def _return_variances(step_variances: chex.Array, reward_to_go: bool) -> chex.Array:
    if reward_to_go:
        return jnp.flip(jnp.cumsum(jnp.flip(step_variances, -1), axis=-1), -1)
    return jnp.broadcast_to(jnp.sum(step_variances, -1, keepdims=True), step_variances.shape)


class SyntheticProcess(NamedTuple):
    """A T-step process with per-step softmax policies and noisy, optionally prefix-coupled rewards.

    r_t = q_t[a_t] + c·q_{t−1}[a_{t−1}] + σ_t·ε_t,   a_t ~ softmax(logits_t),   ε_t ~ N(0, 1),
    with the coupling term absent at t = 1 (SLATE §4.3 recipe of the reference notes).

    Attributes:
      logits: [T, m] policy logits θ_t.
      values: [T, m] mean reward q_t[a] of each action.
      noise_std: [T] reward noise σ_t (judge noise).
      prefix_coupling: c, the weight of the previous action's value in the step reward.
    """

    logits: chex.Array
    values: chex.Array
    noise_std: chex.Array
    prefix_coupling: chex.Numeric = 0.0

    @classmethod
    def repeated(
        cls,
        num_steps: int,
        logits: chex.Array,
        values: chex.Array,
        noise_std: float,
        prefix_coupling: float = 0.0,
    ) -> SyntheticProcess:
        """The same step (logits [m], values [m], σ) repeated `num_steps` times."""
        chex.assert_rank([logits, values], 1)
        chex.assert_equal_shape([logits, values])
        return cls(
            logits=jnp.tile(jnp.asarray(logits, jnp.float32), (num_steps, 1)),
            values=jnp.tile(jnp.asarray(values, jnp.float32), (num_steps, 1)),
            noise_std=jnp.full((num_steps,), noise_std, jnp.float32),
            prefix_coupling=prefix_coupling,
        )

    @property
    def num_steps(self) -> int:
        return self.values.shape[0]

    @property
    def policy(self) -> chex.Array:
        """[T, m] action probabilities π_t."""
        return jax.nn.softmax(self.logits, axis=-1)


def _check_process(process: SyntheticProcess) -> None:
    chex.assert_rank([process.logits, process.values, process.noise_std], [2, 2, 1])
    chex.assert_equal_shape([process.logits, process.values])
    chex.assert_equal_shape_prefix([process.values, process.noise_std], 1)
    if process.values.shape[1] < 2:
        raise ValueError(
            f"The process needs at least 2 actions per step (got values of shape "
            f"{process.values.shape}); with one action the policy has no gradient."
        )
    chex.assert_rank(process.prefix_coupling, 0)


def signal_variances(process: SyntheticProcess) -> chex.Array:
    """[T] u_t = Var_{a~π_t}(q_t[a]): the variance of the true step advantage Δ_t = q_t[a_t] − E q_t."""
    _check_process(process)
    policy = process.policy
    centred = process.values - jnp.sum(policy * process.values, -1, keepdims=True)
    return jnp.sum(policy * jnp.square(centred), -1)


def step_variances(process: SyntheticProcess) -> chex.Array:
    """[T] v_t = Var(r_t | τ_<t) = u_t + σ_t²: the prefix term c·q_{t−1}[a_{t−1}] is fixed."""
    return signal_variances(process) + jnp.square(process.noise_std)


class SchemeStatistics(NamedTuple):
    """Per-step statistics of one sampling scheme (leaves [T]; gradient_mean [T, m]).

    Attributes:
      advantage_variance: Var(Â_t) of the group-centred advantage.
      gradient_variance: tr Cov(ĝ_t) of the group's score-function gradient for θ_t,
        ĝ_t = (1/k) Σ_j (onehot(a_t^j) − π_t)·Â_t^j.
      gradient_mean: E[ĝ_t].
      signal_to_noise: corr²(Â_t, Δ_t), Δ_t = q_t[a_t] − E q_t the true step advantage of the
        sample's own step-t action.
      normalised_signal_to_noise: corr²(Â_t / std_j, Δ_t) for the GRPO-style std-normalised
        advantage (SLATE Eq. 5). No closed form: None in `predict`, estimated by `monte_carlo`.
    """

    advantage_variance: chex.Array
    gradient_variance: chex.Array
    gradient_mean: chex.Array
    signal_to_noise: chex.Array
    normalised_signal_to_noise: chex.Array | None = None


class VarianceStatistics(NamedTuple):
    """Statistics of the three schemes on one process."""

    truncated: SchemeStatistics
    full: SchemeStatistics
    full_reward_to_go: SchemeStatistics


@functools.partial(jax.jit, static_argnames="group_size")
def predict(process: SyntheticProcess, group_size: int) -> VarianceStatistics:
    """Exact statistics of the three schemes on a synthetic process, prefix coupling included.

    Write sample j's return (R, R_≥t, or r_t for the truncated scheme) as
    y = w_t·Δ_t + z with z independent of a_t and Var(y) = B_t. The coefficient is w_t = 1 for
    the truncated scheme (the shared prefix term cancels) and w_t = 1 + c·[t < T] for full
    trajectories (a_t also moves r_{t+1}). With s = onehot(a_t) − π_t, A = E‖s‖² = 1 − ‖π_t‖²,
    G = Cov(s, Δ_t) = π_t ⊙ Δ_t, D = E[‖s‖²·y²] = w_t²·E[‖s‖²Δ_t²] + A·(B_t − w_t²u_t), expanding
    the fourth moments of k i.i.d. pairs (s_j, y_j) gives

        Var(Â_t)    = (1 − 1/k)·B_t
        E[ĝ_t]      = (1 − 1/k)·w_t·G
        tr Cov(ĝ_t) = (k − 1)/k³ · [(k − 1)·D + A·B_t − (k − 2)·w_t²·‖G‖²]
        corr²(Â_t, Δ_t) = (1 − 1/k)·w_t²·u_t / B_t        (0 where B_t·u_t = 0)

    with B_t = v_t (truncated), Var(R) = Σ_t w_t²u_t + Σ_t σ_t² (full), or
    Var(R_≥t) = c²·u_{t−1}·[t > 1] + Σ_{t'≥t} (w_t'²u_t' + σ_t'²) (reward-to-go). For c = 0 the
    advantage variances reduce to the SLATE closed forms above, the mean gradients of all three
    schemes coincide (unbiasedness), and tr Cov(ĝ_full,t) − tr Cov(ĝ_tr,t) =
    (1 − 1/k)·(A/k)·(B_t − v_t): the gradient-variance ratio tracks the advantage-variance ratio
    once the noise dominates ‖G‖².

    Returns:
      `VarianceStatistics` with `normalised_signal_to_noise` = None.
    """
    _check_process(process)
    _check_group_size(group_size)
    k = group_size
    policy = process.policy
    delta = process.values - jnp.sum(policy * process.values, -1, keepdims=True)  # [T, m]
    signal = jnp.sum(policy * jnp.square(delta), -1)  # u_t
    noise = jnp.square(process.noise_std)
    score_norm = 1.0 - 2.0 * policy + jnp.sum(jnp.square(policy), -1, keepdims=True)  # ‖e_a − π‖²
    score_sq = 1.0 - jnp.sum(jnp.square(policy), -1)  # A
    score_signal_sq = jnp.sum(policy * score_norm * jnp.square(delta), -1)  # E[‖s‖²Δ²]
    gradient = policy * delta  # G
    gradient_sq = jnp.sum(jnp.square(gradient), -1)

    num_steps = process.num_steps
    has_next = jnp.arange(num_steps) < num_steps - 1
    full_weight = 1.0 + process.prefix_coupling * has_next
    weighted = jnp.square(full_weight) * signal + noise
    previous_signal = jnp.concatenate([jnp.zeros((1,)), signal[:-1]])
    suffix = jnp.flip(jnp.cumsum(jnp.flip(weighted)))

    def scheme(weight: chex.Array, return_variance: chex.Array) -> SchemeStatistics:
        weight_sq = jnp.square(weight)
        moment = weight_sq * score_signal_sq + score_sq * (return_variance - weight_sq * signal)
        informative = return_variance * signal > 0
        return SchemeStatistics(
            advantage_variance=(1.0 - 1.0 / k) * return_variance,
            gradient_variance=(k - 1)
            / k**3
            * ((k - 1) * moment + score_sq * return_variance - (k - 2) * weight_sq * gradient_sq),
            gradient_mean=(1.0 - 1.0 / k) * weight[:, None] * gradient,
            signal_to_noise=jnp.where(
                informative,
                (1.0 - 1.0 / k) * weight_sq * signal / jnp.where(informative, return_variance, 1.0),
                0.0,
            ),
        )

    return VarianceStatistics(
        truncated=scheme(jnp.ones((num_steps,)), signal + noise),
        full=scheme(full_weight, jnp.full((num_steps,), jnp.sum(weighted))),
        full_reward_to_go=scheme(
            full_weight, jnp.square(process.prefix_coupling) * previous_signal + suffix
        ),
    )


class Estimate(NamedTuple):
    """A Monte Carlo value with its standard error."""

    value: chex.Array
    stderr: chex.Array


class MonteCarloResult(NamedTuple):
    """Monte Carlo statistics (`value`) and their standard errors (`stderr`), each shaped like
    `predict`'s output (plus `normalised_signal_to_noise`).

    The standard error of every statistic comes from batch means: the groups are split into
    `num_batches` equal batches, the statistic is computed on each, and
    stderr = std_batches(statistic, ddof=1) / √num_batches. The schemes are simulated with
    independent randomness, so `ratio` and `difference` of two different schemes combine
    their errors as independent.
    """

    value: VarianceStatistics
    stderr: VarianceStatistics

    def get(self, select: Callable[[VarianceStatistics], chex.Array]) -> Estimate:
        """`Estimate` of one statistic, e.g. `result.get(lambda s: s.full.advantage_variance)`."""
        return Estimate(select(self.value), select(self.stderr))

    def ratio(
        self,
        numerator: Callable[[VarianceStatistics], chex.Array],
        denominator: Callable[[VarianceStatistics], chex.Array],
    ) -> Estimate:
        """numerator / denominator with the delta-method error of two independent estimates."""
        top, bottom = self.get(numerator), self.get(denominator)
        value = top.value / bottom.value
        relative = jnp.hypot(top.stderr / top.value, bottom.stderr / bottom.value)
        return Estimate(value, jnp.abs(value) * relative)

    def difference(
        self,
        first: Callable[[VarianceStatistics], chex.Array],
        second: Callable[[VarianceStatistics], chex.Array],
    ) -> Estimate:
        """first − second with the error of two independent estimates."""
        a, b = self.get(first), self.get(second)
        return Estimate(a.value - b.value, jnp.hypot(a.stderr, b.stderr))


class _Moments(NamedTuple):
    """Per-step sums over a group's k samples, from which `_statistics` derives everything."""

    advantage_sq: chex.Array  # Σ_j Â_j²
    advantage_signal: chex.Array  # Σ_j Â_j·Δ_j
    normalised_sq: chex.Array  # Σ_j Ân_j²
    normalised_signal: chex.Array  # Σ_j Ân_j·Δ_j
    signal: chex.Array  # Σ_j Δ_j
    signal_sq: chex.Array  # Σ_j Δ_j²
    gradient: chex.Array  # ĝ_t, [T, m]
    gradient_sq: chex.Array  # ‖ĝ_t‖²


def _scheme_moments(
    returns: chex.Array, actions: chex.Array, policy: chex.Array, advantages: chex.Array
) -> _Moments:
    """Moments of one group of one scheme.

    Args:
      returns: [k, T] the quantity centred at each step (r_t, R or R_≥t).
      actions: [k, T, m] one-hot step-t actions whose score function is taken.
      policy: [T, m] π_t.
      advantages: [T, m] true step advantages q_t[a] − E q_t.
    """
    k = returns.shape[0]
    delta = jnp.sum(actions * advantages, -1)
    advantage = returns - jnp.mean(returns, 0)
    normalised = advantage / (jnp.std(returns, 0, ddof=1) + NORMALISATION_EPS)
    gradient = jnp.sum((actions - policy) * advantage[..., None], 0) / k
    return _Moments(
        advantage_sq=jnp.sum(jnp.square(advantage), 0),
        advantage_signal=jnp.sum(advantage * delta, 0),
        normalised_sq=jnp.sum(jnp.square(normalised), 0),
        normalised_signal=jnp.sum(normalised * delta, 0),
        signal=jnp.sum(delta, 0),
        signal_sq=jnp.sum(jnp.square(delta), 0),
        gradient=gradient,
        gradient_sq=jnp.sum(jnp.square(gradient), -1),
    )


def _group_moments(
    process: SyntheticProcess, uniforms: chex.Array, normals: chex.Array
) -> _Moments:
    """Simulates one group under each scheme: moments with a leading axis [truncated, full,
    full reward-to-go].

    Args:
      process: the synthetic process.
      uniforms: [2, k, T] U(0, 1) draws for the actions (full, truncated), by inverse CDF.
      normals: [2, k, T] N(0, 1) reward noise (full, truncated).
    """
    group_size, num_steps = uniforms.shape[1:]
    policy = process.policy
    thresholds = jnp.cumsum(policy, -1)[:, :-1]  # [T, m − 1]
    indices = jnp.sum(uniforms[..., None] > thresholds, -1)  # [2, k, T]
    actions = (indices[..., None] == jnp.arange(policy.shape[-1])).astype(policy.dtype)
    own = jnp.sum(actions * process.values, -1)  # q_t[a_t]

    # Full trajectories: k independent episodes; a_{t−1} is each episode's own previous action.
    # Truncated: at each step k siblings share one prefix. The trajectory continues with
    # sibling 0; any choice independent of the siblings' rewards keeps the prefix on-policy.
    previous = jnp.stack(
        [own[0, :, :-1], jnp.broadcast_to(own[1, :1, :-1], (group_size, num_steps - 1))]
    )
    coupling = jnp.pad(previous, ((0, 0), (0, 0), (1, 0)))
    rewards = own + process.prefix_coupling * coupling + process.noise_std * normals
    total = jnp.broadcast_to(jnp.sum(rewards[0], -1, keepdims=True), rewards[0].shape)
    to_go = jnp.flip(jnp.cumsum(jnp.flip(rewards[0], -1), -1), -1)
    advantages = process.values - jnp.sum(policy * process.values, -1, keepdims=True)
    return jax.vmap(_scheme_moments, (0, 0, None, None))(
        jnp.stack([rewards[1], total, to_go]),
        jnp.stack([actions[1], actions[0], actions[0]]),
        policy,
        advantages,
    )


def _corr_sq(cross, advantage_sq, signal, signal_sq, count):
    """corr²(A, Δ) from sums over `count` samples, using that A has mean 0 within every group."""
    signal_var = signal_sq / count - np.square(signal / count)
    denominator = advantage_sq / count * signal_var
    informative = denominator > 0
    return np.where(
        informative, np.square(cross / count) / np.where(informative, denominator, 1.0), 0.0
    )


def _statistics(moments: _Moments, num_groups: int, group_size: int) -> SchemeStatistics:
    """Statistics from float64 moments, each summed over `num_groups` groups (any leading axes)."""
    count = num_groups * group_size
    mean_gradient = moments.gradient / num_groups
    return SchemeStatistics(
        advantage_variance=moments.advantage_sq / count,
        gradient_variance=(moments.gradient_sq - num_groups * np.sum(np.square(mean_gradient), -1))
        / (num_groups - 1),
        gradient_mean=mean_gradient,
        signal_to_noise=_corr_sq(
            moments.advantage_signal, moments.advantage_sq, moments.signal, moments.signal_sq, count
        ),
        normalised_signal_to_noise=_corr_sq(
            moments.normalised_signal,
            moments.normalised_sq,
            moments.signal,
            moments.signal_sq,
            count,
        ),
    )


@functools.partial(jax.jit, static_argnames=("group_size", "batch_size"))
def _simulate_batch(
    process: SyntheticProcess, seed: int, batch: int, group_size: int, batch_size: int
) -> _Moments:
    """Moments of batch `batch`, summed over its groups: leaves [3, ...] (truncated, full,
    full reward-to-go). Groups are vmapped; memory is O(batch_size·k·T·m)."""
    # The RBG generator compiles several times faster than threefry on CPU, where compilation
    # dominates a run of this size.
    key = jax.random.fold_in(jax.random.key(seed, impl="rbg"), batch)
    uniform_key, normal_key = jax.random.split(key)
    draws = (batch_size, 2, group_size, process.num_steps)
    per_group = jax.vmap(functools.partial(_group_moments, process))(
        jax.random.uniform(uniform_key, draws), jax.random.normal(normal_key, draws)
    )
    return jax.tree.map(lambda x: jnp.sum(x, 0), per_group)


def monte_carlo(
    process: SyntheticProcess,
    group_size: int,
    num_groups: int,
    seed: int,
    num_batches: int = 50,
) -> MonteCarloResult:
    """Simulates `num_groups` groups of each scheme on `process` (SLATE §4.3 recipe).

    Per group: k complete trajectories (full; centred on R and on R_≥t) and, at every step, k
    siblings from one shared on-policy prefix (truncated; centred on r_t). Each batch is one jitted
    JAX program over its vmapped groups (compiled once per T, m, k and batch size); the closing
    reductions from per-batch moments to statistics run in float64 NumPy.

    Args:
      process: the synthetic process.
      group_size: k ≥ 2.
      num_groups: N, a multiple of `num_batches`.
      seed: integer seed; the result is a deterministic function of it.
      num_batches: number of batches for the batch-means standard errors (≥ 2); also the
        number of sequential chunks the groups are simulated in.

    Returns:
      `MonteCarloResult` of NumPy arrays, comparable field by field with
      `predict(process, group_size)`.
    """
    _check_process(process)
    _check_group_size(group_size)
    if num_batches < 2 or num_groups <= 0 or num_groups % num_batches:
        raise ValueError(
            f"num_groups ({num_groups}) must be a positive multiple of num_batches "
            f"({num_batches}), and num_batches at least 2 (standard errors need two batches)."
        )
    batch_size = num_groups // num_batches
    batches = [
        _simulate_batch(process, seed, batch, group_size, batch_size)
        for batch in range(num_batches)
    ]
    # Leaves [3, B, ...]: scheme first, then batch.
    per_batch = jax.tree.map(lambda *x: np.stack(x, 1).astype(np.float64), *batches)

    def statistics(moments, groups):
        return VarianceStatistics(
            *(
                _statistics(jax.tree.map(lambda x, i=i: x[i], moments), groups, group_size)
                for i in range(3)
            )
        )

    pooled = statistics(jax.tree.map(lambda x: x.sum(1), per_batch), num_groups)
    batched = statistics(per_batch, batch_size)
    stderr = jax.tree.map(lambda x: x.std(0, ddof=1) / np.sqrt(num_batches), batched)
    return MonteCarloResult(value=pooled, stderr=stderr)
