"""The MADE policy, the three per-step rewards (hand-computed) and a smoke of the RL loop."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prm.didactic import pav_rl
from prm.didactic.planted_subsequence import (
    PlantedTask,
    automaton_values,
    gamma_prover_probs,
    prefix_tree_values,
    trace,
)

# L = 2, tokens {0, 1}, EOS = 2, y* = (1,). The γ = 2 prover puts 1/2 on token 1 and 1/4 on each
# of 0 and EOS, so W[0, 2] = 0, W[0, 1] = 1/2 and W[0, 0] = 1/2 + 1/4 · W[0, 1] = 5/8.
HAND = PlantedTask(length=2, vocab_size=3, eos=2, planted=(1,))
SMALL = PlantedTask(length=4, vocab_size=4, eos=3, planted=(1, 0))
CONFIG = pav_rl.PolicyConfig(hidden=16, batch_size=16, sft_iterations=3)


def test_hand_task_values():
    values = automaton_values(HAND, gamma_prover_probs(HAND, 2.0))
    np.testing.assert_allclose(values, [[0.625, 0.5, 0.0], [1.0, 1.0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # Response (0, 1) succeeds: A^μ = [1/2 − 5/8, 1 − 1/2], Q^μ after each step = [1/2, 1].
        # Response (EOS, ·) fails at once: A^μ = [0 − 5/8], Q^μ = [0]; step 2 is masked.
        (pav_rl.OUTCOME, [[1.0, 1.0], [0.0, 0.0]]),
        (pav_rl.ADVANTAGE, [[1.0 - 0.125, 1.0 + 0.5], [-0.625, 0.0]]),
        (pav_rl.PROVER_Q, [[1.0 + 0.5, 1.0 + 1.0], [0.0, 0.0]]),
    ],
    ids=["outcome", "advantage", "prover_q"],
)
def test_run_rewards_by_hand(kind, expected):
    values = automaton_values(HAND, gamma_prover_probs(HAND, 2.0))
    tokens = jnp.array([[0, 1], [2, 2]])
    rewards, mask, outcome = pav_rl.run_rewards(HAND, tokens, values, 1.0, kind)
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    np.testing.assert_array_equal(mask, [[1, 1], [1, 0]])
    np.testing.assert_array_equal(outcome, [1, 0])


def test_prover_signal_of_a_uniform_policy_by_hand():
    # Step 1 (state 0, t = 0): Q^μ over (0, 1, EOS) = (1/2, 1, 0): variance 1/6 under uniform.
    # Step 2 (state 0, t = 1): (0, 1, 0): variance 2/9. Their mean is 7/36.
    params = jax.tree.map(jnp.zeros_like, pav_rl.init_policy(jax.random.key(0), HAND, CONFIG))
    masks = pav_rl.made_masks(HAND, CONFIG.hidden, CONFIG.hidden_layers)
    values = automaton_values(HAND, gamma_prover_probs(HAND, 2.0))
    tokens = jnp.array([[0, 1]])
    signal = pav_rl.prover_signal(HAND, params, masks, tokens, values, jnp.ones((1, 2)))
    np.testing.assert_allclose(signal, 7 / 36, rtol=1e-6)


def test_made_logits_see_only_earlier_tokens():
    params = pav_rl.init_policy(jax.random.key(1), SMALL, CONFIG)
    masks = pav_rl.made_masks(SMALL, CONFIG.hidden, CONFIG.hidden_layers)
    tokens = jax.random.randint(jax.random.key(2), (8, SMALL.length), 0, SMALL.vocab_size)
    logits = pav_rl.policy_logits(params, masks, tokens)
    for t in range(SMALL.length):
        changed = tokens.at[:, t:].set((tokens[:, t:] + 1) % SMALL.vocab_size)
        np.testing.assert_allclose(
            pav_rl.policy_logits(params, masks, changed)[:, : t + 1], logits[:, : t + 1]
        )
        if t + 1 < SMALL.length:  # and a later position does see token t
            assert not np.allclose(
                pav_rl.policy_logits(params, masks, changed)[:, t + 1 :], logits[:, t + 1 :]
            )


def test_made_policy_success_equals_the_prefix_tree_dp():
    # The exact DP for any per-prefix policy, applied to the MADE policy, against the sum over
    # every complete response of its probability × reward.
    params = pav_rl.init_policy(jax.random.key(3), SMALL, CONFIG)
    masks = pav_rl.made_masks(SMALL, CONFIG.hidden, CONFIG.hidden_layers)

    probs = jax.jit(lambda tokens: jax.nn.softmax(pav_rl.policy_logits(params, masks, tokens)))

    def next_token_probs(prefix):
        tokens = jnp.array([list(prefix) + [SMALL.eos] * (SMALL.length - len(prefix))])
        return np.asarray(probs(tokens))[0, len(prefix)]

    responses = jnp.array(list(itertools.product(range(SMALL.vocab_size), repeat=SMALL.length)))
    run = trace(SMALL, responses)
    # Keep one copy of each distinct response: tokens after the first EOS must all be EOS.
    after_eos = (1 - run.step_mask) * (responses != SMALL.eos)
    canonical = np.asarray(after_eos.sum(-1) == 0)
    logp = jnp.sum(pav_rl.token_logprobs(params, masks, responses) * run.step_mask, -1)
    probability = np.exp(np.asarray(logp))[canonical]
    np.testing.assert_allclose(probability.sum(), 1.0, rtol=1e-5)
    success = float(np.sum(probability * np.asarray(run.outcome)[canonical]))
    np.testing.assert_allclose(prefix_tree_values(SMALL, next_token_probs)[()], success, rtol=1e-5)


def test_prover_samples_follow_its_distribution_and_pad_with_eos():
    probs = gamma_prover_probs(PlantedTask(), 10.0)
    tokens = np.asarray(pav_rl.sample_prover(jax.random.key(0), PlantedTask(), probs, 20000))
    first = np.bincount(tokens[:, 0], minlength=15) / len(tokens)
    np.testing.assert_allclose(first[3], 10 / 24, atol=0.01)  # y*_1 = 3 has weight γ = 10
    np.testing.assert_allclose(first[7], 1 / 24, atol=0.005)
    ended = np.cumsum(tokens == 14, axis=1) > 0
    assert (tokens[ended] == 14).all()


def test_pass_at_n_by_hand():
    assert pav_rl.pass_at_n(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3, 2)/C(4, 2) = 1 − 3/6
    assert pav_rl.pass_at_n(4, 0, 3) == 0.0 and pav_rl.pass_at_n(4, 2, 3) == 1.0
    with pytest.raises(ValueError, match="must lie in"):
        pav_rl.pass_at_n(4, 1, 5)


def test_rl_loop_smoke_learns_with_the_effective_reward():
    # Every kind runs in one vmapped program; on this easy task the effective reward learns.
    values = automaton_values(SMALL, gamma_prover_probs(SMALL, 3.0))
    runs = pav_rl.Runs(
        prover_values=jnp.stack([values] * 3),
        alpha=jnp.ones(3),
        kind=jnp.array([pav_rl.OUTCOME, pav_rl.ADVANTAGE, pav_rl.PROVER_Q]),
        seed=jnp.zeros(3, jnp.int32),
    )
    config = pav_rl.PolicyConfig(hidden=16, batch_size=32, sft_iterations=3, learning_rate=1e-2)
    out = pav_rl.train_runs(
        SMALL, config, runs, iterations=60, pass_at_iteration=20, pass_samples=64
    )
    assert out["accuracy"].shape == out["signal"].shape == (3, 60)
    assert out["pass_correct"].shape == (3,) and bool(jnp.all(out["pass_correct"] <= 64))
    np.testing.assert_array_equal(out["warm_accuracy"], out["warm_accuracy"][0])  # same start
    accuracy = np.asarray(out["accuracy"])
    assert accuracy[1, -10:].mean() > accuracy[1, :10].mean() + 0.2
    lengths = np.asarray(out["response_length"])
    assert ((lengths >= 1) & (lengths <= SMALL.length)).all()
    with pytest.raises(ValueError, match="pass_at_iteration"):
        pav_rl.train_runs(SMALL, config, runs, iterations=5, pass_at_iteration=6, pass_samples=8)
