"""Completions of step prefixes: prefixed prompts, and forked completions against re-prefilled
ones (the KV cache a fork shares must give the same samples as prefilling each row anew)."""

import jax
import numpy as np
import pytest
from flax import nnx

from prm.envs import chain_arithmetic as ca
from prm.models import Transformer
from prm.rollouts import RolloutConfig, rollout
from prm.rollouts.completions import Prefix, PrefixedEnv, complete
from prm.sampling import Sampler, SamplingParams
from tests.helpers.tiny_models import tiny_config

PROBLEM = ca.ChainProblem(3, (("+", 4), ("*", 7), ("-", 2)))
GOLD = PROBLEM.gold_steps()


def test_prefixed_env_replays_the_prefix_into_the_prompt():
    env = PrefixedEnv(ca.ChainArithmeticEnv())
    prompts = env.reset([Prefix(PROBLEM), Prefix(PROBLEM, GOLD[:2])])
    assert prompts == [PROBLEM.prompt, PROBLEM.prompt + GOLD[0] + GOLD[1]]
    assert env.stop_strings == ("\n",)
    # The episodes go on from the prefix: row 1's next step is step 3.
    results = env.step([GOLD[0], GOLD[2]])
    assert results[0].info["prefix_correct"] and results[1].info["prefix_correct"]
    with pytest.raises(ValueError, match="ends the episode"):
        env.reset([Prefix(PROBLEM, (GOLD[0], "Answer: 1\n"))])


def test_forked_completions_equal_re_prefilled_ones():
    tokenizer = ca.build_chain_tokenizer()
    config = tiny_config(
        "qwen3", vocab_size=ca.CHAIN_VOCAB_SIZE, eos_token_ids=(0,), pad_token_id=0,
        bos_token_id=0,
    )  # fmt: skip
    sampler = Sampler(Transformer(config, rngs=nnx.Rngs(0)))
    env = ca.ChainArithmeticEnv()
    prefixes = [Prefix(PROBLEM, GOLD[:1]), Prefix(PROBLEM, GOLD[:2])]
    rollout_config = RolloutConfig(
        max_step_tokens=6, max_length=64, sampling=SamplingParams(temperature=1.0)
    )
    key = jax.random.key(3)
    forked = complete(sampler, env, tokenizer, prefixes, 3, rollout_config, key)
    # The same rows, each prefix repeated 3 times and prefilled per row (no fork).
    repeated = [p for p in prefixes for _ in range(3)]
    alone = rollout(
        sampler, PrefixedEnv(env), tokenizer, repeated, rollout_config, jax.random.fold_in(key, 0)
    )
    assert forked.steps == [
        [tuple(r.step_text for r in alone.steps[b]) for b in range(3 * i, 3 * i + 3)]
        for i in range(2)
    ]
    np.testing.assert_array_equal(forked.correct.ravel(), alone.reward > 0)
    np.testing.assert_array_equal(forked.num_tokens.ravel(), alone.loss_mask.sum(axis=1))
    # The random policy's samples differ between completions (the fork does not copy keys).
    assert len({s for row in forked.steps for s in row}) > 1
    # Chunked into single prefixes, the completions are those of chunk keys fold_in(key, c).
    chunked = complete(sampler, env, tokenizer, prefixes, 3, rollout_config, key, max_rows=3)
    assert chunked.steps[0] == forked.steps[0] and chunked.correct.shape == (2, 3)


def test_complete_rejects_bad_arguments():
    with pytest.raises(ValueError, match="no prefixes"):
        complete(None, ca.ChainArithmeticEnv(), None, [], 2, RolloutConfig(), jax.random.key(0))
    with pytest.raises(ValueError, match="num_completions"):
        complete(None, None, None, [Prefix(PROBLEM)], 0, RolloutConfig(), jax.random.key(0))
