import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.sampling import (
    GREEDY,
    SamplingParams,
    filter_logits,
    sample_tokens,
    top_k_filter,
    top_p_filter,
)

NEG_INF = -np.inf


def test_top_k_keeps_the_k_largest():
    logits = jnp.array([[1.0, 3.0, 2.0, 0.0], [0.0, -1.0, 5.0, 4.0]])
    np.testing.assert_array_equal(
        top_k_filter(logits, 2),
        [[NEG_INF, 3.0, 2.0, NEG_INF], [NEG_INF, NEG_INF, 5.0, 4.0]],
    )
    np.testing.assert_array_equal(top_k_filter(logits, 4), logits)


def test_top_k_keeps_ties_at_the_cut():
    np.testing.assert_array_equal(
        top_k_filter(jnp.array([2.0, 1.0, 2.0, 0.0]), 1), [2, NEG_INF, 2, NEG_INF]
    )


@pytest.mark.parametrize(
    "p, kept",
    [
        # probs (sorted) 0.5, 0.3, 0.15, 0.05 -> mass before each: 0, 0.5, 0.8, 0.95.
        (0.3, [True, False, False, False]),  # only 0 < 0.3
        (0.7, [True, True, False, False]),  # 0, 0.5 < 0.7
        (0.85, [True, True, True, False]),  # 0, 0.5, 0.8 < 0.85
        (1.0, [True, True, True, True]),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = np.array([0.15, 0.5, 0.05, 0.3])  # shuffled so the filter must sort
    order = [1, 3, 0, 2]
    expected_kept = np.zeros(4, bool)
    expected_kept[order] = kept
    filtered = top_p_filter(jnp.log(jnp.asarray(probs)), p)
    np.testing.assert_array_equal(np.isfinite(filtered), expected_kept)


def test_filter_applies_temperature_then_top_k_then_top_p():
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
    params = SamplingParams(temperature=0.5, top_k=3, top_p=0.7)
    # T = 0.5 squares the probs: 0.16, 0.09, 0.04, 0.01 (sum 0.30); top-3 drops 0.01;
    # renormalised 0.16/0.29 = 0.552, 0.09/0.29 = 0.310, 0.04/0.29 = 0.138;
    # mass before: 0, 0.552, 0.862 -> top-p 0.7 keeps the first two: 16/25, 9/25.
    probs = jax.nn.softmax(filter_logits(logits, params))
    np.testing.assert_allclose(probs, [[16 / 25, 9 / 25, 0.0, 0.0]], rtol=1e-5)


def test_greedy_leaves_logits_and_returns_argmax_with_zero_logprob():
    logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    np.testing.assert_array_equal(filter_logits(logits, GREEDY), logits)
    tokens, logprobs = sample_tokens(logits, jax.random.split(jax.random.key(0), 2), GREEDY)
    np.testing.assert_array_equal(tokens, [1, 0])
    np.testing.assert_array_equal(logprobs, [0.0, 0.0])


def test_sample_frequencies_match_the_filtered_distribution():
    num = 4000
    logits = jnp.tile(jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1])), (num, 1))
    params = SamplingParams(temperature=1.0, top_k=3)
    keys = jax.random.split(jax.random.key(7), num)
    tokens, logprobs = jax.jit(sample_tokens, static_argnums=2)(logits, keys, params)
    expected = np.array([4, 3, 2, 0]) / 9  # top-3 renormalised
    frequencies = np.bincount(np.asarray(tokens), minlength=4) / num
    # 4 standard errors of a frequency near 0.4 at n = 4000: 4 * sqrt(0.24 / 4000) = 0.031.
    np.testing.assert_allclose(frequencies, expected, atol=0.031)
    assert frequencies[3] == 0
    np.testing.assert_allclose(logprobs, np.log(expected[np.asarray(tokens)]), rtol=1e-5)


def test_sampling_a_row_depends_only_on_its_key():
    logits = jax.random.normal(jax.random.key(1), (3, 50))
    keys = jax.random.split(jax.random.key(2), 3)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    sample = jax.jit(sample_tokens, static_argnums=2)
    tokens, _ = sample(logits, keys, params)
    alone, _ = sample(logits[1:2], keys[1:2], params)
    assert tokens[1] == alone[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


jitted_top_p = jax.jit(top_p_filter)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=8, max_size=8),  # one shape: one compile
    st.floats(0.05, 1.0),
)
def test_top_p_kept_set_is_minimal_and_reaches_p(raw_logits, p):
    logits = np.asarray(raw_logits, np.float32)
    kept = np.isfinite(np.asarray(jitted_top_p(jnp.asarray(logits), p)))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    assert kept[np.argmax(logits)]
    # Everything kept is at least as likely as everything dropped.
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()
        assert probs[kept].sum() >= p - 1e-5
    # Dropping the least likely kept token (and its ties) would fall short of p.
    smallest = probs[kept].min()
    assert probs[kept & (probs > smallest)].sum() < p + 1e-5
