"""The device side of a tree search: a sampler, an `Env` and a value function behind `Expander`.

    engine = TreeEngine(Sampler(policy), env, tokenizer, value_fn, EngineConfig(...), key=key)
    trees = engine.new_trees(tasks)                  # one prefill for every task's root
    mcts_star(trees, engine, MCTSConfig(...))        # or any other search over `Expander`

Every call is batched over nodes of any trees: `expand` gathers the selected nodes' cache rows
into one session (`prm.sampling.gather`), forks each `width` ways and decodes one step for all of
them in one call, so a child continues from its parent's cache and no prefix is prefilled
twice; the env's observations are then appended to the children's rows in one call. Before
each expansion, live rows left in sessions that are at most half alive are compacted into
fresh ones, so the cache of expanded and finished nodes is freed. With
`EngineConfig.reuse_cache=False` each expansion re-prefills its parents' whole contexts instead
(the baseline of experiments/bench_tree_search.py); both grow the same trees.

Sampling is keyed per node, not per batch position: child j of node n of tree t draws with
fold_in(fold_in(fold_in(key, t), n), j), so a tree does not depend on which other trees or
nodes share its decode call (up to float rounding of batched matmuls).

The env is an `Env` (`prm.rollouts.Env`): episodes cannot be copied through that protocol, so
the engine replays each new node's path (reset, then its step texts) before applying its new
step. Env steps must therefore be deterministic in (task, step texts); host text work only.
A step whose context outgrows `max_length` ends its episode (done, reward 0, `truncated`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prm.envs.protocol import StepResult, TextTokenizer, stop_token_sequences
from prm.rollouts.env import Env
from prm.sampling import Row, Sampler, SamplingParams, compact, gather, live_cache_bytes
from prm.sampling.sampler import _bucket
from prm.search.tree import Node, SearchTree

ValueFn = Callable[[Sequence[Sequence[int]]], np.ndarray]
"""V_θ of each token context (the prefix so far), any real numbers; the engine clips to [0, 1]."""

# fold_in offset of rollout keys, past any child index of an expansion.
_ROLLOUT_KEYS = 1 << 20


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    max_step_tokens: int = 32  # decode budget of one step
    max_length: int = 256  # context cap: prompt + steps + observations
    sampling: SamplingParams = SamplingParams(temperature=0.7)
    reuse_cache: bool = True  # False: re-prefill every parent's context (benchmark baseline)
    batch_buckets: bool = True  # pad decode batches to 2^i or 3·2^(i-1) rows (fewer compiles)

    def __post_init__(self):
        if self.max_step_tokens < 1 or self.max_length < 2:
            raise ValueError(f"Need max_step_tokens >= 1 and max_length >= 2, got {self}.")


@dataclasses.dataclass
class _State:
    """A prefix being grown: a tree node, or a rollout's temporary state."""

    tree: SearchTree
    node_id: int  # the tree node it is, or descends from (rollouts)
    row: Row
    texts: list[str]
    context: list[int]


@dataclasses.dataclass
class _Step:
    """One sampled step below a state, with the env's result."""

    parent: _State
    node: Node
    state: _State | None  # None when done (nothing more to grow)


class TreeEngine:
    """Batched expansions, value calls and rollouts for searches over an `Env` (module doc).

    stats: generated tokens per tree index (`tokens`), decode calls, value calls, prefilled
    tokens, and the peak KV-cache bytes alive at the end of any call (`peak_cache_bytes`).
    """

    def __init__(
        self,
        sampler: Sampler,
        env: Env,
        tokenizer: TextTokenizer,
        value_fn: ValueFn,
        config: EngineConfig = EngineConfig(),
        *,
        key: jax.Array | None = None,
    ):
        limit = sampler.config.max_position_embeddings
        if config.max_length + config.max_step_tokens > limit:
            raise ValueError(
                f"max_length + max_step_tokens = {config.max_length + config.max_step_tokens} "
                f"exceeds the model's max_position_embeddings={limit}; lower one of them."
            )
        if key is None and not config.sampling.greedy:
            raise ValueError("Sampling with temperature > 0 needs a PRNG key: pass key=...")
        self.sampler = sampler
        self.env = env
        self.tokenizer = tokenizer
        self.value_fn = value_fn
        self.config = config
        self.key = jax.random.key(0) if key is None else key
        self.stops = stop_token_sequences(tokenizer, env.stop_strings)
        self.stats: dict[str, Any] = {
            "tokens": {},
            "decode_calls": 0,
            "value_calls": 0,
            "prefilled_tokens": 0,
            "peak_cache_bytes": 0,
        }
        self._trees: list[SearchTree] = []

    def new_trees(self, tasks: Sequence[Any]) -> list[SearchTree]:
        """One tree per task, every root prefilled in one call (tree index = task position)."""
        prompts = self.env.reset(list(tasks))
        prompt_ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        if max(map(len, prompt_ids)) >= self.config.max_length:
            raise ValueError(
                f"A prompt has {max(map(len, prompt_ids))} tokens, leaving no room under "
                f"max_length={self.config.max_length}; raise EngineConfig.max_length."
            )
        session = self.sampler.start(prompt_ids)
        self.stats["prefilled_tokens"] += sum(map(len, prompt_ids))
        trees = [SearchTree(task, ids, i) for i, (task, ids) in enumerate(zip(tasks, prompt_ids))]
        for i, tree in enumerate(trees):
            tree.nodes[0].row = Row(session, i)
            self.stats["tokens"][i] = 0
        self._trees = trees
        return trees

    # Expander protocol -------------------------------------------------------------------

    def expand(self, requests: Sequence[tuple[SearchTree, int]], width: int) -> list[list[Node]]:
        self._compact()
        states = [self._node_state(tree, node_id) for tree, node_id in requests]
        keys = [[self._node_key(s.tree, s.node_id, j) for j in range(width)] for s in states]
        steps = self._step(states, width, keys)
        children = [[] for _ in requests]
        for i, step in enumerate(steps):
            if step.state is not None:
                step.node.row = step.state.row
            children[i // width].append(step.node)
        self._track_cache()
        return children

    def values(self, items: Sequence[tuple[SearchTree, int]]) -> np.ndarray:
        return self._values([tree.context(node_id) for tree, node_id in items])

    def rollout(
        self, items: Sequence[tuple[SearchTree, int]], steps: int, branch: int
    ) -> np.ndarray:
        v_max = np.zeros(len(items))
        states: list[_State | None] = [self._node_state(tree, n) for tree, n in items]
        for s in range(steps):
            live = [i for i, state in enumerate(states) if state is not None]
            if not live:
                break
            keys = [
                [
                    self._node_key(
                        states[i].tree, states[i].node_id, _ROLLOUT_KEYS + s * branch + j
                    )
                    for j in range(branch)
                ]
                for i in live
            ]
            candidates = self._step([states[i] for i in live], branch, keys)
            values = self._values([self._context(c) for c in candidates])
            for k, i in enumerate(live):
                block = values[k * branch : (k + 1) * branch]
                best = k * branch + int(np.argmax(block))
                v_max[i] = max(v_max[i], float(block.max()))
                states[i] = candidates[best].state
            self._track_cache()
        return v_max

    # Internals ---------------------------------------------------------------------------

    def _node_key(self, tree: SearchTree, node_id: int, j: int) -> jax.Array:
        return jax.random.fold_in(
            jax.random.fold_in(jax.random.fold_in(self.key, tree.index), node_id), j
        )

    def _node_state(self, tree: SearchTree, node_id: int) -> _State:
        row = tree.nodes[node_id].row
        if row is None:
            raise ValueError(
                f"Node {node_id} of tree {tree.index} has no cache row (expanded or done); "
                "only unexpanded, unfinished nodes can grow."
            )
        return _State(tree, node_id, row, tree.step_texts(node_id), tree.context(node_id))

    def _context(self, step: _Step) -> list[int]:
        node = step.node
        return [*step.parent.context, *node.step_tokens, *node.observation_tokens]

    def _values(self, contexts: list[list[int]]) -> np.ndarray:
        self.stats["value_calls"] += 1
        values = np.asarray(self.value_fn(contexts), np.float64)
        if values.shape != (len(contexts),):
            raise ValueError(
                f"value_fn returned shape {values.shape} for {len(contexts)} contexts; it must "
                "return one number per context."
            )
        return np.clip(values, 0.0, 1.0)

    def _session(self, states: Sequence[_State], rows: int):
        """A session whose first len(states) rows continue the states (then padding)."""
        if self.config.reuse_cache:
            return gather([s.row for s in states], pad_to=rows)
        contexts = [s.context for s in states]
        contexts += [contexts[-1]] * (rows - len(contexts))
        self.stats["prefilled_tokens"] += sum(map(len, contexts[: len(states)]))
        return self.sampler.start(contexts)

    def _step(
        self, states: Sequence[_State], width: int, keys: Sequence[Sequence[jax.Array]]
    ) -> list[_Step]:
        """Samples `width` next steps below each state in one decode call (row-major order)."""
        config = self.config
        num = len(states) * width
        rows = _bucket(len(states)) if config.batch_buckets else len(states)
        session = self._session(states, rows).fork(width)
        flat_keys = [k for ks in keys for k in ks]
        flat_keys += [flat_keys[-1]] * (rows * width - num)
        active = np.arange(rows * width) < num
        generation = session.generate(
            config.max_step_tokens,
            key=jnp.stack(flat_keys),
            sampling=config.sampling,
            stops=self.stops,
            active=active,
        )
        self.stats["decode_calls"] += 1
        tokens = generation.token_lists()
        logprobs = np.asarray(generation.logprobs)
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens[:num]]
        parents = [states[i // width] for i in range(num)]
        results = self._replay([(p.tree.task, [*p.texts, t]) for p, t in zip(parents, texts)])
        steps, forced = [], [[] for _ in range(rows * width)]
        for i, (parent, result) in enumerate(zip(parents, results)):
            self.stats["tokens"][parent.tree.index] += len(tokens[i])
            node = Node(
                parent=parent.node_id,
                depth=0,
                step_text=result.step_text,
                step_tokens=tuple(tokens[i]),
                step_logprobs=tuple(float(x) for x in logprobs[i, : len(tokens[i])]),
                done=result.done,
                reward=float(result.reward),
            )
            length = len(parent.context) + len(tokens[i])
            if not node.done:
                observation = self.tokenizer.encode(result.observation, add_special_tokens=False)
                if length + len(observation) >= config.max_length:
                    node.done, node.reward, node.truncated = True, 0.0, True
                else:
                    node.observation_tokens = tuple(observation)
                    forced[i] = observation
            steps.append(_Step(parent, node, None))
        if any(forced):
            session.append(forced)
        for i, step in enumerate(steps):
            if not step.node.done:
                step.state = _State(
                    step.parent.tree,
                    step.parent.node_id,
                    Row(session, i),
                    [*step.parent.texts, step.node.step_text],
                    self._context(step),
                )
        return steps

    def _replay(self, episodes: list[tuple[Any, list[str]]]) -> list[StepResult]:
        """Each episode's result of its last step text, after replaying the ones before it."""
        self.env.reset([task for task, _ in episodes])
        last: list[StepResult | None] = [None] * len(episodes)
        for t in range(max(len(texts) for _, texts in episodes)):
            step_texts = [texts[t] if t < len(texts) else None for _, texts in episodes]
            results = self.env.step(step_texts)
            for i, (_, texts) in enumerate(episodes):
                if t < len(texts) - 1 and results[i].done:
                    raise ValueError(
                        f"Replaying a path of {type(self.env).__name__}: step {t} ended the "
                        "episode, but the tree grew below it; the env must be deterministic "
                        "in (task, step texts)."
                    )
                if t == len(texts) - 1:
                    last[i] = results[i]
        return last  # type: ignore[return-value]

    def _compact(self) -> None:
        """Moves the rows of live nodes out of sessions at most half alive (`compact`), so the
        sessions of expanded and finished nodes are freed."""
        groups: dict[int, list[Node]] = {}
        for tree in self._trees:
            for node in tree.nodes:
                if node.row is not None:
                    groups.setdefault(id(node.row.session), []).append(node)
        stale = [
            node
            for group in groups.values()
            if 2 * len(group) <= group[0].row.session.batch_size
            for node in group
        ]
        if stale:
            for node, row in zip(stale, compact([node.row for node in stale])):
                node.row = row

    def _track_cache(self) -> None:
        rows = [row for tree in self._trees for row in tree.rows()]
        if rows:
            self.stats["peak_cache_bytes"] = max(
                self.stats["peak_cache_bytes"], live_cache_bytes(rows)
            )
