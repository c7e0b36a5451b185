import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.rewards import implicit

# Implicit PRM notes §1.4 worked example: response-token log-ratios and inclusive step ends.
LOG_RATIOS = jnp.array([[0.2, -0.1, 0.3, -0.4, 0.1]])
STEP_ENDS = jnp.array([[1, 3, 4]])

# PRIME notes §4.4: masked per-token log-ratios of K=4 responses, acc [1, 0, 1, 0], β = 0.05.
PRIME_Q = jnp.array(
    [
        [0.127, -0.749, 0.653, -0.124, -0.72],
        [0.134, 1.024, 0.935, 0.0, 0.0],
        [0.193, 0.126, -1.083, -0.379, 0.0],
        [-0.544, 0.055, 0.0, 0.0, 0.0],
    ]
)
PRIME_MASK = jnp.arange(5)[None, :] < jnp.array([5, 3, 4, 2])[:, None]


def _worked_example_steps():
    mask = jnp.ones_like(LOG_RATIOS)
    rewards = implicit.token_rewards(LOG_RATIOS, jnp.zeros_like(LOG_RATIOS), mask, beta=1.0)
    step_id = implicit.step_ids_from_ends(STEP_ENDS, mask)
    return rewards, step_id, implicit.step_rewards(rewards, step_id, num_steps=3)


def test_token_rewards_scale_by_beta_and_zero_masked_positions():
    # β·(logp − logp_ref) = 0.5·(−1.0 + 1.5) = 0.25, 0.5·(−2.0 + 1.0) = −0.5; masked NaN -> 0.
    rewards = implicit.token_rewards(
        jnp.array([-1.0, -2.0, -0.5]),
        jnp.array([-1.5, -1.0, jnp.nan]),
        jnp.array([1, 1, 0]),
        beta=0.5,
    )
    np.testing.assert_allclose(rewards, [0.25, -0.5, 0.0])


def test_q_values_are_masked_prefix_sums():
    # cumsum of [0.2, −0.1, 0.3, −0.4, 0.1] = [0.2, 0.1, 0.4, 0.0, 0.1].
    mask = jnp.ones_like(LOG_RATIOS)
    np.testing.assert_allclose(
        implicit.q_values(LOG_RATIOS, mask)[0], [0.2, 0.1, 0.4, 0.0, 0.1], atol=1e-6
    )
    # Prompt token 0 and padding token 4 are skipped and read 0: [0, −0.1, 0.2, −0.2, 0].
    mask = jnp.array([[0, 1, 1, 1, 0]])
    np.testing.assert_allclose(
        implicit.q_values(LOG_RATIOS, mask)[0], [0.0, -0.1, 0.2, -0.2, 0.0], atol=1e-6
    )


def test_worked_example_step_rewards_and_scores():
    rewards, step_id, (steps, step_mask) = _worked_example_steps()
    np.testing.assert_array_equal(step_id[0], [0, 0, 1, 1, 2])
    # Steps: 0.2 − 0.1 = 0.1, 0.3 − 0.4 = −0.1, 0.1; q at the ends: 0.1, 0.0, 0.1.
    np.testing.assert_allclose(steps[0], [0.1, -0.1, 0.1], atol=1e-6)
    assert step_mask.all()
    np.testing.assert_allclose(
        implicit.q_values(rewards, jnp.ones_like(rewards))[0, STEP_ENDS[0]],
        [0.1, 0.0, 0.1],
        atol=1e-6,
    )
    expected = {
        ("min", False): -0.1,
        ("sum", False): 0.1,  # telescopes to q^S
        ("last", False): 0.1,
        ("min", True): 0.0,  # min(0.1, 0.0, 0.1)
        ("sum", True): 0.2,  # 0.1 + 0.0 + 0.1
        ("last", True): 0.1,  # q^S
    }
    for (aggregation, cumulative), value in expected.items():
        score = implicit.response_scores(steps, step_mask, aggregation, cumulative)
        np.testing.assert_allclose(
            score, [value], atol=1e-6, err_msg=str((aggregation, cumulative))
        )
    # Sum of step rewards = r_θ(y) = Σ log-ratios = 0.1.
    np.testing.assert_allclose(
        implicit.sequence_rewards(rewards, jnp.ones_like(rewards)), [0.1], atol=1e-6
    )


def test_worked_example_with_inference_coefficient():
    # coef 0.001 scales everything: σ(min) = σ(−1e-4) = 0.5 − 1e-4/4 = 0.499975.
    rewards = implicit.token_rewards(
        LOG_RATIOS, jnp.zeros_like(LOG_RATIOS), jnp.ones_like(LOG_RATIOS), beta=0.001
    )
    step_id = implicit.step_ids_from_ends(STEP_ENDS, jnp.ones_like(LOG_RATIOS))
    steps, step_mask = implicit.step_rewards(rewards, step_id, 3)
    score = implicit.response_scores(steps, step_mask, "min")
    np.testing.assert_allclose(jax.nn.sigmoid(score), [0.499975], atol=1e-7)


def test_step_ids_from_ends_with_prompt_padding_and_absent_steps():
    # Prompt tokens 0–1 and padding 6–7 are masked; steps end at 3 and 4; token 5 is a response
    # token after the last step end, so it is in no step.
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 0, 0]])
    step_id = implicit.step_ids_from_ends(jnp.array([[3, 4, -1]]), mask)
    np.testing.assert_array_equal(step_id[0], [-1, -1, 0, 0, 1, -1, -1, -1])
    # No steps at all.
    step_id = implicit.step_ids_from_ends(jnp.array([[-1, -1, -1]]), mask)
    np.testing.assert_array_equal(step_id[0], [-1] * 8)


def test_step_rewards_ragged_steps_and_out_of_range_ids():
    # Row 0: steps 0 (tokens 0,1) and 2 (token 3), step 1 empty; id 5 ≥ num_steps is dropped.
    rewards = jnp.array([[1.0, 2.0, 4.0, 8.0, 16.0], [1.0, 2.0, 4.0, 8.0, 16.0]])
    step_id = jnp.array([[0, 0, -1, 2, 5], [1, 1, 1, 1, 1]])
    steps, step_mask = implicit.step_rewards(rewards, step_id, num_steps=3)
    np.testing.assert_allclose(steps, [[3.0, 0.0, 8.0], [0.0, 31.0, 0.0]])
    np.testing.assert_array_equal(step_mask, [[True, False, True], [False, True, False]])


def test_response_scores_skip_absent_steps_and_empty_rows_score_zero():
    steps = jnp.array([[0.5, -9.0, -0.2, 7.0], [1.0, 2.0, 3.0, 4.0]])
    step_mask = jnp.array([[1, 0, 1, 0], [0, 0, 0, 0]])
    # Row 0 present values 0.5, −0.2: min −0.2, sum 0.3, last −0.2; cumulative q: 0.5, 0.3.
    np.testing.assert_allclose(implicit.response_scores(steps, step_mask, "min"), [-0.2, 0.0])
    np.testing.assert_allclose(implicit.response_scores(steps, step_mask, "sum"), [0.3, 0.0])
    np.testing.assert_allclose(implicit.response_scores(steps, step_mask, "last"), [-0.2, 0.0])
    np.testing.assert_allclose(
        implicit.response_scores(steps, step_mask, "min", cumulative=True), [0.3, 0.0]
    )
    np.testing.assert_allclose(
        implicit.response_scores(steps, step_mask, "last", cumulative=True), [0.3, 0.0]
    )


def test_first_error_step():
    # q = cumsum([0.3, −0.5, 0.4]) = [0.3, −0.2, 0.2]; σ(−0.2) = 0.450 < 0.5 at step 1.
    steps = jnp.array([[0.3, -0.5, 0.4], [0.3, -5.0, -0.5], [0.3, -0.5, 0.4]])
    step_mask = jnp.array([[1, 1, 1], [1, 0, 1], [0, 0, 0]])
    # Row 1: the absent step is skipped: q = [0.3, 0.3, −0.2] -> step 2. Row 2: no steps -> −1.
    np.testing.assert_array_equal(implicit.first_error_step(steps, step_mask), [1, 2, -1])
    # Threshold 0.4: σ(−0.2) = 0.450 and σ(−0.2) are not below it -> no error anywhere.
    np.testing.assert_array_equal(
        implicit.first_error_step(steps, step_mask, threshold=0.4), [-1, -1, -1]
    )


def test_ce_loss_matches_prime_test_vector():
    # Σq per row: −0.813, 2.093, −1.143, −0.489; ×β = −0.04065, 0.10465, −0.05715, −0.02445;
    # BCE against [1, 0, 1, 0]: log(1+e^0.04065), log(1+e^0.10465), log(1+e^0.05715),
    # log(1+e^−0.02445) -> mean 0.715912 (notes §4.4).
    logp_prm = PRIME_Q + 0.37  # Any common offset cancels against the reference.
    rewards = implicit.sequence_rewards(
        implicit.token_rewards(logp_prm, jnp.full_like(PRIME_Q, 0.37), PRIME_MASK, 0.05),
        PRIME_MASK,
    )
    loss = implicit.ce_loss(rewards, jnp.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_allclose(loss, 0.715912, atol=2e-6)


def test_ce_loss_at_initialisation_soft_labels_and_mask():
    # q ≡ 0: −log σ(0) = ln 2 whatever the (soft) label (PRIME's initial dpo_loss ≈ 0.691).
    zeros = jnp.zeros(3)
    np.testing.assert_allclose(implicit.ce_loss(zeros, jnp.array([1.0, 0.0, 0.3])), math.log(2))
    # r = 2, l = 1: log(1 + e^−2) = 0.126928; masked NaN entry ignored.
    loss = implicit.ce_loss(
        jnp.array([2.0, jnp.nan]), jnp.array([1.0, 0.0]), mask=jnp.array([1, 0])
    )
    np.testing.assert_allclose(loss, 0.126928, atol=1e-6)
    # Large |r| stays finite: r = −200, l = 1 -> 200.
    np.testing.assert_allclose(implicit.ce_loss(jnp.array([-200.0]), jnp.ones(1)), 200.0)
    assert implicit.ce_loss(jnp.ones(2), jnp.ones(2), mask=jnp.zeros(2)) == 0.0


def test_dpo_loss_from_log_probs_with_reference_terms():
    # β = 0.1, log π_θ(y_w) = −10, log π_θ(y_l) = −12, log π_ref(y_w) = log π_ref(y_l) = −11:
    # β·[(−10 + 12) − (−11 + 11)] = 0.2 -> log(1 + e^−0.2) = 0.598139.
    beta = 0.1
    chosen = beta * (jnp.array([-10.0]) - jnp.array([-11.0]))
    rejected = beta * (jnp.array([-12.0]) - jnp.array([-11.0]))
    np.testing.assert_allclose(implicit.dpo_loss(chosen, rejected), 0.598139, atol=1e-6)
    # r_w − r_l = 0.5: log(1 + e^−0.5) = 0.474077; a prompt constant c(x) cancels.
    loss = implicit.dpo_loss(jnp.array([0.3, 5.3]), jnp.array([-0.2, 4.8]))
    np.testing.assert_allclose(loss, 0.474077, atol=1e-6)
    assert implicit.dpo_loss(jnp.ones(1), jnp.ones(1), mask=jnp.zeros(1)) == 0.0
    # ∂/∂r_w of −log σ(r_w − r_l) is −σ(r_l − r_w) = −0.5 at a tie, +0.5 for r_l.
    grads = jax.grad(implicit.dpo_loss, argnums=(0, 1))(jnp.zeros(1), jnp.zeros(1))
    np.testing.assert_allclose(grads, [[-0.5], [0.5]])


def test_nca_loss():
    # At 0: −log σ(0)·(1 + ½ + ½) = 2 ln 2.
    np.testing.assert_allclose(implicit.nca_loss(jnp.zeros(2), jnp.zeros(2)), 2 * math.log(2))
    # r_w = 1, r_l = −1: log(1+e^−1) + ½·log(1+e) + ½·log(1+e^−1)
    # = 0.313262 + 0.656631 + 0.156631 = 1.126524.
    np.testing.assert_allclose(
        implicit.nca_loss(jnp.array([1.0]), jnp.array([-1.0])), 1.126524, atol=1e-6
    )


def test_kto_loss_reference_point_clamp_weights_and_gradient():
    chosen, rejected = jnp.array([1.0]), jnp.array([-1.0])
    # z = mean(0.2, 0.6) = 0.4; 1 − σ(1 − 0.4) = 0.354344; 1 − σ(0.4 + 1) = 0.197816 -> 0.276080.
    loss = implicit.kto_loss(chosen, rejected, jnp.array([0.2, 0.6]))
    np.testing.assert_allclose(loss, 0.276080, atol=1e-6)
    # Negative KL mean clamps to z = 0: 1 − σ(1) = 0.268941 on both sides.
    loss = implicit.kto_loss(chosen, rejected, jnp.array([-0.5, -0.1]))
    np.testing.assert_allclose(loss, 0.268941, atol=1e-6)
    # Weights 2 / 1: (2·0.354344 + 0.197816) / 2 = 0.453252.
    loss = implicit.kto_loss(chosen, rejected, jnp.array([0.2, 0.6]), desirable_weight=2.0)
    np.testing.assert_allclose(loss, 0.453252, atol=1e-6)
    # Masked entries: an extra chosen NaN and an extra KL value 100 are ignored.
    loss = implicit.kto_loss(
        jnp.array([1.0, jnp.nan]),
        rejected,
        jnp.array([0.2, 0.6, 100.0]),
        chosen_mask=jnp.array([1, 0]),
        kl_mask=jnp.array([1, 1, 0]),
    )
    np.testing.assert_allclose(loss, 0.276080, atol=1e-6)
    # The reference point is detached: no gradient reaches the KL completions.
    grad = jax.grad(lambda kl: implicit.kto_loss(chosen, rejected, kl))(jnp.array([0.2, 0.6]))
    np.testing.assert_array_equal(grad, [0.0, 0.0])


def test_pairwise_accuracy():
    rewards = jnp.array([[0.5, -0.2, 0.1], [-0.5, 0.2, 0.0], [0.3, 0.1, 0.2], [1.0, 2.0, 3.0]])
    labels = jnp.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
    # Row 0: pairs (0,1) and (1,2) ordered like their labels, (0,2) tie-weighted 0 -> 1.
    # Row 1: (0,1) Δr < 0 vs Δl > 0 wrong, (0,2) wrong -> 0.
    # Row 2: (0,1) right w 0.5, (0,2) right w 1, (1,2) Δr < 0 vs Δl > 0 wrong w 0.5 -> 1.5 / 2.
    # Row 3: all labels equal -> 0.5.
    np.testing.assert_allclose(
        implicit.pairwise_accuracy(rewards, labels), [1.0, 0.0, 0.75, 0.5], atol=1e-6
    )


def test_best_of_n_and_weighted_majority_vote():
    scores = jnp.array([[0.1, 0.9, 0.5], [0.1, 0.9, 0.5]])
    np.testing.assert_array_equal(
        implicit.best_of_n(scores, jnp.array([[1, 0, 1], [0, 0, 0]])), [2, -1]
    )
    answers = jnp.array([[7, 3, 7, 3, 5]] * 3)
    weights = jnp.array([[0.1, 0.6, 0.2, 0.5, 0.9]] * 3)
    mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [0, 0, 0, 0, 0]])
    # Row 0 totals: 7 -> 0.3, 3 -> 1.1, 5 -> 0.9: answer 3, first held by candidate 1.
    # Row 1 (candidate 3 masked): 3 -> 0.6 < 5 -> 0.9: candidate 4. Row 2: nothing -> −1.
    np.testing.assert_array_equal(
        implicit.weighted_majority_vote(answers, weights, mask), [1, 4, -1]
    )
    # Unit weights are plain majority voting: 7 and 3 both have 2 votes, the first seen wins.
    np.testing.assert_array_equal(
        implicit.weighted_majority_vote(answers[:1], jnp.ones((1, 5)), mask[:1]), [0]
    )


def _loop_step_rewards(rewards, step_id, num_steps):
    sums = np.zeros(rewards.shape[:-1] + (num_steps,))
    present = np.zeros_like(sums, dtype=bool)
    for index in np.ndindex(rewards.shape[:-1]):
        for t, k in enumerate(step_id[index]):
            if 0 <= k < num_steps:
                sums[index + (k,)] += rewards[index + (t,)]
                present[index + (k,)] = True
    return sums, present


_jit_step_rewards = jax.jit(implicit.step_rewards, static_argnums=2)


@settings(max_examples=30, deadline=None)
@given(
    step_id=hnp.arrays(np.int32, (3, 12), elements=st.integers(-1, 5)),
    seed=st.integers(0, 2**16),
)
def test_step_rewards_match_loop_and_sum_to_sequence_reward(step_id, seed):
    rewards = np.random.default_rng(seed).normal(size=(3, 12)).astype(np.float32)
    sums, present = _jit_step_rewards(jnp.asarray(rewards), jnp.asarray(step_id), 4)
    expected_sums, expected_present = _loop_step_rewards(rewards, step_id, 4)
    np.testing.assert_allclose(sums, expected_sums, atol=1e-5)
    np.testing.assert_array_equal(present, expected_present)
    # Telescoping: Σ_k r^k = q^S = r_θ(y) over the tokens that are in a step.
    in_step = (step_id >= 0) & (step_id < 4)
    np.testing.assert_allclose(
        implicit.response_scores(sums, present, "sum"),
        implicit.sequence_rewards(jnp.asarray(rewards), jnp.asarray(in_step)),
        atol=1e-5,
    )


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    prompt=st.integers(0, 3),
)
def test_step_ids_from_ends_recovers_step_lengths(lengths, prompt):
    # Fixed shapes (4 end slots, 30 tokens) so every example reuses one compilation.
    response = sum(lengths)
    ends = np.full(4, -1)
    ends[: len(lengths)] = prompt + np.cumsum(lengths) - 1
    mask = np.zeros(30, bool)
    mask[prompt : prompt + response] = True
    step_id = np.asarray(_jit_step_ids(jnp.asarray(ends), jnp.asarray(mask)))
    expected = np.full(30, -1)
    expected[prompt : prompt + response] = np.repeat(np.arange(len(lengths)), lengths)
    np.testing.assert_array_equal(step_id, expected)


_jit_step_ids = jax.jit(implicit.step_ids_from_ends)


def test_pipeline_jit_equals_eager_and_vmap_equals_loop():
    key_policy, key_ref = jax.random.split(jax.random.key(0))
    logp = jax.random.normal(key_policy, (2, 3, 10))
    logp_ref = jax.random.normal(key_ref, (2, 3, 10))
    mask = jnp.arange(10) < jnp.array([[10, 7, 4], [9, 0, 5]])[..., None]
    ends = jnp.array([[[2, 5, 9], [3, 6, -1], [1, 3, -1]], [[4, 8, -1], [0, -1, -1], [4, -1, -1]]])

    def pipeline(logp, logp_ref, mask, ends):
        rewards = implicit.token_rewards(logp, logp_ref, mask, 0.05)
        steps, step_mask = implicit.step_rewards(
            rewards, implicit.step_ids_from_ends(ends, mask), num_steps=3
        )
        return (
            implicit.q_values(rewards, mask),
            implicit.response_scores(steps, step_mask, "min"),
            implicit.response_scores(steps, step_mask, "last", cumulative=True),
            implicit.first_error_step(steps, step_mask, 0.5),
        )

    eager = pipeline(logp, logp_ref, mask, ends)
    jitted = jax.jit(pipeline)
    mapped = jax.jit(jax.vmap(pipeline))(logp, logp_ref, mask, ends)
    looped = [jitted(logp[i], logp_ref[i], mask[i], ends[i]) for i in range(2)]
    jitted = jitted(logp, logp_ref, mask, ends)
    for index, value in enumerate(eager):
        np.testing.assert_allclose(jitted[index], value, atol=1e-6)
        np.testing.assert_allclose(mapped[index], value, atol=1e-6)
        np.testing.assert_allclose(np.stack([loop[index] for loop in looped]), value, atol=1e-6)


def test_masked_positions_do_not_leak_nan():
    mask = jnp.array([[0, 1, 1, 1, 0]])
    clean = jnp.array([[0.0, 0.2, -0.1, 0.3, 0.0]])
    dirty = clean.at[0, 0].set(jnp.nan).at[0, 4].set(jnp.inf)
    step_id = jnp.array([[-1, 0, 0, 1, -1]])
    for values in (clean, dirty):
        rewards = implicit.token_rewards(values, jnp.zeros_like(values), mask, 1.0)
        steps, step_mask = implicit.step_rewards(rewards, step_id, 2)
        np.testing.assert_allclose(steps, [[0.1, 0.3]], atol=1e-6)
        np.testing.assert_allclose(implicit.sequence_rewards(rewards, mask), [0.4], atol=1e-6)


def test_bad_input_raises():
    with pytest.raises(AssertionError):
        implicit.token_rewards(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones((2, 3)), 0.1)
    with pytest.raises(ValueError, match="num_steps"):
        implicit.step_rewards(jnp.zeros((1, 3)), jnp.zeros((1, 3), jnp.int32), 0)
    with pytest.raises(ValueError, match="aggregation"):
        implicit.response_scores(jnp.zeros((1, 3)), jnp.ones((1, 3)), "mean")
    with pytest.raises(AssertionError):
        implicit.dpo_loss(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(AssertionError):
        implicit.ce_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
