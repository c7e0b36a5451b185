"""Step-aware KV-cache sampler: prefill once, decode until a step ends, force tokens, fork k.

    sampler = Sampler(model)
    session = sampler.start(prompts)                       # prefill (per-row lengths)
    step = session.generate(64, key=key, sampling=SamplingParams(1.0), stops=[close_search])
    session.append(observations)                           # forced tokens into chosen rows
    siblings = session.fork(5)                             # k continuations of each row
    chosen = siblings.select([2])                          # keep the sibling that continues
    logprobs = chosen.append([tag], score=True)            # forced tokens and their log π

A session owns a KV cache on device and carries it across calls: nothing already in the cache is
ever prefilled again. Each row keeps its last context token *pending* (not yet in the cache): a
decode step feeds the pending token and samples the next one, so prefill and appends compute no
logits (unless an append is asked to score its tokens), and forced tokens, forks and per-row
lengths need no special cases.

Design (after the tunix `Sampler` and big_vision's prefill/repeat/decode, see
shared/papers/jax_anchors.md §1.3, §4.3): each `start` takes the decode-time copy of the
model's weights (`prm.sampling.weights`: compute dtype, bf16 kernels stored [out, in]; made
again only when the weights changed), split once per session (`nnx.split`), its state passed
to jitted functions that `nnx.merge` inside; `_extend` writes
right-padded tokens into the cache (prefill and appends; `_extend_scored` also scores them),
`_decode` is one `lax.while_loop` that stops when every row has finished. The cache is donated
to each, so XLA updates it in place. All attend over a live *window* of cache slots, not the whole capacity:
the host knows every row's length, so a call that adds at most n tokens to rows of length <= L
attends over slots [0, W) with W the power of two >= L + n (at least 64, at most the capacity),
and a step costs what the live context does however large the cache was allocated. Shapes are
bucketed so a run compiles a handful of programs: cache capacity and tokens written per call to
2^i or 3 * 2^(i-1), the attention window, the decode buffer and the stop table to powers of two
(windows are coarser than capacities: each one is another compiled program). The cache grows
to the next bucket when a call needs more room (`reserve` avoids that).

Determinism: with a key, the token at position p of row b is drawn with
`fold_in(row_key_b, p)` where `row_key_b = fold_in(key, b)` (or `key[b]` for a batch of keys).
A row's samples therefore depend on its own key, context and the sampling parameters only,
not on the batch size or the other rows (up to float rounding of batched matmuls, which can
change in the last bits with the batch shape).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from prm.models import KVCache, Transformer, chunked_logprobs
from prm.sampling.filters import GREEDY, SamplingParams, sample_tokens
from prm.sampling.stops import NO_TOKEN, match_stops, pack_stops, push_tail
from prm.sampling.weights import DecodeWeights

Tokens = Sequence[int]


class FinishReason(enum.IntEnum):
    """Why a row stopped in one `generate` call (`Generation.finish_reason`)."""

    STOP = 0  # its generated tokens ended with one of its stop sequences (see stop_index)
    EOS = 1  # it sampled an end-of-sequence token
    LENGTH = 2  # it used the whole max_new_tokens budget
    INACTIVE = 3  # it was not asked to generate (`active` False): no tokens


@struct.dataclass
class Generation:
    """The tokens one `generate` call added to each row.

    tokens: int32[B, N] (N = max_new_tokens), row b's tokens in [:num_tokens[b]], pad after.
    logprobs: float32[B, N] log π(token | context) of the policy itself, i.e. the raw model
        logits at temperature 1 with no top-k/top-p filtering: the π_old of PPO-style losses.
        0 after num_tokens.
    sampling_logprobs: float32[B, N] log-prob under the distribution actually sampled from
        (tempered and filtered; 0 for greedy), for importance corrections. 0 after num_tokens.
    finish_reason: int32[B] a `FinishReason`.
    stop_index: int32[B] index of the matched stop in the row's stop list, -1 unless STOP.
    """

    tokens: jax.Array
    num_tokens: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    finish_reason: jax.Array
    stop_index: jax.Array

    def token_lists(self) -> list[list[int]]:
        """Each row's generated tokens as a host list."""
        tokens, counts = np.asarray(self.tokens), np.asarray(self.num_tokens)
        return [row[:n].tolist() for row, n in zip(tokens, counts)]


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _bucket(n: int) -> int:
    """Smallest 2^i or 3 * 2^(i-1) >= n: at most 50% padding, two shapes per octave."""
    power = _next_power_of_two(n)
    return 3 * power // 4 if 3 * power // 4 >= n and power >= 4 else power


# Smallest attention window: below it a step's attention is negligible next to its matmuls,
# and fewer distinct windows mean fewer compiled programs.
_MIN_WINDOW = 64


@functools.partial(jax.jit, static_argnames=("graphdef", "window"), donate_argnames=("cache",))
def _extend(graphdef, params, cache: KVCache, input_ids, input_mask, *, window: int) -> KVCache:
    """Writes right-padded tokens into the cache (n_b = row b's mask count); no logits."""
    model = nnx.merge(graphdef, params)
    _, cache = model.hidden_states(input_ids, input_mask, cache=cache, window=window)
    return cache


@functools.partial(jax.jit, static_argnames=("graphdef", "window"), donate_argnames=("cache",))
def _extend_scored(
    graphdef, params, cache: KVCache, input_ids, input_mask, targets, *, window: int
) -> tuple[KVCache, jax.Array]:
    """`_extend`, plus log π(targets[b, i] | everything up to input_ids[b, i]) [B, W]."""
    model = nnx.merge(graphdef, params)
    hidden, cache = model.hidden_states(input_ids, input_mask, cache=cache, window=window)
    logprobs, _ = chunked_logprobs(model.unembed, hidden, targets)
    return cache, jnp.where(input_mask, logprobs, 0.0)


@struct.dataclass
class _DecodeState:
    step: jax.Array
    cache: KVCache
    pending: jax.Array
    done: jax.Array
    tail: jax.Array
    generation: Generation


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "sampling", "buffer_len", "pad_id", "window"),
    donate_argnames=("cache",),
)
def _decode(
    graphdef,
    params,
    cache: KVCache,
    pending: jax.Array,
    active: jax.Array,
    row_keys: jax.Array,
    max_new_tokens: jax.Array,
    stop_table: jax.Array,
    row_stop_ids: jax.Array,
    eos_ids: jax.Array,
    *,
    sampling: SamplingParams,
    buffer_len: int,
    pad_id: int,
    window: int,
) -> tuple[Generation, KVCache, jax.Array]:
    """Decodes every active row until it stops, samples an end token, or spends its budget.

    Every step attends over cache slots [0, window): each active row's length plus
    max_new_tokens must fit in it. Returns the generation (buffers of width buffer_len), the
    cache and the pending tokens.
    """
    model = nnx.merge(graphdef, params)
    batch = pending.shape[0]
    rows = jnp.arange(batch)

    def cond(s: _DecodeState) -> jax.Array:
        return (s.step < max_new_tokens) & ~jnp.all(s.done)

    def body(s: _DecodeState) -> _DecodeState:
        live = ~s.done
        logits, cache = model(s.pending[:, None], live[:, None], cache=s.cache, window=window)
        logits = logits[:, 0].astype(jnp.float32)
        # cache.length now equals the position the sampled token will take in its row.
        step_keys = jax.vmap(jax.random.fold_in)(row_keys, cache.length)
        token, sampling_logprob = sample_tokens(logits, step_keys, sampling)
        logprob = jax.nn.log_softmax(logits)[rows, token]

        tail = push_tail(s.tail, token, live)
        stop = match_stops(tail, stop_table, row_stop_ids)
        hit_stop = live & (stop >= 0)
        hit_eos = live & ~hit_stop & jnp.isin(token, eos_ids)
        hit_length = live & ~hit_stop & ~hit_eos & (s.step + 1 >= max_new_tokens)
        g = s.generation

        def write(buffer: jax.Array, value: jax.Array) -> jax.Array:
            return buffer.at[:, s.step].set(jnp.where(live, value, buffer[:, s.step]))

        generation = Generation(
            tokens=write(g.tokens, token),
            num_tokens=g.num_tokens + live,
            logprobs=write(g.logprobs, logprob),
            sampling_logprobs=write(g.sampling_logprobs, sampling_logprob),
            finish_reason=jnp.select(
                [hit_stop, hit_eos, hit_length],
                [FinishReason.STOP, FinishReason.EOS, FinishReason.LENGTH],
                g.finish_reason,
            ).astype(jnp.int32),
            stop_index=jnp.where(hit_stop, stop, g.stop_index),
        )
        return _DecodeState(
            step=s.step + 1,
            cache=cache,
            pending=jnp.where(live, token, s.pending),
            done=s.done | hit_stop | hit_eos | hit_length,
            tail=tail,
            generation=generation,
        )

    empty = jnp.zeros((batch, buffer_len), jnp.float32)
    start = _DecodeState(
        step=jnp.int32(0),
        cache=cache,
        pending=pending,
        done=~active,
        tail=jnp.full((batch, stop_table.shape[1]), NO_TOKEN, jnp.int32),
        generation=Generation(
            tokens=jnp.full((batch, buffer_len), pad_id, jnp.int32),
            num_tokens=jnp.zeros((batch,), jnp.int32),
            logprobs=empty,
            sampling_logprobs=empty,
            finish_reason=jnp.full((batch,), FinishReason.INACTIVE, jnp.int32),
            stop_index=jnp.full((batch,), -1, jnp.int32),
        ),
    )
    end = jax.lax.while_loop(cond, body, start)
    return end.generation, end.cache, end.pending


class Sampler:
    """Holds a model and its sampling constants; `start` opens a `Session` over prompts.

    Args:
      model: a `prm.models.Transformer` (any NNX module with its `hidden_states`/`__call__`
        cache contract). Its current parameters are read at each `start`, so a session samples
        from one fixed policy even while training updates the model.
      eos_token_ids: tokens that end a row in every `generate` (FinishReason.EOS); defaults to
        `model.config.eos_token_ids`.
      pad_token_id: fills `Generation.tokens` after each row's end; defaults to the config's
        pad id, else 0.
      cache_dtype: KV cache dtype; defaults to the model's activation dtype.
      min_capacity: smallest cache length allocated. Capacities, like the number of tokens
        prefilled per call, are bucketed to 2^i or 3 * 2^(i-1) to bound recompiles.
      decode_copy: sample from a copy of the weights in the layout and dtype a decode step
        reads fastest (`prm.sampling.weights`), made at the first `start` after the weights
        change; False samples from the model's own arrays.
    """

    def __init__(
        self,
        model: Transformer,
        *,
        eos_token_ids: Sequence[int] | None = None,
        pad_token_id: int | None = None,
        cache_dtype: Any = None,
        min_capacity: int = 64,
        decode_copy: bool = True,
    ):
        config = model.config
        self.model = model
        self.config = config
        eos = config.eos_token_ids if eos_token_ids is None else tuple(eos_token_ids)
        # An empty isin table is legal, but -1 keeps the array shape fixed at >= 1.
        self.eos_token_ids = np.asarray(eos or (NO_TOKEN,), np.int32)
        if pad_token_id is None:
            pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.pad_token_id = int(pad_token_id)
        self.cache_dtype = config.dtype if cache_dtype is None else cache_dtype
        self.min_capacity = min_capacity
        self._weights = DecodeWeights(model, config.dtype) if decode_copy else None

    def capacity_for(self, num_slots: int) -> int:
        """The bucketed cache length that holds num_slots tokens per row."""
        limit = self.config.max_position_embeddings
        if num_slots > limit:
            raise ValueError(
                f"A row would hold {num_slots} tokens, more than the model's "
                f"max_position_embeddings={limit}; lower max_new_tokens or shorten the context."
            )
        return max(self.min_capacity, min(_bucket(num_slots), limit))

    def start(self, prompts: Sequence[Tokens], *, reserve: int = 0) -> Session:
        """Prefills `prompts` (one non-empty token list per row, any lengths).

        reserve: extra cache slots per row to allocate now (e.g. the tokens you will generate),
        so the first `generate` does not have to grow the cache.
        """
        if not prompts:
            raise ValueError("start() needs at least one prompt.")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("Every prompt needs at least one token (e.g. the BOS token).")
        graphdef, params = self._weights() if self._weights else nnx.split(self.model)
        longest = max(len(p) for p in prompts)
        cache = KVCache.init(
            self.config, len(prompts), self.capacity_for(longest + reserve), self.cache_dtype
        )
        session = Session(self, graphdef, params, cache, jnp.zeros((len(prompts),), jnp.int32))
        session._write([list(p[:-1]) for p in prompts], [p[-1] for p in prompts])
        return session


class Session:
    """A batch of growing contexts with their KV cache on device (see the module docstring).

    Row b's context is its prompt followed by everything generated and appended since; its
    length is `lengths()[b]`. Sessions from `fork` and `select` are independent of this one.
    """

    def __init__(self, sampler: Sampler, graphdef, params, cache: KVCache, pending: jax.Array):
        self.sampler = sampler
        self._graphdef = graphdef
        self._params = params
        self.cache = cache
        self.pending = pending

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    def lengths(self) -> np.ndarray:
        """Context length per row (host int array; waits for pending device work)."""
        return np.asarray(self.cache.length) + 1

    def generate(
        self,
        max_new_tokens: int,
        *,
        key: jax.Array | None = None,
        sampling: SamplingParams = GREEDY,
        stops: Sequence[Tokens] = (),
        row_stops: Sequence[Sequence[Tokens]] | None = None,
        active: Sequence[bool] | np.ndarray | None = None,
    ) -> Generation:
        """Extends every active row until a stop sequence, an EOS token or max_new_tokens.

        Args:
          max_new_tokens: the budget of this call (one "step") per row.
          key: PRNG key (or a batch of B keys, one per row); required unless greedy.
          sampling: temperature / top-k / top-p; greedy by default.
          stops: token sequences that end any row when its tokens generated in this call end
            with one (e.g. the ids of "</search>"); stop_index indexes this list.
          row_stops: per-row stop lists instead of `stops` (stop_index indexes the row's list).
          active: bool per row; inactive rows are left untouched (FinishReason.INACTIVE).
        """
        batch = self.batch_size
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        if row_stops is not None and stops:
            raise ValueError("Pass either `stops` (all rows) or `row_stops` (per row), not both.")
        if row_stops is None:
            row_stops = [stops] * batch
        if len(row_stops) != batch:
            raise ValueError(f"row_stops has {len(row_stops)} rows; the session has {batch}.")
        active = np.ones(batch, bool) if active is None else np.asarray(active, bool)
        if active.shape != (batch,):
            raise ValueError(f"active must have shape ({batch},), got {active.shape}.")
        row_keys = self._row_keys(key, sampling)
        stop_table, row_stop_ids = pack_stops(row_stops)
        window = self._reserve(np.where(active, max_new_tokens, 0))
        generation, self.cache, self.pending = _decode(
            self._graphdef,
            self._params,
            self.cache,
            self.pending,
            jnp.asarray(active),
            row_keys,
            jnp.int32(max_new_tokens),
            jnp.asarray(stop_table),
            jnp.asarray(row_stop_ids),
            jnp.asarray(self.sampler.eos_token_ids),
            sampling=sampling,
            buffer_len=_next_power_of_two(max_new_tokens),
            pad_id=self.sampler.pad_token_id,
            window=window,
        )
        return jax.tree.map(lambda x: x[:, :max_new_tokens] if x.ndim == 2 else x, generation)

    def append(self, tokens: Sequence[Tokens], *, score: bool = False) -> list[np.ndarray] | None:
        """Forces tokens into the rows' contexts: tokens[b] (possibly empty) is appended to row b.

        Only the new tokens are prefilled; the next `generate` continues after them. With
        `score`, also returns per row the log-probs log π(tokens[b][i] | context, tokens[b][:i])
        at temperature 1 (float32 [len(tokens[b])]), read off the same prefill: what forced
        continuations cost under the policy (e.g. to choose between two of them).
        """
        if len(tokens) != self.batch_size:
            raise ValueError(
                f"append() needs one token list per row ({self.batch_size}), got {len(tokens)}; "
                "use [] for rows that get nothing."
            )
        pending = np.asarray(self.pending)
        # Row b writes its pending token and all forced tokens but the last, which becomes pending.
        writes = [[int(pending[b]), *t[:-1]] if len(t) else [] for b, t in enumerate(tokens)]
        new_pending = [t[-1] if len(t) else int(pending[b]) for b, t in enumerate(tokens)]
        # Write i of a row predicts its forced token i.
        return self._write(writes, new_pending, targets=tokens if score else None)

    def fork(self, k: int) -> Session:
        """A new session with each row repeated k times (row b -> rows b*k .. b*k + k - 1).

        The siblings share the prefilled context (one prefill for all) and then evolve
        independently; with a key they draw different tokens because their row indices differ.
        """
        if k < 1:
            raise ValueError(f"fork(k) needs k >= 1, got {k}.")
        cache, pending = _repeat(self.cache, self.pending, k)
        return Session(self.sampler, self._graphdef, self._params, cache, pending)

    def select(self, rows: Sequence[int]) -> Session:
        """A new session holding the given rows (in that order, repeats allowed)."""
        index = np.asarray(rows, np.int32)
        if index.ndim != 1 or index.size == 0:
            raise ValueError(f"select() needs a non-empty list of row indices, got {rows}.")
        if index.min() < 0 or index.max() >= self.batch_size:
            raise ValueError(f"Row indices must lie in [0, {self.batch_size}), got {rows}.")
        cache, pending = _take(self.cache, self.pending, jnp.asarray(index))
        return Session(self.sampler, self._graphdef, self._params, cache, pending)

    def _row_keys(self, key: jax.Array | None, sampling: SamplingParams) -> jax.Array:
        batch = self.batch_size
        if key is None:
            if not sampling.greedy:
                raise ValueError("Sampling with temperature > 0 needs a PRNG key: pass key=...")
            key = jax.random.key(0)  # unused by greedy decoding; fixes the argument's type
        if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        if key.ndim == 0:
            return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(batch))
        if key.shape != (batch,):
            raise ValueError(f"key must be one key or a batch of {batch} keys, got {key.shape}.")
        return key

    def _reserve(self, new_tokens: np.ndarray) -> int:
        """Makes room for new_tokens[b] more tokens in row b; returns the window to attend.

        Grows the cache (to the next bucket) if some row would outgrow it. The window is the
        power of two (>= _MIN_WINDOW, <= capacity) of slots that holds every row receiving
        tokens once they are written; rows that receive none may be longer (their outputs are
        discarded and their cache is not written).
        """
        ends = np.asarray(self.cache.length) + new_tokens
        if int(ends.max()) > self.cache.max_len:
            capacity = self.sampler.capacity_for(int(ends.max()))
            self.cache = _resize(self.cache, max_len=capacity)
        live = int(np.max(ends[new_tokens > 0], initial=1))
        return min(self.cache.max_len, max(_MIN_WINDOW, _next_power_of_two(live)))

    def _write(
        self,
        writes: list[list[int]],
        new_pending: list[int],
        targets: Sequence[Tokens] | None = None,
    ) -> list[np.ndarray] | None:
        vocab = self.sampler.config.vocab_size
        for tokens in [*writes, new_pending]:
            ids = np.asarray(tokens, np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                raise ValueError(
                    f"Token ids must lie in [0, vocab_size={vocab}); got {tokens[:8]}..."
                )
        counts = np.array([len(w) for w in writes], np.int32)
        if counts.max() == 0:
            self.pending = jnp.asarray(new_pending, jnp.int32)
            return None if targets is None else [np.zeros(0, np.float32) for _ in writes]
        window = self._reserve(counts)
        # At least 16 wide: a short append costs what a 1-token one does (weights are read once).
        width = _bucket(max(int(counts.max()), 16))
        ids = np.full((self.batch_size, width), self.sampler.pad_token_id, np.int32)
        for b, w in enumerate(writes):
            ids[b, : len(w)] = w
        mask = np.arange(width)[None, :] < counts[:, None]
        args = (self._graphdef, self._params, self.cache, jnp.asarray(ids), jnp.asarray(mask))
        if targets is None:
            self.cache = _extend(*args, window=window)
            self.pending = jnp.asarray(new_pending, jnp.int32)
            return None
        target_ids = np.zeros_like(ids)
        for b, t in enumerate(targets):
            target_ids[b, : len(t)] = t
        self.cache, logprobs = _extend_scored(*args, jnp.asarray(target_ids), window=window)
        self.pending = jnp.asarray(new_pending, jnp.int32)
        return [np.asarray(logprobs)[b, : len(t)] for b, t in enumerate(targets)]


@functools.partial(jax.jit, static_argnames=("k",))
def _repeat(cache: KVCache, pending: jax.Array, k: int) -> tuple[KVCache, jax.Array]:
    return cache.repeat(k), jnp.repeat(pending, k)


@jax.jit
def _take(cache: KVCache, pending: jax.Array, rows: jax.Array) -> tuple[KVCache, jax.Array]:
    return cache.take(rows), pending[rows]


_resize = jax.jit(KVCache.resize, static_argnames=("max_len",))
