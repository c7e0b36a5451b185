"""A train step's optimiser updates: PPO epochs × mini-batches, each over accumulated micro-batches.

    batch ← trainer.prepare(models, batch)              # once: π_old / π_ref log-probs, ...
    for epoch in 1..updates.ppo_epochs:                   # verl: ppo_epochs
        order ← a permutation of the rows (updates.shuffle), fixed by (seed, step, epoch)
        for rows in split(order, updates.num_mini_batches):   # verl: batch / ppo_mini_batch_size
            g ← Σ_micro ∇ loss(micro; counts of the mini-batch)   # verl: ppo_micro_batch_size
            params ← optimiser(g)

**Exact accumulation.** Every mini-batch carries `minibatch_loss_tokens` (Σ loss_mask over its
rows, position 0 excluded: nothing predicts it) and `minibatch_loss_rows` (rows with a trained
token), repeated per row. Losses divide by these counts instead of the micro-batch's own
(`loss_normalizer`, `prm.losses.aggregate_loss(normalizer=)`), so the micro-batch losses add up
to the mini-batch loss and the accumulated gradient equals the full mini-batch gradient up to
float summation order, for every aggregation mode (tested). verl instead scales each micro-batch
mean by micro/mini size, which is exact only when micro-batches hold equal token counts.

Metrics are averaged over micro- and mini-batches, except `loss`, which is the mini-batch loss
(the sum over its micro-batches) averaged over the mini-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prm.training.sharding import replicated
from prm.training.state import TrainState, merge_parts

# One update per train step on the whole batch (the `updates` block of `base_config`).
DEFAULT_UPDATES = {
    "ppo_epochs": 1,
    "num_mini_batches": 1,
    "micro_batch_size": 0,  # rows per micro-batch; 0: the whole mini-batch
    "shuffle": True,  # a new row order per epoch when there are several updates
}

MINIBATCH_TOKENS = "minibatch_loss_tokens"
MINIBATCH_ROWS = "minibatch_loss_rows"


def loss_normalizer(batch: Mapping[str, jax.Array], aggregation: str) -> jax.Array | None:
    """The count a loss aggregated with `aggregation` divides by when `batch` is a micro-batch
    of a larger mini-batch (None outside the update loop: divide by the batch's own count)."""
    key = MINIBATCH_TOKENS if aggregation == "token-mean" else MINIBATCH_ROWS
    return batch[key][0] if key in batch else None


def with_minibatch_counts(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """`batch` plus the mini-batch counts of the module docstring (traceable)."""
    trained = batch["loss_mask"][:, 1:] > 0
    rows = batch["loss_mask"].shape[0]
    tokens = jnp.sum(trained).astype(jnp.float32)
    nonempty = jnp.sum(jnp.any(trained, axis=-1)).astype(jnp.float32)
    return {
        **batch,
        MINIBATCH_TOKENS: jnp.full((rows,), tokens),
        MINIBATCH_ROWS: jnp.full((rows,), nonempty),
    }


def check_update_config(updates: Any, rows: int) -> tuple[int, int]:
    """(mini-batch rows, micro-batch rows) for a batch of `rows`; one clear error if they do not
    divide."""
    if updates.ppo_epochs < 1 or updates.num_mini_batches < 1:
        raise ValueError(
            f"Need updates.ppo_epochs >= 1 and updates.num_mini_batches >= 1: {updates}."
        )
    if rows % updates.num_mini_batches:
        raise ValueError(
            f"A batch of {rows} rows does not split into updates.num_mini_batches="
            f"{updates.num_mini_batches} equal mini-batches; pick a divisor of {rows}."
        )
    mini = rows // updates.num_mini_batches
    micro = updates.micro_batch_size or mini
    if mini % micro:
        raise ValueError(
            f"Mini-batches of {mini} rows do not split into updates.micro_batch_size={micro}; "
            f"pick a divisor of {mini} (0: no micro-batching)."
        )
    return mini, micro


def minibatch_orders(updates: Any, rows: int, seed: int, step: int) -> list[np.ndarray]:
    """Row indices of each mini-batch of train step `step`, epochs in order (deterministic in
    (seed, step), so a resumed run updates on the same rows)."""
    mini, _ = check_update_config(updates, rows)
    orders = []
    for epoch in range(updates.ppo_epochs):
        order = np.arange(rows)
        if updates.shuffle and (updates.ppo_epochs > 1 or updates.num_mini_batches > 1):
            order = np.random.default_rng([seed, step, epoch]).permutation(rows)
        orders += [order[i : i + mini].astype(np.int32) for i in range(0, rows, mini)]
    return orders


def make_update_fn(run: Any, micro_rows: int) -> Callable:
    """Jitted `(state, frozen, batch, rows) -> (state, metrics)`: one optimiser update on the
    mini-batch `batch[rows]`, accumulated over micro-batches of `micro_rows` rows. `state` is
    donated; `state.step` is not advanced (the loop does, once per train step)."""
    graphdefs, tx, trainer = run.graphdefs, run.tx, run.trainer

    def update(state: TrainState, frozen: Any, batch: Mapping[str, jax.Array], rows: jax.Array):
        minibatch = with_minibatch_counts(jax.tree.map(lambda x: jnp.take(x, rows, axis=0), batch))
        num_micro = rows.shape[0] // micro_rows
        micro = jax.tree.map(lambda x: x.reshape(num_micro, micro_rows, *x.shape[1:]), minibatch)
        rng, loss_rng = jax.random.split(state.rng)

        def loss_of(params, micro_batch, key):
            return trainer.loss(merge_parts(graphdefs, params, frozen), micro_batch, key)

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)

        def accumulate(carry, inputs):
            grads, loss = carry
            micro_batch, index = inputs
            (micro_loss, metrics), micro_grads = grad_fn(
                state.params, micro_batch, jax.random.fold_in(loss_rng, index)
            )
            grads = jax.tree.map(jnp.add, grads, micro_grads)
            return (grads, loss + micro_loss), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, loss), metrics = jax.lax.scan(
            accumulate, (zeros, jnp.zeros((), jnp.float32)), (micro, jnp.arange(num_micro))
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **jax.tree.map(jnp.mean, metrics),
            "loss": loss,
            "grad_norm": optax.global_norm(grads["policy"]),
        }
        for name in grads:
            if name != "policy":
                metrics[f"{name}/grad_norm"] = optax.global_norm(grads[name])
        return state.replace(params=params, opt_state=opt_state, rng=rng), metrics

    frozen_shardings = jax.tree.map(lambda x: x.sharding, run.frozen)
    return jax.jit(
        update,
        in_shardings=(run.state_shardings, frozen_shardings, None, replicated(run.mesh)),
        out_shardings=(run.state_shardings, replicated(run.mesh)),
        donate_argnums=0,
    )


def make_prepare_fn(run: Any) -> Callable | None:
    """Jitted `(params, frozen, batch) -> batch` running `trainer.prepare` once per train step
    (None when the trainer does not override it)."""
    from prm.training.trainer import Trainer  # noqa: PLC0415 - trainer imports this module

    if type(run.trainer).prepare is Trainer.prepare:
        return None
    graphdefs, trainer = run.graphdefs, run.trainer

    def prepare(params: Any, frozen: Any, batch: Mapping[str, jax.Array]):
        return trainer.prepare(merge_parts(graphdefs, params, frozen), batch)

    return jax.jit(prepare)
