"""Implicit process rewards: a language model's log-ratio to a reference, read per token and step.

Yuan et al. 2024, "Free Process Rewards without Process Labels" (arXiv 2412.01981, "Implicit
PRM") and Cui et al. 2025, "Process Reinforcement through Implicit Rewards" (arXiv 2502.01456,
PRIME). An outcome reward parameterised as

    r_θ(y) = β·log π_θ(y)/π_ref(y) = Σ_t β·log π_θ(y_t|y_<t)/π_ref(y_t|y_<t)

makes every prefix sum q^t = Σ_{i≤t} r_i a Q value (Implicit PRM Prop. 3.1), so a model trained
only on outcome labels (CE, DPO, NCA or KTO below) yields token rewards r_t, step rewards
q^{end of step k} − q^{end of step k−1} (Implicit PRM Eq. 3) and response scores for free.

Conventions:
  * Token arrays are `[..., T]`; `mask` is 1 on the tokens the PRM scores (response tokens) and
    0 on prompt, observation and padding tokens. Outputs are 0 at masked positions, whatever the
    inputs hold there (NaN padding included).
  * Steps are given per token by `step_id[..., T]`: the index of the step the token belongs to,
    or −1 for tokens in no step (prompt, observation, padding), as in a `TrajectoryBatch`.
    `step_ids_from_ends` converts the inclusive step-end positions used by the Implicit PRM
    evaluation code into this form.
  * Step arrays are `[..., S]` with a `step_mask` marking the steps that exist.
"""

from __future__ import annotations

import math
from typing import Literal

import chex
import jax
import jax.numpy as jnp

from prm import masked

Aggregation = Literal["min", "sum", "last"]
_AGGREGATIONS = ("min", "sum", "last")


def token_rewards(
    logp_policy: chex.Array, logp_ref: chex.Array, mask: chex.Array, beta: float
) -> chex.Array:
    """r_t = β·(log π_θ(y_t|y_<t) − log π_ref(y_t|y_<t)) on masked tokens, 0 elsewhere.

    Implicit PRM §3 (token-level form), PRIME Eq. 3. Both log-prob arrays are `[..., T]`
    log-probabilities of the sampled tokens. Passing `logp_ref = 0` gives the "w/o ref" variant
    of Implicit PRM §5.5 (a uniform reference).
    """
    chex.assert_equal_shape([logp_policy, logp_ref, mask])
    return jnp.where(mask.astype(bool), beta * (logp_policy - logp_ref), 0.0)


def q_values(rewards: chex.Array, mask: chex.Array) -> chex.Array:
    """q^t = Σ_{i≤t, mask_i} r_i, the implicit Q value after token t (Implicit PRM Prop. 3.1).

    0 at masked positions. PRIME §5.4 calls the same quantity the value v(y_<t+1).
    """
    chex.assert_equal_shape([rewards, mask])
    keep = mask.astype(bool)
    return jnp.where(keep, jnp.cumsum(jnp.where(keep, rewards, 0.0), axis=-1), 0.0)


def sequence_rewards(rewards: chex.Array, mask: chex.Array) -> chex.Array:
    """r_θ(y) = Σ_t r_t over masked tokens: the outcome reward the PRM is trained on. `[...]`."""
    chex.assert_equal_shape([rewards, mask])
    return jnp.sum(jnp.where(mask.astype(bool), rewards, 0.0), axis=-1)


def step_ids_from_ends(step_ends: chex.Array, mask: chex.Array) -> chex.Array:
    """Per-token step ids from inclusive step-end positions.

    Args:
      step_ends: `[..., S]` int, the position of the last token of each step, ascending, with
        −1 for absent steps after the present ones.
      mask: `[..., T]`, 1 on the tokens that belong to some step (response tokens).

    Returns:
      `[..., T]` int32: token t is in step k when end_{k−1} < t ≤ end_k (with end_{−1} = −1);
      −1 where `mask` is 0 or after the last present step.
    """
    chex.assert_rank(step_ends, mask.ndim)
    chex.assert_equal_shape_prefix([step_ends, mask], mask.ndim - 1)
    num_tokens = mask.shape[-1]
    present = step_ends >= 0
    # Absent ends sort after every token, so searchsorted counts only present ends below t.
    ends = jnp.where(present, step_ends, num_tokens).astype(jnp.int32)
    positions = jnp.arange(num_tokens, dtype=jnp.int32)
    flat_ends = ends.reshape(-1, ends.shape[-1])
    step = jax.vmap(lambda e: jnp.searchsorted(e, positions, side="left"))(flat_ends)
    step = step.reshape(mask.shape).astype(jnp.int32)
    num_present = jnp.sum(present, axis=-1, keepdims=True)
    return jnp.where(mask.astype(bool) & (step < num_present), step, -1)


def step_rewards(
    rewards: chex.Array, step_id: chex.Array, num_steps: int
) -> tuple[chex.Array, chex.Array]:
    """Step rewards r^k = Σ_{t in step k} r_t (Implicit PRM Eq. 3: q^{end_k} − q^{end_{k−1}}).

    Args:
      rewards: `[..., T]` token rewards (e.g. from `token_rewards`).
      step_id: `[..., T]` int, step index per token, −1 for tokens in no step. Ids outside
        [0, num_steps) contribute to no step.
      num_steps: S, the static number of step slots.

    Returns:
      `(step_rewards, step_mask)`, both `[..., S]`: the segment sums (0 for empty steps) and
      whether step k has at least one token.
    """
    chex.assert_equal_shape([rewards, step_id])
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1 to hold any step, got {num_steps}.")
    lead_shape = rewards.shape[:-1]
    rows = math.prod(lead_shape)
    ids = step_id.reshape(rows, -1)
    in_step = (ids >= 0) & (ids < num_steps)
    # One scatter-add over all rows: O(B·T) whatever S is (token-level "steps" make S = T).
    # Tokens in no step go to a spare last segment that is dropped.
    segment = jnp.where(in_step, jnp.arange(rows)[:, None] * num_steps + ids, rows * num_steps)
    data = jnp.stack(
        [jnp.where(in_step, rewards.reshape(rows, -1), 0.0), in_step.astype(rewards.dtype)], -1
    )
    totals = jax.ops.segment_sum(
        data.reshape(-1, 2), segment.reshape(-1), num_segments=rows * num_steps + 1
    )[:-1].reshape(*lead_shape, num_steps, 2)
    return totals[..., 0], totals[..., 1] > 0


def response_scores(
    step_rewards: chex.Array,
    step_mask: chex.Array,
    aggregation: Aggregation = "min",
    cumulative: bool = False,
) -> chex.Array:
    """Score a response from its step rewards (Implicit PRM §4.1 and its evaluation code).

    With `cumulative=False` the aggregated values are the step rewards r^k ("single" in the
    Implicit PRM code); with `cumulative=True` they are the Q values q^k = Σ_{j≤k} r^j at the step
    ends ("accumulative"). Then:

      * "min": min_k (the paper's best-of-N score is `min` of the step rewards);
      * "sum": Σ_k (non-cumulative `sum` telescopes to q^S, the outcome-reward score);
      * "last": the value of the last present step (cumulative `last` is q^S as well).

    Returns `[...]`; 0 for a response with no present step.
    """
    chex.assert_equal_shape([step_rewards, step_mask])
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"Unknown aggregation {aggregation!r}; use one of {_AGGREGATIONS}.")
    present = step_mask.astype(bool)
    values = jnp.where(present, step_rewards, 0.0)
    if cumulative:
        values = jnp.cumsum(values, axis=-1)
    any_present = jnp.any(present, axis=-1)
    if aggregation == "min":
        smallest = jnp.min(jnp.where(present, values, jnp.inf), axis=-1)
        return jnp.where(any_present, smallest, 0.0)
    if aggregation == "sum":
        return jnp.sum(jnp.where(present, values, 0.0), axis=-1)
    last = step_mask.shape[-1] - 1 - jnp.argmax(jnp.flip(present, axis=-1), axis=-1)
    last_value = jnp.take_along_axis(values, last[..., None], axis=-1)[..., 0]
    return jnp.where(any_present, last_value, 0.0)


def first_error_step(
    step_rewards: chex.Array, step_mask: chex.Array, threshold: float = 0.5
) -> chex.Array:
    """ProcessBench prediction: the first step k with σ(q^k) < threshold, or −1 if none.

    q^k are the cumulative step values (Implicit PRM evaluation code, `processbench.py`, with the
    inference β already in `step_rewards`). Returns `[...]` int32.
    """
    chex.assert_equal_shape([step_rewards, step_mask])
    present = step_mask.astype(bool)
    q = jnp.cumsum(jnp.where(present, step_rewards, 0.0), axis=-1)
    is_error = present & (jax.nn.sigmoid(q) < threshold)
    return jnp.where(jnp.any(is_error, axis=-1), jnp.argmax(is_error, axis=-1), -1).astype(
        jnp.int32
    )


def _entry_mask(values: chex.Array, mask: chex.Array | None) -> chex.Array:
    if mask is None:
        return jnp.ones(values.shape, dtype=bool)
    chex.assert_equal_shape([values, mask])
    return mask.astype(bool)


def ce_loss(rewards: chex.Array, labels: chex.Array, mask: chex.Array | None = None) -> chex.Array:
    """Cross-entropy on outcome labels (Implicit PRM Eq. 5, PRIME Algorithm 1 step 4).

        L = −mean_i [ l_i·log σ(r_i) + (1 − l_i)·log(1 − σ(r_i)) ]

    `rewards` are sequence rewards r_θ(y) = β·log π_θ(y)/π_ref(y) (`sequence_rewards`), `labels`
    outcome labels in [0, 1] (soft labels, e.g. PRIME's code pass rates, are allowed). The paper
    prints the formula without the leading minus; this is the negative log-likelihood its code
    minimises. Computed with log-sigmoids, so large |r| stays finite. `mask` `[N]` drops padding
    entries; 0 when every entry is masked.
    """
    chex.assert_rank(rewards, 1)
    chex.assert_equal_shape([rewards, labels])
    keep = _entry_mask(rewards, mask)
    nll = -(labels * jax.nn.log_sigmoid(rewards) + (1.0 - labels) * jax.nn.log_sigmoid(-rewards))
    return masked.masked_mean(nll, keep)


def dpo_loss(
    chosen_rewards: chex.Array, rejected_rewards: chex.Array, mask: chex.Array | None = None
) -> chex.Array:
    """DPO on (correct, incorrect) pairs (Rafailov et al. 2023; Implicit PRM §4 objectives).

        L = −mean_p log σ( r(y_w) − r(y_l) )

    with r(y) = β·[log π_θ(y) − log π_ref(y)], which expands to the paper's
    β·[(log π_θ(y_w) − log π_θ(y_l)) − (log π_ref(y_w) − log π_ref(y_l))]. Arrays are `[P]` pairs;
    `mask` drops padding pairs; 0 when every pair is masked.
    """
    chex.assert_rank(chosen_rewards, 1)
    chex.assert_equal_shape([chosen_rewards, rejected_rewards])
    keep = _entry_mask(chosen_rewards, mask)
    nll = -jax.nn.log_sigmoid(chosen_rewards - rejected_rewards)
    return masked.masked_mean(nll, keep)


def nca_loss(
    chosen_rewards: chex.Array, rejected_rewards: chex.Array, mask: chex.Array | None = None
) -> chex.Array:
    """NCA on pairs (Chen et al. 2024, "Noise Contrastive Alignment"; Implicit PRM §4).

        L = mean_p [ −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l) ]

    The pairwise NCA form (as TRL's `nca_pair`); the Implicit PRM paper does not state which NCA
    variant it used. `[P]` arrays, `mask` as in `dpo_loss`.
    """
    chex.assert_rank(chosen_rewards, 1)
    chex.assert_equal_shape([chosen_rewards, rejected_rewards])
    keep = _entry_mask(chosen_rewards, mask)
    per_pair = (
        -jax.nn.log_sigmoid(chosen_rewards)
        - 0.5 * jax.nn.log_sigmoid(-chosen_rewards)
        - 0.5 * jax.nn.log_sigmoid(-rejected_rewards)
    )
    return masked.masked_mean(per_pair, keep)


def kto_loss(
    chosen_rewards: chex.Array,
    rejected_rewards: chex.Array,
    kl_rewards: chex.Array,
    chosen_mask: chex.Array | None = None,
    rejected_mask: chex.Array | None = None,
    kl_mask: chex.Array | None = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> chex.Array:
    """KTO on unpaired data (Ethayarajh et al. 2024; Implicit PRM §4, OpenRLHF's KTOLoss).

        z   = max(0, stop_gradient(mean_j r(y_j^KL)))
        L_w = 1 − σ(r(y_w) − z),   L_l = 1 − σ(z − r(y_l))
        L   = (Σ w_d·L_w + Σ w_u·L_l) / (N_w + N_l)

    `kl_rewards` are sequence rewards β·log π_θ/π_ref of mismatched (prompt, completion) pairs;
    their clamped batch mean is the reference point β·z_0. With a global (sharded) array the
    mean is over the whole batch, as OpenRLHF's all-reduce. 0 when both sides are fully masked;
    z = 0 when every KL entry is masked.
    """
    for values in (chosen_rewards, rejected_rewards, kl_rewards):
        chex.assert_rank(values, 1)
    keep_w = _entry_mask(chosen_rewards, chosen_mask)
    keep_l = _entry_mask(rejected_rewards, rejected_mask)
    keep_kl = _entry_mask(kl_rewards, kl_mask)
    reference = jnp.maximum(jax.lax.stop_gradient(masked.masked_mean(kl_rewards, keep_kl)), 0.0)
    chosen_losses = desirable_weight * (1.0 - jax.nn.sigmoid(chosen_rewards - reference))
    rejected_losses = undesirable_weight * (1.0 - jax.nn.sigmoid(reference - rejected_rewards))
    losses = jnp.concatenate([chosen_losses, rejected_losses])
    return masked.masked_mean(losses, jnp.concatenate([keep_w, keep_l]))


def pairwise_accuracy(rewards: chex.Array, labels: chex.Array) -> chex.Array:
    """PRIME's `dpo_acc` metric: how often the PRM orders a group's responses like their labels.

    For each group (row of `[G, K]`), over pairs i < j with different labels, the fraction
    where [r_i > r_j] == [l_i > l_j], weighted by |l_i − l_j| (PRIME §3.4 code,
    `compute_dpo_accuracy`; a reward tie counts as predicting l_i < l_j). 0.5 for a group whose
    labels are all equal. Returns `[G]`.
    """
    chex.assert_rank(rewards, 2)
    chex.assert_equal_shape([rewards, labels])
    label_diff = labels[:, :, None] - labels[:, None, :]
    agree = (rewards[:, :, None] - rewards[:, None, :] > 0) == (label_diff > 0)
    upper = jnp.triu(jnp.ones(rewards.shape[-1:] * 2, dtype=bool), k=1)
    weight = jnp.where(upper, jnp.abs(label_diff), 0.0)
    total_weight = jnp.sum(weight, axis=(-2, -1))
    agreed = jnp.sum(jnp.where(agree, weight, 0.0), axis=(-2, -1))
    return jnp.where(total_weight > 0, agreed / jnp.maximum(total_weight, 1e-30), 0.5)


def best_of_n(scores: chex.Array, mask: chex.Array) -> chex.Array:
    """Index of the highest-scoring present candidate per row of `[..., N]`; −1 if none present."""
    chex.assert_equal_shape([scores, mask])
    present = mask.astype(bool)
    best = jnp.argmax(jnp.where(present, scores, -jnp.inf), axis=-1)
    return jnp.where(jnp.any(present, axis=-1), best, -1).astype(jnp.int32)


def weighted_majority_vote(
    answer_ids: chex.Array, weights: chex.Array, mask: chex.Array
) -> chex.Array:
    """Weighted majority voting: the candidate whose answer has the largest total weight.

        a* = argmax_a Σ_i [a_i = a]·w_i      (Math-Shepherd §"sc+rm"; Implicit PRM Fig. 3)

    Args:
      answer_ids: `[..., N]` int, an id per candidate's extracted final answer (equal ids =
        equivalent answers; the host maps answer strings to ids).
      weights: `[..., N]` per-candidate weights. The Implicit PRM code uses σ(score); pass
        `jax.nn.sigmoid(scores)` for that, or ones for plain majority voting.
      mask: `[..., N]`, 1 on real candidates.

    Returns:
      `[...]` int32, the index of the first candidate holding the winning answer (so both the
      answer and a response carrying it can be read off); −1 for a row with no candidates.
      Ties between answers go to the one whose first candidate comes first. Costs O(N²) per
      row, which is nothing at best-of-N sizes (N ≤ a few hundred).
    """
    chex.assert_equal_shape([answer_ids, weights, mask])
    present = mask.astype(bool)
    same = answer_ids[..., :, None] == answer_ids[..., None, :]
    votes = jnp.where(same & present[..., None, :], weights[..., None, :], 0.0)
    totals = jnp.sum(votes, axis=-1)
    return best_of_n(totals, present)
