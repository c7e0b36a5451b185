"""Gathered rows decode as their sources alone would, and as a from-scratch prefill would."""

import jax
import numpy as np
import pytest
from flax import nnx

from prm.models import Transformer
from prm.sampling import (
    Row,
    Sampler,
    SamplingParams,
    compact,
    gather,
    live_cache_bytes,
    row_lengths,
)
from tests.helpers.tiny_models import tiny_config
from tests.sampling.test_sampler import assert_same_rows

CONFIG = tiny_config("qwen2")
SAMPLED = SamplingParams(temperature=1.0, top_k=40)
PROMPTS_A = [[3, 14, 15], [9, 2, 6, 5, 35, 8, 97], [7, 1, 8]]
PROMPTS_B = [[11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [40, 41]]


@pytest.fixture(scope="module")
def sampler():
    return Sampler(Transformer(CONFIG, rngs=nnx.Rngs(0)), eos_token_ids=())


def grown_sessions(sampler):
    """Two sessions of different capacities whose rows have generated and been appended to."""
    a = sampler.start(PROMPTS_A)
    b = sampler.start(PROMPTS_B, reserve=100)  # a larger cache than a's
    first_a = a.generate(5).token_lists()
    first_b = b.generate(3).token_lists()
    a.append([[50, 51], [], [52]])
    contexts_a = [p + f + t for p, f, t in zip(PROMPTS_A, first_a, [[50, 51], [], [52]])]
    contexts_b = [p + f for p, f in zip(PROMPTS_B, first_b)]
    return a, b, contexts_a, contexts_b


def test_gathered_rows_decode_as_each_session_alone_and_as_reprefill(sampler):
    a, b, contexts_a, contexts_b = grown_sessions(sampler)
    assert a.cache.max_len != b.cache.max_len
    picks = [(a, 2), (b, 0), (a, 0), (b, 1), (a, 2)]  # interleaved, with a repeat
    keys = jax.random.split(jax.random.key(1), len(picks))
    batch = gather([Row(s, i) for s, i in picks])
    np.testing.assert_array_equal(
        batch.lengths(), [len((contexts_a if s is a else contexts_b)[i]) for s, i in picks]
    )
    gathered = batch.generate(8, key=keys, sampling=SAMPLED)
    contexts = [(contexts_a if s is a else contexts_b)[i] for s, i in picks]
    reprefilled = sampler.start(contexts).generate(8, key=keys, sampling=SAMPLED)
    assert_same_rows(gathered, reprefilled)
    # Each source alone, with the same per-row keys: sampling depends on a row's key and context.
    alone_a = a.select([2, 0, 2]).generate(8, key=keys[np.array([0, 2, 4])], sampling=SAMPLED)
    alone_b = b.select([0, 1]).generate(8, key=keys[np.array([1, 3])], sampling=SAMPLED)
    assert_same_rows(gathered, alone_a, rows_a=[0, 2, 4], rows_b=[0, 1, 2])
    assert_same_rows(gathered, alone_b, rows_a=[1, 3], rows_b=[0, 1])


def test_gather_copies_so_sources_continue_unchanged(sampler):
    a, b, contexts_a, _ = grown_sessions(sampler)
    before = a.lengths().copy()
    child = gather([Row(a, 1), Row(b, 1)])
    child.generate(6)
    child.append([[60], [61, 62]])
    np.testing.assert_array_equal(a.lengths(), before)
    assert_same_rows(a.generate(4), sampler.start(contexts_a).generate(4))


def test_scored_append_after_gather_matches_reprefill(sampler):
    a, b, contexts_a, contexts_b = grown_sessions(sampler)
    batch = gather([Row(b, 1), Row(a, 0)])
    forced = [[70, 71, 72], [73]]
    scores = batch.append(forced, score=True)
    fresh = sampler.start([contexts_b[1], contexts_a[0]])
    expected = fresh.append(forced, score=True)
    for got, want in zip(scores, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert_same_rows(batch.generate(5), fresh.generate(5))


def test_padding_repeats_the_last_row_and_inactive_pads_are_untouched(sampler):
    a, b, contexts_a, contexts_b = grown_sessions(sampler)
    batch = gather([Row(a, 0), Row(b, 0)], pad_to=4)
    assert batch.batch_size == 4
    out = batch.generate(6, active=[True, True, False, False])
    np.testing.assert_array_equal(out.num_tokens, [6, 6, 0, 0])
    reference = sampler.start([contexts_a[0], contexts_b[0]]).generate(6)
    assert_same_rows(out, reference, rows_a=[0, 1], rows_b=[0, 1])


def test_compact_keeps_rows_and_frees_dead_ones(sampler):
    a, b, contexts_a, contexts_b = grown_sessions(sampler)
    rows = [Row(a, 2), Row(b, 1), Row(a, 2)]
    before = live_cache_bytes(rows)
    moved = compact(rows)
    assert moved[0].session is moved[2].session and moved[0].index == moved[2].index
    assert moved[0].session.batch_size == 1 and moved[1].session.batch_size == 1
    assert live_cache_bytes(moved) < before
    np.testing.assert_array_equal(row_lengths(moved), row_lengths(rows))
    out = gather(moved).generate(5)
    assert_same_rows(out, sampler.start([contexts_a[2], contexts_b[1], contexts_a[2]]).generate(5))


def test_bad_gathers_raise(sampler):
    a = sampler.start(PROMPTS_A)
    with pytest.raises(ValueError, match="at least one row"):
        gather([])
    with pytest.raises(ValueError, match="outside"):
        Row(a, 3)
    with pytest.raises(ValueError, match="pad_to"):
        gather([Row(a, 0), Row(a, 1)], pad_to=1)
    other = Sampler(Transformer(CONFIG, rngs=nnx.Rngs(1)), eos_token_ids=()).start(PROMPTS_A)
    with pytest.raises(ValueError, match="different samplers or parameters"):
        gather([Row(a, 0), Row(other, 0)])
