"""Sampler invariants on a tiny random model, against an uncached forward or from-scratch runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm.models import Transformer, token_logprobs
from prm.sampling import FinishReason, Sampler, SamplingParams
from prm.sampling import sampler as sampler_module
from tests.helpers.tiny_models import tiny_config

CONFIG = tiny_config("qwen2")
SAMPLED = SamplingParams(temperature=1.0, top_k=40)
PROMPTS = [[3, 14, 15], [9, 2, 6, 5, 35, 8, 97], [7, 1, 8, 2, 8, 18, 28, 45, 90, 4, 52, 3]]


@pytest.fixture(scope="module")
def model():
    return Transformer(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def sampler(model):
    # No EOS tokens: rows run to their budget unless a test sets stops.
    return Sampler(model, eos_token_ids=())


def uncached_greedy(model, context, num_new, width=64):
    """Greedy continuation by a full causal forward over the whole context at every step."""
    forward = jax.jit(lambda ids, mask: jax.nn.log_softmax(model(ids, mask)[0]))
    tokens, logprobs, context = [], [], list(context)
    for _ in range(num_new):
        ids = np.zeros((1, width), np.int32)
        ids[0, : len(context)] = context
        logp = forward(jnp.asarray(ids), jnp.asarray(ids != 0) | (np.arange(width) < len(context)))
        row = np.asarray(logp[0, len(context) - 1])
        tokens.append(int(row.argmax()))
        logprobs.append(float(row.max()))
        context.append(tokens[-1])
    return tokens, np.array(logprobs)


def assert_same_rows(a, b, rows_a=None, rows_b=None):
    """Same tokens, counts and finish reasons; log-probs equal up to float rounding."""
    rows_a = slice(None) if rows_a is None else rows_a
    rows_b = slice(None) if rows_b is None else rows_b
    np.testing.assert_array_equal(np.asarray(a.tokens)[rows_a], np.asarray(b.tokens)[rows_b])
    np.testing.assert_array_equal(
        np.asarray(a.num_tokens)[rows_a], np.asarray(b.num_tokens)[rows_b]
    )
    np.testing.assert_array_equal(
        np.asarray(a.finish_reason)[rows_a], np.asarray(b.finish_reason)[rows_b]
    )
    for field in ("logprobs", "sampling_logprobs"):
        np.testing.assert_allclose(
            np.asarray(getattr(a, field))[rows_a],
            np.asarray(getattr(b, field))[rows_b],
            atol=1e-5,
        )


def test_greedy_matches_uncached_forward_for_each_prompt_length(model, sampler):
    out = sampler.start(PROMPTS).generate(8)
    for b, prompt in enumerate(PROMPTS):
        tokens, logprobs = uncached_greedy(model, prompt, 8)
        assert out.token_lists()[b] == tokens
        np.testing.assert_allclose(out.logprobs[b], logprobs, atol=1e-5)
    np.testing.assert_array_equal(out.finish_reason, [FinishReason.LENGTH] * 3)
    np.testing.assert_array_equal(out.stop_index, [-1] * 3)
    np.testing.assert_array_equal(out.sampling_logprobs, np.zeros((3, 8)))


def test_each_row_equals_that_row_alone(sampler):
    keys = jax.random.split(jax.random.key(3), 3)
    batch = sampler.start(PROMPTS).generate(8, key=keys, sampling=SAMPLED)
    for b, prompt in enumerate(PROMPTS):
        alone = sampler.start([prompt]).generate(8, key=keys[b : b + 1], sampling=SAMPLED)
        assert_same_rows(batch, alone, rows_a=[b], rows_b=[0])


def test_a_rows_sample_does_not_depend_on_the_other_rows(sampler):
    key = jax.random.key(4)
    a = sampler.start(PROMPTS).generate(8, key=key, sampling=SAMPLED)
    b = sampler.start([PROMPTS[0], PROMPTS[2], [5]]).generate(8, key=key, sampling=SAMPLED)
    assert_same_rows(a, b, rows_a=[0], rows_b=[0])


def test_same_key_same_samples_other_key_other_samples(sampler):
    def run(seed):
        return sampler.start(PROMPTS).generate(8, key=jax.random.key(seed), sampling=SAMPLED)

    assert_same_rows(run(5), run(5))
    assert not np.array_equal(run(5).tokens, run(6).tokens)
    # Log-probs of the tempered/filtered distribution dominate the raw policy's (top-k
    # removes mass, so each kept token gains probability).
    out = run(5)
    assert np.all(np.asarray(out.sampling_logprobs) >= np.asarray(out.logprobs) - 1e-6)


def first_stop(tokens, stops):
    """(number of tokens up to and including the first completed stop, its index) by scanning."""
    for end in range(1, len(tokens) + 1):
        for i, stop in enumerate(stops):
            if end >= len(stop) and tokens[end - len(stop) : end] == list(stop):
                return end, i
    return len(tokens), -1


def test_stop_sequences_per_row_then_continue(sampler):
    prompts = PROMPTS
    full = sampler.start(prompts).generate(16).token_lists()
    row_stops = [
        [[999], full[0][3:5]],  # multi-token, listed second
        [full[1][2:3]],  # single token
        [],  # no stop: runs to the budget
    ]
    session = sampler.start(prompts)
    out = session.generate(16, row_stops=row_stops)
    for b in range(3):
        end, index = first_stop(full[b], row_stops[b])
        assert out.token_lists()[b] == full[b][:end]
        assert out.stop_index[b] == index
        assert out.finish_reason[b] == (FinishReason.STOP if index >= 0 else FinishReason.LENGTH)
        assert np.all(np.asarray(out.tokens[b, end:]) == sampler.pad_token_id)
        assert np.all(np.asarray(out.logprobs[b, end:]) == 0)
    # Stopping loses nothing: the next call picks up the same greedy continuation.
    rest = session.generate(16, active=[True, True, False]).token_lists()
    for b in range(2):
        end = int(out.num_tokens[b])
        assert rest[b][: 16 - end] == full[b][end:]


def test_eos_ends_a_row(model):
    full = Sampler(model, eos_token_ids=()).start(PROMPTS[:1]).generate(8).token_lists()[0]
    eos = full[4]
    out = Sampler(model, eos_token_ids=[eos]).start(PROMPTS[:1]).generate(8)
    end = full.index(eos) + 1
    assert out.token_lists()[0] == full[:end]
    assert out.finish_reason[0] == FinishReason.EOS


@pytest.mark.parametrize("sampling", [None, SAMPLED], ids=["greedy", "sampled"])
def test_forced_tokens_equal_prompting_from_scratch(sampler, sampling):
    key = jax.random.key(8) if sampling else None
    kwargs = {"key": key, "sampling": sampling} if sampling else {}
    forced = [40, 41, 42, 43, 44]
    session = sampler.start(PROMPTS)
    first = session.generate(6, **kwargs).token_lists()
    session.append([forced, [], forced[:1]])  # row 1 gets nothing
    carried = session.generate(8, **kwargs)
    rebuilt = [
        PROMPTS[0] + first[0] + forced,
        PROMPTS[1] + first[1],
        PROMPTS[2] + first[2] + forced[:1],
    ]
    scratch = sampler.start(rebuilt).generate(8, **kwargs)
    assert_same_rows(carried, scratch)
    np.testing.assert_array_equal(session.lengths(), [len(r) + 8 for r in rebuilt])


def test_scored_append_gives_the_forward_pass_logprobs(model, sampler):
    """Scores of forced tokens equal an uncached forward over the whole context, and the
    session goes on exactly as after a plain append."""
    forced = [[40, 41, 42], [], [43]]
    session = sampler.start(PROMPTS)
    first = session.generate(4).token_lists()
    plain = sampler.start(PROMPTS)
    plain.generate(4)
    scores = session.append(forced, score=True)
    plain.append(forced)
    assert [len(s) for s in scores] == [3, 0, 1]
    contexts = [p + f + t for p, f, t in zip(PROMPTS, first, forced)]
    width = max(map(len, contexts))
    ids = np.zeros((len(contexts), width), np.int32)
    for b, c in enumerate(contexts):
        ids[b, : len(c)] = c
    real = np.arange(width) < np.array([len(c) for c in contexts])[:, None]
    expected = token_logprobs(model, jnp.asarray(ids), jnp.asarray(real)).logprobs
    for b, (context, tail) in enumerate(zip(contexts, forced)):
        start = len(context) - len(tail)
        np.testing.assert_allclose(scores[b], expected[b, start : len(context)], atol=1e-5)
    assert_same_rows(session.generate(5), plain.generate(5))
    assert [len(s) for s in session.append([[], [], []], score=True)] == [0, 0, 0]


@pytest.mark.parametrize("sampling", [None, SAMPLED], ids=["greedy", "sampled"])
def test_fork_equals_independent_prefills(sampler, sampling):
    kwargs = {"key": jax.random.key(9), "sampling": sampling} if sampling else {}
    # 3 rows as everywhere else in this file, so the decode compiles once per sampling mode.
    siblings = sampler.start(PROMPTS[:1]).fork(3).generate(8, **kwargs)
    independent = sampler.start(PROMPTS[:1] * 3).generate(8, **kwargs)
    assert_same_rows(siblings, independent)
    if sampling:
        assert len({tuple(t) for t in siblings.token_lists()}) > 1


def test_fork_orders_siblings_row_by_row(sampler):
    forked = sampler.start(PROMPTS[:2]).fork(2).select([0, 1, 3]).generate(8)
    direct = sampler.start([PROMPTS[0], PROMPTS[0], PROMPTS[1]]).generate(8)
    assert_same_rows(forked, direct)


def test_siblings_end_at_different_lengths_and_continue(sampler):
    session = sampler.start(PROMPTS[:1]).fork(3)
    out = session.generate(8, key=jax.random.key(10), sampling=SAMPLED)
    tokens = out.token_lists()
    # Stop each sibling on its own 3rd, 5th and 8th token: they end at 3, 5 and 8 tokens
    # unless the stop token also occurs earlier in that sibling.
    row_stops = [[[tokens[0][2]]], [[tokens[1][4]]], [[tokens[2][7]]]]
    session = sampler.start(PROMPTS[:1]).fork(3)
    stopped = session.generate(8, key=jax.random.key(10), sampling=SAMPLED, row_stops=row_stops)
    ends = [first_stop(tokens[b], row_stops[b])[0] for b in range(3)]
    np.testing.assert_array_equal(stopped.num_tokens, ends)
    np.testing.assert_array_equal(session.lengths(), [len(PROMPTS[0]) + e for e in ends])
    chosen = session.select([1])
    rebuilt = sampler.start([PROMPTS[0] + tokens[1][: ends[1]]])
    assert_same_rows(chosen.generate(8), rebuilt.generate(8))


def test_select_reorders_rows(sampler):
    selected = sampler.start(PROMPTS[:2]).select([1, 0, 1]).generate(8)
    direct = sampler.start([PROMPTS[1], PROMPTS[0], PROMPTS[1]]).generate(8)
    assert_same_rows(selected, direct)


def test_inactive_rows_are_untouched(sampler):
    session = sampler.start(PROMPTS)
    out = session.generate(8, active=[True, False, True])
    assert out.num_tokens[1] == 0 and out.finish_reason[1] == FinishReason.INACTIVE
    np.testing.assert_array_equal(
        session.lengths(), [len(PROMPTS[0]) + 8, len(PROMPTS[1]), len(PROMPTS[2]) + 8]
    )
    later = session.generate(8, active=[False, True, False])
    fresh = sampler.start(PROMPTS).generate(8)
    assert_same_rows(later, fresh, rows_a=[1], rows_b=[1])


def test_decode_attends_a_live_window_not_the_capacity(model, sampler, monkeypatch):
    """A short active row beside a long idle one: its window is 64 slots of a 256-slot cache,
    and both rows still continue exactly as an uncached forward does."""
    windows = []
    decode = sampler_module._decode
    monkeypatch.setattr(
        sampler_module, "_decode", lambda *a, **k: windows.append(k["window"]) or decode(*a, **k)
    )
    long_prompt = np.random.default_rng(12).integers(0, 250, 160).tolist()
    session = sampler.start([long_prompt, PROMPTS[0]])
    assert session.cache.max_len == 192
    short = session.generate(8, active=[False, True]).token_lists()[1]
    both = session.generate(8).token_lists()
    # Row lengths 3 + 8 (only the short row is active), then 160 + 8.
    assert windows == [64, 192]
    assert short + both[1] == uncached_greedy(model, PROMPTS[0], 16)[0]
    assert both[0] == uncached_greedy(model, long_prompt, 8, width=192)[0]
    # The same tokens from a cache allocated 16x larger: the window, not the capacity, is read.
    roomy = Sampler(model, eos_token_ids=(), min_capacity=4096).start([long_prompt, PROMPTS[0]])
    np.testing.assert_array_equal(roomy.generate(8, active=[False, True]).tokens[1], short)
    assert windows[-1] == 64


def test_cache_grows_on_demand(model):
    small = Sampler(model, eos_token_ids=(), min_capacity=16)
    session = small.start(PROMPTS[2:])
    assert session.cache.max_len == 16
    grown = session.generate(40)
    assert session.cache.max_len == 64  # 12 + 40 = 52 slots -> next power of two
    reserved = small.start(PROMPTS[2:], reserve=40).generate(40)
    assert_same_rows(grown, reserved)


def test_bad_input_raises(sampler):
    with pytest.raises(ValueError, match="at least one prompt"):
        sampler.start([])
    with pytest.raises(ValueError, match="at least one token"):
        sampler.start([[1], []])
    with pytest.raises(ValueError, match="vocab_size"):
        sampler.start([[1, CONFIG.vocab_size]])
    session = sampler.start(PROMPTS[:2])
    with pytest.raises(ValueError, match="vocab_size"):
        session.append([[-1], []])
    with pytest.raises(ValueError, match="PRNG key"):
        session.generate(4, sampling=SAMPLED)
    with pytest.raises(ValueError, match="not both"):
        session.generate(4, stops=[[1]], row_stops=[[[1]], [[2]]])
    with pytest.raises(ValueError, match="row_stops has 1 rows"):
        session.generate(4, row_stops=[[[1]]])
    with pytest.raises(ValueError, match="batch of 2 keys"):
        session.generate(4, key=jax.random.split(jax.random.key(0), 3), sampling=SAMPLED)
    with pytest.raises(ValueError, match="one token list per row"):
        session.append([[1]])
    with pytest.raises(ValueError, match="k >= 1"):
        session.fork(0)
    with pytest.raises(ValueError, match="Row indices"):
        session.select([2])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        session.generate(CONFIG.max_position_embeddings)
