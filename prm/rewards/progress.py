"""Process advantage verifiers: rewarding progress under a prover policy.

Setlur et al. 2024, "Rewarding Progress: Scaling Automated Process Verifiers for LLM Reasoning"
(arXiv 2410.08146, PAV). A step is rewarded by how much it changes a prover μ's chance of
success, A^μ(s_h, a_h) = Q^μ(s_h, a_h) − V^μ(s_h), which with deterministic concatenation
dynamics is the difference of Q^μ between consecutive prefixes (PAV Eq. 2). RL and beam search
use the effective reward Q^π + α·A^μ (PAV Eq. 5), and a Best-of-K prover comes for free from a
Q^π model through 1 − (1 − Q^π)^K (PAV Eq. 30).

Step arrays are `[..., H]` over the steps of a response with a `step_mask` marking the steps
that exist (ragged step counts are a prefix mask). Outputs are 0 at masked steps, whatever the
inputs hold there.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def best_of_k_values(values: chex.Array, k: int) -> chex.Array:
    """Q^{BoK(π)} = 1 − (1 − Q^π)^K: the success probability of the best of K attempts.

    PAV Eq. 30 (Remark 3.1: Bo4 was the best search prover for every base policy). `values` are
    success probabilities in [0, 1]; `k` is a static integer ≥ 1 (K = 1 is the identity).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (the number of attempts), got {k!r}.")
    return 1.0 - (1.0 - values) ** k


def prover_advantages(prefix_values: chex.Array, step_mask: chex.Array) -> chex.Array:
    """A^μ(s_h, a_h) = Q^μ(s_h, a_h) − Q^μ(s_{h−1}, a_{h−1}), the progress made by step h.

    PAV Eq. 2 (§1.10 of the notes: one forward pass of a Q model at every step delimiter, then
    a difference over consecutive prefixes).

    Args:
      prefix_values: `[..., H + 1]` prover values of the prefixes: index 0 is V^μ(x) of the
        problem alone, index h ≥ 1 is Q^μ after step h.
      step_mask: `[..., H]`, 1 on the steps that exist.

    Returns:
      `[..., H]` advantages, 0 at masked steps.
    """
    chex.assert_rank(prefix_values, step_mask.ndim)
    chex.assert_equal_shape_prefix([prefix_values, step_mask], step_mask.ndim - 1)
    if prefix_values.shape[-1] != step_mask.shape[-1] + 1:
        raise ValueError(
            "prefix_values must hold one more value than there are steps (index 0 is the value "
            f"of the problem alone); got {prefix_values.shape[-1]} values for "
            f"{step_mask.shape[-1]} steps."
        )
    advantages = prefix_values[..., 1:] - prefix_values[..., :-1]
    return jnp.where(step_mask.astype(bool), advantages, 0.0)


def effective_rewards(
    policy_values: chex.Array,
    advantages: chex.Array,
    step_mask: chex.Array,
    alpha: float,
) -> chex.Array:
    """Per-step effective reward Q^π(s_h, a_h) + α·A^μ(s_h, a_h) (PAV Eq. 5).

    `policy_values` is Q^π of each step (for online RL, the sampled outcome; for search, a Q^π
    model), `advantages` A^μ from `prover_advantages`. PAV used α = 0.5 (2B, 9B) and 0.2 (27B)
    for beam search and α = 3 to 5 for RL; α = 0 recovers outcome-reward RL. `[..., H]`, 0 at
    masked steps.
    """
    chex.assert_equal_shape([policy_values, advantages, step_mask])
    return jnp.where(step_mask.astype(bool), policy_values + alpha * advantages, 0.0)
