"""ReST-MCTS* self-training data and updates (shared/papers/pav_and_tree_search.md §2.3).

Each iteration searches the training questions with MCTS* in "full" mode, then
* policy data: the traces of done nodes whose reward verifies (`correct_reward`), trained with
  next-token NLL on the sampled step tokens only (prompt and observations are context);
* value data: (prefix, v_k) for every node of a tree with a verified answer
  (`SearchTree.value_targets`), trained with MSE of the value model's last-token score:
      L_V = mean_i (V_θ(p_i) − v_i)²
  (`fit_value` also fits by cross-entropy against soft targets, for PAV's Q-models).
`fit_policy` and `fit_value` run plain Adam on fixed-shape batches (one compile per fit); the
loop that alternates search and fits is experiments/rest_mcts.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prm.models.heads import ScalarHeadModel
from prm.sampling.sampler import _bucket
from prm.search.tree import Node, SearchTree
from prm.trainers.sft import next_token_loss


@dataclasses.dataclass(frozen=True)
class Trace:
    """A verified solution: tokens and the loss mask of its sampled step tokens."""

    tokens: tuple[int, ...]
    loss_mask: tuple[float, ...]


def collect_training_data(
    trees: Sequence[SearchTree], correct_reward: float
) -> tuple[list[Trace], list[tuple[list[int], float]]]:
    """(policy traces, value samples) of searched trees; traces deduplicated by tokens."""
    traces: dict[tuple[int, ...], Trace] = {}
    samples = []
    for tree in trees:
        for node_id in tree.done_nodes():
            if tree.correct(node_id, correct_reward):
                tokens, mask = tree.trace(node_id)
                traces.setdefault(tuple(tokens), Trace(tuple(tokens), tuple(mask)))
        for node_id, value in tree.value_targets(correct_reward).items():
            samples.append((tree.context(node_id), value))
    return list(traces.values()), samples


def tree_from_solutions(
    task, prompt_tokens: list[int], solutions: Sequence[Sequence[Sequence[int]]], rewards
) -> SearchTree:
    """A tree merging solutions given as token steps (shared prefixes share nodes); the last
    step of solution i is done with reward rewards[i]. Value targets of such trees are the
    paper's D_V0 labels for a first value model (correct steps k/K, wrong ones decaying)."""
    tree = SearchTree(task, prompt_tokens)
    for steps, reward in zip(solutions, rewards, strict=True):
        node_id = 0
        for k, step in enumerate(steps):
            last = k == len(steps) - 1
            match = [
                c
                for c in tree.nodes[node_id].children
                if tree.nodes[c].step_tokens == tuple(step) and tree.nodes[c].done == last
            ]
            if match:
                node_id = match[0]
            else:
                node = Node(parent=node_id, depth=0, step_tokens=tuple(step), done=last)
                node.reward = float(reward) if last else 0.0
                node_id = tree.add_child(node_id, node)
    return tree


def _pad(rows: Sequence[Sequence], width: int, fill) -> np.ndarray:
    out = np.full((len(rows), width), fill, np.asarray(fill).dtype)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


def _fit(
    model: nnx.Module,
    loss_fn: Callable,
    batches: Callable[[int], dict[str, np.ndarray]],
    steps: int,
    learning_rate: float,
) -> list[float]:
    """`steps` Adam updates of model's nnx.Params on batches(step); returns the losses."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, batch):
        def loss(p):
            return loss_fn(nnx.merge(graphdef, p, rest), batch)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    losses = []
    for step in range(steps):
        batch = {k: jnp.asarray(v) for k, v in batches(step).items()}
        params, opt_state, value = update(params, opt_state, batch)
        losses.append(float(value))
    nnx.update(model, params)
    return losses


def fit_policy(
    model: nnx.Module,
    traces: Sequence[Trace],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    pad_id: int,
    seed: int = 0,
) -> list[float]:
    """SFT on traces (masked next-token NLL, `prm.trainers.sft.next_token_loss`); losses."""
    if not traces:
        raise ValueError("fit_policy() got no traces; the search found no verified solution.")
    width = _bucket(max(len(t.tokens) for t in traces))
    rng = np.random.default_rng(seed)

    def batches(step):
        pick = [traces[i] for i in rng.integers(0, len(traces), batch_size)]
        return {
            "tokens": _pad([t.tokens for t in pick], width, np.int32(pad_id)),
            "loss_mask": _pad([t.loss_mask for t in pick], width, np.float32(0)),
            "input_mask": _pad([[True] * len(t.tokens) for t in pick], width, np.bool_(False)),
        }

    return _fit(model, lambda m, b: next_token_loss(m, b)[0], batches, steps, learning_rate)


VALUE_OBJECTIVES = ("squared", "cross_entropy")


def value_loss(
    model: ScalarHeadModel, batch: dict[str, jax.Array], objective: str = "squared"
) -> jax.Array:
    """The value model's loss at each prefix's last-token score s_b against its target v_b ∈ [0, 1].

    squared:        mean_b (s_b − v_b)²  (ReST-MCTS*'s value regression; the score is the value)
    cross_entropy:  mean_b −[v_b·log σ(s_b) + (1 − v_b)·log(1 − σ(s_b))] = softplus(s_b) − v_b·s_b,
                    binary cross-entropy against a soft target (PAV §4.2 trains its Q-model this
                    way on MC estimates; the value is σ(s), `ScalarValueFn(sigmoid=True)`).
    """
    scores = model(batch["tokens"], batch["input_mask"])
    last = jnp.sum(batch["input_mask"], axis=1) - 1
    predicted = scores[jnp.arange(scores.shape[0]), last]
    if objective == "squared":
        return jnp.mean(jnp.square(predicted - batch["targets"]))
    if objective == "cross_entropy":
        return jnp.mean(jax.nn.softplus(predicted) - batch["targets"] * predicted)
    raise ValueError(f"Unknown value objective {objective!r}; use one of {VALUE_OBJECTIVES}.")


def balanced_indices(targets: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A batch drawn half from targets < 0.5 and half from targets ≥ 0.5 (PAV §4.2's two buckets,
    sampled class-balanced); uniform over all when one bucket is empty."""
    low, high = np.flatnonzero(targets < 0.5), np.flatnonzero(targets >= 0.5)
    if low.size == 0 or high.size == 0:
        return rng.integers(0, targets.size, batch_size)
    half = batch_size // 2
    return np.concatenate([rng.choice(low, batch_size - half), rng.choice(high, half)])


def fit_value(
    model: ScalarHeadModel,
    samples: Sequence[tuple[Sequence[int], float]],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    pad_id: int,
    seed: int = 0,
    objective: str = "squared",
    balanced: bool = False,
) -> list[float]:
    """Fits the value model to (prefix, v) samples by `value_loss(objective)`; returns the losses.

    balanced: draw each batch half from samples with v < 0.5 and half from v ≥ 0.5.
    """
    if not samples:
        raise ValueError("fit_value() got no samples; no searched tree had a verified answer.")
    if objective not in VALUE_OBJECTIVES:
        raise ValueError(f"Unknown value objective {objective!r}; use one of {VALUE_OBJECTIVES}.")
    width = _bucket(max(len(c) for c, _ in samples))
    rng = np.random.default_rng(seed)
    targets = np.asarray([v for _, v in samples], np.float32)

    def batches(step):
        if balanced:
            indices = balanced_indices(targets, batch_size, rng)
        else:
            indices = rng.integers(0, len(samples), batch_size)
        pick = [samples[i] for i in indices]
        return {
            "tokens": _pad([c for c, _ in pick], width, np.int32(pad_id)),
            "input_mask": _pad([[True] * len(c) for c, _ in pick], width, np.bool_(False)),
            "targets": targets[indices],
        }

    loss = functools.partial(value_loss, objective=objective)
    return _fit(model, loss, batches, steps, learning_rate)
