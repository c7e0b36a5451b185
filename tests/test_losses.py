import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from prm import losses as eager

PROPERTY = settings(max_examples=20, deadline=None)

# Tests call compiled functions (one compile per shape, the path trainers use); `eager.*` where
# trace-time errors or jit == eager are tested.
_PPO_STATIC = (
    "clip_eps_low",
    "clip_eps_high",
    "clip_ratio_c",
    "ratio_level",
    "aggregation",
    "norm_length",
)
ppo_policy_loss = jax.jit(eager.ppo_policy_loss, static_argnames=_PPO_STATIC)
aggregate_loss = jax.jit(eager.aggregate_loss, static_argnames=("mode", "norm_length"))
kl_penalty = jax.jit(eager.kl_penalty, static_argnames=("estimator",))
token_entropy = jax.jit(eager.token_entropy, static_argnames=("chunk_size",))
value_loss = jax.jit(eager.value_loss, static_argnames=("clip_range", "aggregation", "norm_length"))

# ---------------------------------------------------------------------------------------------
# Aggregation

PER_TOKEN = jnp.array([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0], [5.0, 5.0, 5.0]])
AGG_MASK = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # row 2 is a padding row


@pytest.mark.parametrize(
    ("mode", "norm_length", "expected"),
    [
        ("token-mean", None, 2.5),  # (1 + 2 + 3 + 4) / 4
        ("seq-mean-token-sum", None, 5.0),  # (6 + 4) / 2 non-empty rows
        ("seq-mean-token-mean", None, 3.0),  # (2 + 4) / 2
        ("seq-mean-token-sum-norm", None, 5.0 / 3.0),  # (6/3 + 4/3) / 2, T = 3
        ("seq-mean-token-sum-norm", 10.0, 0.5),  # (6/10 + 4/10) / 2
    ],
)
def test_aggregation_by_hand(mode, norm_length, expected):
    got = aggregate_loss(PER_TOKEN, AGG_MASK, mode, norm_length=norm_length)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_aggregation_of_empty_batch_is_zero_and_nan_under_mask_is_ignored():
    poisoned = PER_TOKEN.at[1, 1].set(jnp.nan).at[2, 0].set(jnp.inf)
    for mode in eager._AGGREGATIONS:
        assert aggregate_loss(PER_TOKEN, jnp.zeros_like(AGG_MASK), mode) == 0.0
        clean = aggregate_loss(PER_TOKEN, AGG_MASK, mode)
        np.testing.assert_allclose(aggregate_loss(poisoned, AGG_MASK, mode), clean)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="Unknown aggregation"):
        eager.aggregate_loss(PER_TOKEN, AGG_MASK, "sum")
    with pytest.raises(ValueError, match="norm_length is only used"):
        eager.aggregate_loss(PER_TOKEN, AGG_MASK, "token-mean", norm_length=4.0)
    with pytest.raises(ValueError, match="positive"):
        eager.aggregate_loss(PER_TOKEN, AGG_MASK, "seq-mean-token-sum-norm", norm_length=0.0)
    with pytest.raises(AssertionError):
        eager.aggregate_loss(PER_TOKEN, AGG_MASK[:, :2])


# ---------------------------------------------------------------------------------------------
# PPO clipped surrogate

# One row, six tokens, old log-prob 0 so the ratio is exp(logprob). ε = 0.2, c = 3.
RATIOS = np.array([1.5, 0.5, 1.5, 0.5, 5.0, 1.0])
ADVANTAGES = jnp.array([[1.0, 1.0, -1.0, -1.0, -1.0, 2.0]])
LOGPROBS = jnp.log(jnp.asarray(RATIOS, jnp.float32))[None]
OLD = jnp.zeros((1, 6))
FULL = jnp.ones((1, 6), bool)
# Per-token loss max(−Aρ, −A·clip(ρ, 0.8, 1.2)), dual cap −A·3 for A < 0:
#   A=+1 ρ=1.5: max(−1.5, −1.2) = −1.2  clipped
#   A=+1 ρ=0.5: max(−0.5, −0.8) = −0.5
#   A=−1 ρ=1.5: max( 1.5,  1.2) =  1.5
#   A=−1 ρ=0.5: max( 0.5,  0.8) =  0.8  clipped
#   A=−1 ρ=5.0: max( 5.0,  1.2) =  5.0 -> dual cap min(5, 3) = 3
#   A=+2 ρ=1.0: −2
EXPECTED_TOKEN_LOSS = np.array([-1.2, -0.5, 1.5, 0.8, 3.0, -2.0])


def test_ppo_token_level_by_hand():
    loss, metrics = ppo_policy_loss(LOGPROBS, OLD, ADVANTAGES, FULL)
    np.testing.assert_allclose(loss, EXPECTED_TOKEN_LOSS.mean(), rtol=1e-5)  # 1.6 / 6
    np.testing.assert_allclose(metrics["clip_fraction"], 2 / 6, rtol=1e-6)
    np.testing.assert_allclose(metrics["dual_clip_fraction"], 1 / 6, rtol=1e-6)
    np.testing.assert_allclose(metrics["approx_kl"], -np.log(RATIOS).mean(), rtol=1e-5)


def test_ppo_without_dual_clip_and_with_clip_higher():
    # no dual clip: the ρ=5 token keeps 5.0 -> (−1.2 −0.5 +1.5 +0.8 +5 −2) / 6 = 0.6
    loss, metrics = ppo_policy_loss(LOGPROBS, OLD, ADVANTAGES, FULL, clip_ratio_c=None)
    np.testing.assert_allclose(loss, 0.6, rtol=1e-5)
    assert metrics["dual_clip_fraction"] == 0.0
    # ε_high = 0.28: the first token becomes max(−1.5, −1.28) = −1.28
    loss, _ = ppo_policy_loss(LOGPROBS, OLD, ADVANTAGES, FULL, clip_eps_high=0.28)
    np.testing.assert_allclose(loss, (EXPECTED_TOKEN_LOSS.sum() - 1.28 + 1.2) / 6, rtol=1e-5)


def test_ppo_gradient_is_zero_exactly_where_clipped():
    grad = jax.grad(lambda lp: ppo_policy_loss(lp, OLD, ADVANTAGES, FULL)[0])(LOGPROBS)
    # unclipped tokens: d(−A·exp(lp))/dlp / 6 = −A·ρ/6; clipped and dual-capped tokens: 0
    expected = np.array([0.0, -0.5, 1.5, 0.0, 0.0, -2.0]) / 6
    np.testing.assert_allclose(grad[0], expected, rtol=1e-5, atol=1e-7)


def test_ppo_masked_tokens_do_not_leak():
    # Append two masked tokens holding −inf / NaN log-probs and a huge advantage.
    logprobs = jnp.concatenate([LOGPROBS, jnp.array([[-jnp.inf, jnp.nan]])], axis=1)
    old = jnp.concatenate([OLD, jnp.array([[0.0, jnp.nan]])], axis=1)
    advantages = jnp.concatenate([ADVANTAGES, jnp.array([[1e9, 1e9]])], axis=1)
    mask = jnp.concatenate([FULL, jnp.zeros((1, 2), bool)], axis=1)

    def loss_fn(lp):
        return ppo_policy_loss(lp, old, advantages, mask)[0]

    np.testing.assert_allclose(loss_fn(logprobs), EXPECTED_TOKEN_LOSS.mean(), rtol=1e-5)
    grad = jax.grad(loss_fn)(logprobs)
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_array_equal(grad[0, 6:], [0.0, 0.0])


def test_ppo_sequence_level_by_hand():
    # Row 0: log-ratios (0.1, 0.3) -> s = exp(0.2) = 1.2214 > 1.2, A = 1: clipped, loss −1.2.
    # Row 1: log-ratios (0.1, −0.1, [masked 5.0]) -> s = 1, A = −2: loss 2.
    logprobs = jnp.array([[0.1, 0.3, 0.0], [0.1, -0.1, 5.0]])
    advantages = jnp.array([[1.0, 1.0, 0.0], [-2.0, -2.0, -2.0]])
    mask = jnp.array([[1, 1, 0], [1, 1, 0]])
    old = jnp.zeros((2, 3))

    def loss_fn(lp):
        return ppo_policy_loss(lp, old, advantages, mask, ratio_level="sequence")

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logprobs)
    np.testing.assert_allclose(loss, (-1.2 * 2 + 2.0 * 2) / 4, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_fraction"], 0.5)
    # Row 0 is clipped: no gradient. Row 1 contributes 2 tokens × (−A)·s / 4 = s(lp) to the
    # loss, with s = exp(mean of its 2 log-ratios): ds/dlp_t = s/2 = 0.5 on each.
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0]], atol=1e-6)


@PROPERTY
@given(
    hnp.arrays(np.float32, (3, 5), elements=st.floats(-0.5, 0.5, width=32)),
    hnp.arrays(np.float32, (3,), elements=st.floats(-2, 2, width=32)),
    hnp.arrays(np.bool_, (3, 5)),
)
def test_ppo_sequence_gradient_matches_sequence_objective(log_ratio, seq_advantage, mask):
    # Independent method: with a sequence-constant advantage and no clipping, the GSPO-token
    # loss must have the value and gradient of the sequence objective
    # −Σ_i n_i·A_i·exp(mean_t log ρ_it) / Σ_i n_i (token-mean weights sequence i by its n_i).
    args = (jnp.asarray(log_ratio), jnp.asarray(seq_advantage), jnp.asarray(mask))
    ours, reference = _sequence_level_value_and_grad(*args)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], reference[1], rtol=1e-4, atol=1e-6)


@jax.jit
def _sequence_level_value_and_grad(log_ratio, seq_advantage, mask):
    advantages = jnp.broadcast_to(seq_advantage[:, None], log_ratio.shape)

    def ours(lp):
        return eager.ppo_policy_loss(
            lp,
            jnp.zeros_like(lp),
            advantages,
            mask,
            ratio_level="sequence",
            clip_eps_low=0.99,
            clip_eps_high=1e6,
            clip_ratio_c=None,
        )[0]

    def reference(lp):
        counts = jnp.sum(mask, axis=-1)
        mean_log_ratio = jnp.sum(jnp.where(mask, lp, 0.0), -1) / jnp.maximum(counts, 1)
        per_sequence = -seq_advantage * jnp.exp(mean_log_ratio)
        return jnp.sum(per_sequence * counts) / jnp.maximum(jnp.sum(counts), 1)

    return jax.value_and_grad(ours)(log_ratio), jax.value_and_grad(reference)(log_ratio)


def test_ppo_sequence_equals_token_for_single_token_sequences():
    rng = np.random.default_rng(5)
    logprobs = jnp.asarray(rng.normal(0, 0.5, (4, 1)), jnp.float32)
    advantages = jnp.asarray(rng.normal(size=(4, 1)), jnp.float32)
    mask = jnp.ones((4, 1), bool)
    token = ppo_policy_loss(logprobs, jnp.zeros((4, 1)), advantages, mask)
    sequence = ppo_policy_loss(
        logprobs, jnp.zeros((4, 1)), advantages, mask, ratio_level="sequence"
    )
    np.testing.assert_allclose(token[0], sequence[0], rtol=1e-6)


def test_ppo_jit_vmap_and_extreme_ratios():
    rng = np.random.default_rng(6)
    logprobs = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    old = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    advantages = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 3, 4)) < 0.8)
    eager_loss, _ = eager.ppo_policy_loss(logprobs, old, advantages, mask)
    np.testing.assert_allclose(
        ppo_policy_loss(logprobs, old, advantages, mask)[0], eager_loss, rtol=1e-6
    )
    per_batch = jax.jit(jax.vmap(lambda *a: eager.ppo_policy_loss(*a)[0]))(
        logprobs, old, advantages, mask
    )
    looped = [ppo_policy_loss(logprobs[i], old[i], advantages[i], mask[i])[0] for i in (0, 1)]
    np.testing.assert_allclose(per_batch, looped, rtol=1e-6)
    # log-ratio 1000 is clamped to 20 before exp: finite loss; A < 0 hits the dual cap.
    loss, _ = ppo_policy_loss(
        jnp.array([[1000.0]]), jnp.zeros((1, 1)), jnp.array([[-1.0]]), jnp.ones((1, 1))
    )
    np.testing.assert_allclose(loss, 3.0)


def test_ppo_errors():
    args = (LOGPROBS, OLD, ADVANTAGES, FULL)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        eager.ppo_policy_loss(*args, clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="clip_eps_low"):
        eager.ppo_policy_loss(*args, clip_eps_low=1.0)
    with pytest.raises(ValueError, match="ratio_level"):
        eager.ppo_policy_loss(*args, ratio_level="step")
    with pytest.raises(ValueError, match="Unknown aggregation"):
        eager.ppo_policy_loss(*args, aggregation="mean")
    with pytest.raises(AssertionError):
        eager.ppo_policy_loss(LOGPROBS, OLD[:, :3], ADVANTAGES, FULL)
    with pytest.raises(ValueError, match="scalars"):
        eager.ppo_policy_loss(jnp.array(0.0), jnp.array(0.0), jnp.array(0.0), jnp.array(True))


# ---------------------------------------------------------------------------------------------
# KL


def test_kl_estimators_by_hand():
    # π_θ = 0.5, π_ref = 0.25: d = log(0.25/0.5) = −ln 2
    # k1 = ln 2 = 0.693147; k2 = (ln 2)²/2 = 0.240227; k3 = 0.5 + ln 2 − 1 = 0.193147
    logprobs, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    mask = jnp.ones((1, 1), bool)
    for estimator, expected in (("k1", 0.693147), ("k2", 0.240227), ("k3", 0.193147)):
        got = kl_penalty(logprobs, ref, mask, estimator=estimator)
        np.testing.assert_allclose(got, [[expected]], rtol=1e-5)


def test_k1_and_k3_are_unbiased_on_a_categorical():
    # Exact expectation over y ~ π of the per-sample estimate equals KL(π ‖ π_ref).
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    kl = np.sum(pi * np.log(pi / ref))
    mask = jnp.ones((1, 4), bool)
    for estimator in ("k1", "k3"):
        per_token = kl_penalty(jnp.log(pi)[None], jnp.log(ref)[None], mask, estimator=estimator)
        np.testing.assert_allclose(np.sum(pi * np.asarray(per_token)[0]), kl, rtol=1e-5)


@PROPERTY
@given(
    hnp.arrays(np.float32, (2, 6), elements=st.floats(-30, 0, width=32)),
    hnp.arrays(np.float32, (2, 6), elements=st.floats(-30, 0, width=32)),
    hnp.arrays(np.bool_, (2, 6)),
)
@example(  # found by hypothesis: exp(d) − d − 1 rounded to −6e-8 in float32 at d = 6e-8
    np.array([[-5.9604645e-08] + [0.0] * 5, [0.0] * 6], np.float32),
    np.zeros((2, 6), np.float32),
    np.ones((2, 6), bool),
)
def test_k3_is_non_negative_bounded_and_masked(logprobs, ref, mask):
    k3 = np.asarray(kl_penalty(jnp.asarray(logprobs), jnp.asarray(ref), jnp.asarray(mask)))
    assert (k3 >= 0).all() and (k3 <= 10.0).all()
    assert (k3[~mask] == 0).all()


def test_k3_clamps():
    # d = 30 -> clamped to 20 -> e^20 − 21 -> clamped to 10; d = −30 -> −20: e^−20 + 19 -> 10
    logprobs = jnp.array([[0.0, -30.0, -1.0]])
    ref = jnp.array([[-30.0, 0.0, -1.0]])
    k3 = kl_penalty(logprobs, ref, jnp.ones((1, 3), bool))
    np.testing.assert_allclose(k3, [[10.0, 10.0, 0.0]], rtol=1e-6)


def test_kl_errors():
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        eager.kl_penalty(LOGPROBS, OLD, FULL, estimator="k4")
    with pytest.raises(AssertionError):
        eager.kl_penalty(LOGPROBS, OLD[:, :2], FULL)


# ---------------------------------------------------------------------------------------------
# Entropy


def test_entropy_by_hand():
    # uniform over 5: ln 5 = 1.609438; (0.5, 0.25, 0.25): 1.5·ln 2 = 1.039721;
    # a single finite logit (the others −inf): 0
    logits = jnp.array(
        [
            [[0.0] * 5, [np.log(0.5), np.log(0.25), np.log(0.25), -np.inf, -np.inf]],
            [[3.0, -np.inf, -np.inf, -np.inf, -np.inf], [0.0] * 5],
        ]
    )
    mask = jnp.array([[1, 1], [1, 0]])
    np.testing.assert_allclose(
        token_entropy(logits, mask), [[1.609438, 1.039721], [0.0, 0.0]], rtol=1e-5, atol=1e-7
    )
    grad = jax.grad(lambda z: token_entropy(z, mask).sum())(logits)
    assert np.isfinite(np.asarray(grad)).all()


def test_entropy_chunked_matches_unchunked_in_value_and_gradient():
    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(0, 3, (2, 5, 11)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 5)) < 0.7)

    @jax.jit
    def value_and_grad(z):
        # 10 positions in chunks of 3: three full chunks and a remainder
        chunked = jax.value_and_grad(lambda x: eager.token_entropy(x, mask, chunk_size=3).sum())
        whole = jax.value_and_grad(lambda x: eager.token_entropy(x, mask).sum())
        return chunked(z), whole(z)

    (chunked, chunked_grad), (whole, whole_grad) = value_and_grad(logits)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
    np.testing.assert_allclose(chunked_grad, whole_grad, rtol=1e-4, atol=1e-6)


def test_entropy_gradient_matches_closed_form():
    # dH/dz_v = −p_v·(log p_v + H)
    z = jnp.array([[[0.3, -1.2, 2.0, 0.0]]])
    p = np.asarray(jax.nn.softmax(z[0, 0]))
    h = -np.sum(p * np.log(p))
    grad = jax.grad(lambda x: token_entropy(x, jnp.ones((1, 1))).sum())(z)
    np.testing.assert_allclose(grad[0, 0], -p * (np.log(p) + h), rtol=1e-5, atol=1e-7)


def test_entropy_of_bfloat16_logits_is_float32():
    logits = jnp.zeros((1, 2, 7), jnp.bfloat16)
    h = token_entropy(logits, jnp.ones((1, 2)))
    assert h.dtype == jnp.float32
    np.testing.assert_allclose(h, np.log(7.0), rtol=1e-6)


def test_entropy_errors():
    with pytest.raises(ValueError, match="chunk_size"):
        eager.token_entropy(jnp.zeros((1, 2, 3)), jnp.ones((1, 2)), chunk_size=0)
    with pytest.raises(AssertionError):
        eager.token_entropy(jnp.zeros((1, 2, 3)), jnp.ones((1, 3)))


# ---------------------------------------------------------------------------------------------
# Value loss


def test_value_loss_by_hand():
    # c = 0.2, old = 0.5, R = 2:
    #   V = 1.0: unclipped (1 − 2)² = 1; V_clip = 0.7 -> 1.69; max 1.69 (clipped branch)
    #   V = 0.6: within range, both 1.96
    #   third token masked (NaN prediction)
    predicted = jnp.array([[1.0, 0.6, jnp.nan]])
    old = jnp.array([[0.5, 0.5, 0.0]])
    returns = jnp.array([[2.0, 2.0, 9.0]])
    mask = jnp.array([[1, 1, 0]])

    def loss_fn(v):
        return value_loss(v, old, returns, mask, clip_range=0.2)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(predicted)
    np.testing.assert_allclose(loss, 0.5 * (1.69 + 1.96) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["value_clip_fraction"], 0.5)
    # clipped token: V_clip is constant in V -> 0; token 2: ½·2(V − R)/2 = (0.6 − 2)/2 = −0.7
    np.testing.assert_allclose(grad, [[0.0, -0.7, 0.0]], rtol=1e-6)
    # no clipping: ½·(1 + 1.96)/2
    plain, metrics = value_loss(predicted, old, returns, mask, clip_range=None)
    np.testing.assert_allclose(plain, 0.5 * (1.0 + 1.96) / 2, rtol=1e-6)
    assert metrics["value_clip_fraction"] == 0.0


def test_value_loss_errors():
    with pytest.raises(ValueError, match="clip_range"):
        eager.value_loss(OLD, OLD, OLD, FULL, clip_range=0.0)
    with pytest.raises(AssertionError):
        eager.value_loss(OLD, OLD[:, :2], OLD, FULL)


@PROPERTY
@given(
    hnp.arrays(np.float32, (3, 4), elements=st.floats(-5, 0, width=32)),
    hnp.arrays(np.float32, (3, 4), elements=st.floats(-3, 3, width=32)),
    hnp.arrays(np.bool_, (3, 4)),
    st.sampled_from(eager._AGGREGATIONS),
)
def test_ppo_on_policy_is_the_policy_gradient(logprobs, advantages, mask, aggregation):
    # At π_θ = π_old every ratio is 1: nothing is clipped, the loss is −agg(A) and its gradient
    # is the REINFORCE gradient −A·d agg/d(per-token loss).
    args = tuple(jnp.asarray(x) for x in (logprobs, advantages, mask))
    (loss, metrics), grad, expected_loss, expected_grad = _on_policy(*args, aggregation)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
    assert metrics["clip_fraction"] == 0 and metrics["dual_clip_fraction"] == 0


@functools.partial(jax.jit, static_argnames="aggregation")
def _on_policy(logprobs, advantages, mask, aggregation):
    def loss_fn(lp):
        return eager.ppo_policy_loss(
            lp, jax.lax.stop_gradient(lp), advantages, mask, aggregation=aggregation
        )

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logprobs)
    expected_loss, expected_grad = jax.value_and_grad(
        lambda a: eager.aggregate_loss(-a, mask, aggregation)
    )(advantages)
    # d loss/d lp_t = w_t·(−A_t) with w = d agg/d per-token loss = −d agg(−A)/dA
    return (loss, metrics), grad, expected_loss, expected_grad * advantages


def test_slate_step_advantages_to_tokens_to_loss():
    # One question, 2 steps, k = 2 siblings. The sequence for (step s, sibling j) is the shared
    # prefix (step_id −1) followed by sibling j's action tokens (step_id s).
    from prm.advantages import broadcast_step_values_to_tokens, sibling_step_advantages

    step_rewards = jnp.array([[2.0, 0.0], [1.0, 1.0]])  # [steps, k]
    advantages = sibling_step_advantages(step_rewards)  # step 0: ±1/(√2 + 1e-6); step 1: 0
    step_id = jnp.array([[-1, 0, 0, 0], [-1, -1, 1, 1]])  # per step: prefix, then the action
    ids = jnp.broadcast_to(step_id[:, None, :], (2, 2, 4))  # [steps, k, T]
    per_sibling = jnp.broadcast_to(advantages.T[None], (2, 2, 2))  # [steps, k, S]: A_s'^(j)
    token_advantages = broadcast_step_values_to_tokens(per_sibling, ids)
    a = 1 / (np.sqrt(2) + 1e-6)
    np.testing.assert_allclose(token_advantages[0], [[0, a, a, a], [0, -a, -a, -a]], rtol=1e-6)
    np.testing.assert_array_equal(token_advantages[1], np.zeros((2, 4)))
    # On-policy PPO with token-mean over the 10 action tokens: d loss/d logprob = −A/10 on them.
    mask = ids >= 0
    old = jnp.zeros(mask.shape)
    grad_fn = jax.jit(jax.grad(lambda lp, a: eager.ppo_policy_loss(lp, old, a, mask)[0]))
    grad = grad_fn(old, token_advantages)
    np.testing.assert_allclose(grad, -np.asarray(token_advantages) / 10, rtol=1e-6)
