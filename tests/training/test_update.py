import types
from typing import get_args

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
from flax import nnx

from prm.losses import Aggregation, aggregate_loss, ppo_policy_loss, value_loss
from prm.training.loop import Stepper, build_run
from prm.training.sharding import replicated
from prm.training.state import TrainState, merge_parts
from prm.training.update import (
    check_update_config,
    loss_normalizer,
    make_update_fn,
    minibatch_orders,
    with_minibatch_counts,
)
from tests.helpers.parts_config import get_config as parts_config

AGGREGATIONS = get_args(Aggregation)  # every mode of prm.losses
VOCAB, LENGTH = 5, 10
# Trained tokens per row (after position 0): very uneven, and row 2 trains on nothing.
TRAINED = np.array([9, 1, 0, 4, 9, 2, 6, 3])


class _Bigram(nnx.Module):
    """logits[b, t] = table[tokens[b, t]]."""

    def __init__(self, seed):
        self.table = nnx.Param(jax.random.normal(jax.random.PRNGKey(seed), (VOCAB, VOCAB)))

    def __call__(self, tokens):
        return self.table[tokens]


class _TwoPartTrainer:
    """Next-token NLL of "policy" plus a squared error of "value"'s logits, both aggregated with
    `mode` over the trained tokens; all `make_update_fn` needs of a trainer is `loss`."""

    def __init__(self, mode):
        self.mode = mode

    def loss(self, models, batch, rng):
        del rng
        tokens, mask = batch["tokens"], batch["loss_mask"][:, 1:]
        logprobs = jax.nn.log_softmax(models["policy"](tokens[:, :-1]))
        nll = -jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
        error = jnp.square(models["value"](tokens[:, 1:])[..., 0] - batch["targets"][:, 1:])
        normalizer = loss_normalizer(batch, self.mode)
        nll = aggregate_loss(nll, mask, self.mode, normalizer=normalizer)
        error = aggregate_loss(error, mask, self.mode, normalizer=normalizer)
        return nll + error, {"nll": nll}


def _gradient_recorder() -> optax.GradientTransformation:
    """An "optimiser" that leaves params alone and keeps the last gradient as its state."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def _batch():
    rng = np.random.default_rng(0)
    loss_mask = np.zeros((len(TRAINED), LENGTH), np.float32)
    for row, count in enumerate(TRAINED):
        loss_mask[row, LENGTH - count :] = 1.0
    return {
        "tokens": jnp.asarray(rng.integers(0, VOCAB, (len(TRAINED), LENGTH)), jnp.int32),
        "loss_mask": jnp.asarray(loss_mask),
        "targets": jnp.asarray(rng.normal(size=(len(TRAINED), LENGTH)), jnp.float32),
    }


def _fake_run(mode):
    """What `make_update_fn` reads of a `Run`, for two bigram parts on one device."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    graphdefs, params, frozen = {}, {}, {}
    for seed, name in enumerate(("policy", "value")):
        graphdefs[name], params[name], frozen[name] = nnx.split(_Bigram(seed), nnx.Param, ...)
    tx = _gradient_recorder()

    def fresh_state():  # `make_update_fn` donates the state it is given
        copied = jax.tree.map(jnp.copy, params)
        return TrainState(jnp.zeros((), jnp.int32), copied, tx.init(copied), jax.random.PRNGKey(0))

    run = types.SimpleNamespace(
        graphdefs=graphdefs, tx=tx, trainer=_TwoPartTrainer(mode), frozen=frozen, mesh=mesh
    )
    run.state_shardings = jax.tree.map(lambda _: replicated(mesh), fresh_state())
    return run, fresh_state


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_accumulated_micro_batch_gradients_equal_the_mini_batch_gradient(mode):
    run, fresh_state = _fake_run(mode)
    batch = _batch()
    rows = np.array([6, 2, 0, 3, 5, 1], np.int32)  # a shuffled mini-batch, with the empty row
    mini_batch = jax.tree.map(lambda x: x[rows], batch)

    def full_loss(params):  # no mini-batch counts: the loss divides by the batch's own
        models = merge_parts(run.graphdefs, params, run.frozen)
        return run.trainer.loss(models, mini_batch, None)[0]

    params = fresh_state().params
    expected_loss, expected = jax.value_and_grad(full_loss)(params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(expected))
    for micro_rows in (1, 3):  # each row alone (one empty); two uneven halves
        state, metrics = make_update_fn(run, micro_rows)(fresh_state(), run.frozen, batch, rows)
        for name in ("policy", "value"):
            message = f"{name}, micro-batches of {micro_rows} rows"
            got, want = state.opt_state[name]["table"], expected[name]["table"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=message)
        np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
        np.testing.assert_allclose(
            metrics["grad_norm"], optax.global_norm(expected["policy"]), rtol=1e-5
        )


# The losses of prm.losses that take a mini-batch `normalizer`, as functions of the
# differentiated input `x` and fixed per-token arrays `y`, `z`.
NORMALIZED_LOSSES = {
    "aggregate_loss": lambda x, y, z, mask, mode, normalizer: aggregate_loss(
        x * y, mask, mode, normalizer=normalizer),
    "ppo_policy_loss": lambda x, y, z, mask, mode, normalizer: ppo_policy_loss(
        x, y, z, mask, aggregation=mode, normalizer=normalizer)[0],
    "value_loss": lambda x, y, z, mask, mode, normalizer: value_loss(
        x, y, z, mask, aggregation=mode, normalizer=normalizer)[0],
}  # fmt: skip


@pytest.mark.parametrize("loss", NORMALIZED_LOSSES)
@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_micro_batch_losses_with_mini_batch_counts_add_up_to_the_mini_batch_loss(loss, mode):
    loss_fn, batch = NORMALIZED_LOSSES[loss], _batch()
    mask = batch["loss_mask"][:, 1:]  # what the counts count: nothing predicts position 0
    rng = np.random.default_rng(1)
    x, y, z = (jnp.asarray(rng.normal(size=mask.shape) * 0.3, jnp.float32) for _ in range(3))
    counted = with_minibatch_counts(batch)

    def micro_batched(x):
        total = 0.0
        for rows in (slice(0, 3), slice(3, 4), slice(4, 8)):  # uneven micro-batches
            normalizer = loss_normalizer({k: v[rows] for k, v in counted.items()}, mode)
            total += loss_fn(x[rows], y[rows], z[rows], mask[rows], mode, normalizer)
        return total

    whole = lambda x: loss_fn(x, y, z, mask, mode, None)
    np.testing.assert_allclose(micro_batched(x), whole(x), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(micro_batched)(x), jax.grad(whole)(x), rtol=1e-5, atol=1e-8)


def _update(ppo_epochs=1, num_mini_batches=1, micro_batch_size=0, shuffle=True):
    return ml_collections.ConfigDict(
        {"ppo_epochs": ppo_epochs, "num_mini_batches": num_mini_batches,
         "micro_batch_size": micro_batch_size, "shuffle": shuffle}
    )  # fmt: skip


def test_minibatch_orders_cover_every_row_once_per_epoch():
    update = _update(ppo_epochs=3, num_mini_batches=4)
    orders = minibatch_orders(update, rows=8, seed=0, step=5)
    assert len(orders) == 12 and all(o.shape == (2,) and o.dtype == np.int32 for o in orders)
    epochs = [np.concatenate(orders[i : i + 4]) for i in range(0, 12, 4)]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(8))
    # Shuffled: each epoch visits the rows in its own order.
    assert len({tuple(e) for e in epochs}) == 3


def test_minibatch_orders_are_fixed_by_seed_and_step():
    update = _update(ppo_epochs=2, num_mini_batches=2)
    orders = lambda seed, step: np.stack(minibatch_orders(update, 16, seed, step))
    np.testing.assert_array_equal(orders(0, 3), orders(0, 3))
    assert not np.array_equal(orders(0, 3), orders(0, 4))
    assert not np.array_equal(orders(0, 3), orders(1, 3))


def test_minibatch_orders_keep_row_order_without_shuffle_or_with_one_update():
    in_order = [np.arange(0, 4), np.arange(4, 8)] * 2
    unshuffled = minibatch_orders(_update(2, 2, shuffle=False), 8, seed=0, step=1)
    np.testing.assert_array_equal(np.stack(unshuffled), np.stack(in_order))
    single = minibatch_orders(_update(), 8, seed=0, step=1)
    np.testing.assert_array_equal(np.stack(single), np.arange(8)[None])


def test_check_update_config_sizes_and_errors():
    assert check_update_config(_update(num_mini_batches=2), 8) == (4, 4)
    assert check_update_config(_update(num_mini_batches=2, micro_batch_size=2), 8) == (4, 2)
    with pytest.raises(ValueError, match="ppo_epochs >= 1 and updates.num_mini_batches >= 1"):
        check_update_config(_update(ppo_epochs=0), 8)
    with pytest.raises(ValueError, match="8 rows does not split into updates.num_mini_batches=3"):
        check_update_config(_update(num_mini_batches=3), 8)
    with pytest.raises(ValueError, match="4 rows do not split into updates.micro_batch_size=3"):
        check_update_config(_update(num_mini_batches=2, micro_batch_size=3), 8)


def _trained(config, workdir, steps):
    """(initial params, state after `steps` train steps, their metrics) of a fresh run."""
    run = build_run(config, workdir)
    initial = jax.device_get(run.state.params)
    stepper = Stepper(run)
    metrics = [stepper(step) for step in range(1, steps + 1)]
    run.checkpointer.close()
    return initial, jax.device_get(run.state), metrics


def _leaves(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_micro_batched_run_matches_whole_mini_batches_and_counts_every_update(tmp_path):
    # Reference, value part and rows of uneven trained-token counts (tests/helpers).
    config = parts_config("smoke")
    config.optim.warmup_steps = 0
    config.parts.value.lr = 0.0  # optim.lr: one tolerance for both parts
    config["updates"].update(ppo_epochs=2, num_mini_batches=2)
    initial, whole, whole_metrics = _trained(config, str(tmp_path / "whole"), steps=3)
    config["updates"].micro_batch_size = 2
    _, micro, micro_metrics = _trained(config, str(tmp_path / "micro"), steps=3)

    # Adam scales each coordinate by its gradient's size, so summation-order differences in
    # near-zero gradients move a few coordinates by a fraction of lr: allow 5% of one update.
    # (Micro-batch means scaled by micro/mini rows, verl's rule, miss by ~lr on most.)
    atol = 0.05 * config.optim.lr
    for name in ("policy", "value"):
        micro_params, whole_params = _leaves(micro.params[name]), _leaves(whole.params[name])
        np.testing.assert_allclose(micro_params, whole_params, rtol=0, atol=atol, err_msg=name)
        # The parts learn: the runs are not compared standing still.
        moved = np.abs(whole_params - _leaves(initial[name]))
        assert np.median(moved) > 10 * atol, name
    for a, b in zip(whole_metrics, micro_metrics):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    # 3 train steps × 2 epochs × 2 mini-batches optimiser updates, for every part's optimiser.
    for state in (whole, micro):
        counts = otu.tree_get_all_with_path(state.opt_state, "count")
        assert len(counts) >= 2 and {int(c) for _, c in counts} == {12}, counts
