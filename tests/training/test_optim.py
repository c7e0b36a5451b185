import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from prm.training.optim import (
    make_optimizer,
    make_part_optimizer,
    make_schedule,
    trainable_filter,
    updates_per_step,
)


def _optim(**overrides):
    c = dict(lr=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, schedule="constant",
             warmup_steps=0, min_lr_ratio=0.0, grad_clip_norm=0.0, freeze=())  # fmt: skip
    c.update(overrides)
    return ml_collections.ConfigDict(c)


def test_warmup_then_cosine_by_hand():
    s = make_schedule(1.0, "cosine", warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    # warmup: step/4; cosine over 8 steps: 0.1 + 0.9 * (1 + cos(pi * k / 8)) / 2.
    assert np.isclose(s(2), 0.5)
    assert np.isclose(s(4), 1.0)
    assert np.isclose(s(8), 0.1 + 0.9 * 0.5)
    assert np.isclose(s(12), 0.1)


def test_linear_and_constant_by_hand():
    lin = make_schedule(2.0, "linear", warmup_steps=0, total_steps=10, min_lr_ratio=0.0)
    assert np.isclose(lin(5), 1.0)  # 2 * (1 - 5/10)
    const = make_schedule(2.0, "constant", warmup_steps=2, total_steps=10)
    assert np.isclose(const(1), 1.0) and np.isclose(const(7), 2.0)


def test_bad_schedule_and_warmup():
    with pytest.raises(ValueError, match="valid schedules"):
        make_schedule(1.0, "step", 0, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule(1.0, "constant", 11, 10)


def test_weight_decay_only_on_matrices():
    # Zero gradients: Adam's update is 0, so AdamW moves p by -lr * wd * p on decayed leaves only.
    tx, _ = make_optimizer(_optim(weight_decay=0.5), total_steps=10)
    params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    grads = {"kernel": jnp.zeros((2, 2)), "scale": jnp.zeros((2,))}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["scale"], 0.0)


def test_global_norm_clipping():
    # |g| = 5 clipped to 1 -> first Adam step is lr * g_hat / |g_hat| per coordinate = lr * sign.
    tx, _ = make_optimizer(_optim(grad_clip_norm=1.0, b1=0.0, b2=0.0), total_steps=10)
    params = {"w": jnp.zeros((2,))}
    clip_only = optax.clip_by_global_norm(1.0)
    clipped, _ = clip_only.update({"w": jnp.array([3.0, 4.0])}, clip_only.init(params))
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
    updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1, -0.1], rtol=1e-5)


class _Net(nnx.Module):
    def __init__(self):
        self.embed = nnx.Embed(4, 2, rngs=nnx.Rngs(0))
        self.head = nnx.Linear(2, 2, rngs=nnx.Rngs(0))


def test_trainable_filter_freezes_by_regex():
    trainable, frozen = nnx.state(_Net(), trainable_filter(freeze=(r"^embed\.",)), ...)
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
    assert names == {"head.kernel", "head.bias"}
    assert {".".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen)} == {"embed.embedding"}


def _part_config(**parts):
    return ml_collections.ConfigDict(
        {"total_steps": 10, "optim": _optim(),
         "parts": {name: {"init": "scratch", "head": "lm", "lr": lr} for name, lr in parts.items()}}
    )  # fmt: skip


def test_updates_per_step():
    config = _part_config()
    assert updates_per_step(config) == 1  # no `update` block: one update on the whole batch
    config.updates = ml_collections.ConfigDict(
        {"ppo_epochs": 2, "num_mini_batches": 3, "micro_batch_size": 4, "shuffle": True}
    )
    assert updates_per_step(config) == 6


def test_part_optimizer_gives_each_part_its_learning_rate():
    # First Adam step: lr · g/(|g| + eps) = lr · sign(g) for |g| >> eps, whatever |g|.
    tx, _ = make_part_optimizer(_part_config(value=0.01, twin=0.0))
    params = {"policy": jnp.zeros(3), "value": jnp.zeros(2), "twin": jnp.zeros(2)}
    grads = {"policy": jnp.array([1.0, -5.0, 0.5]), "value": jnp.array([2.0, -0.1]),
             "twin": jnp.array([3.0, 4.0])}  # fmt: skip
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["policy"], [-0.1, 0.1, -0.1], rtol=1e-5)
    np.testing.assert_allclose(updates["value"], [-0.01, 0.01], rtol=1e-5)
    np.testing.assert_allclose(updates["twin"], [-0.1, -0.1], rtol=1e-5)  # lr 0: optim.lr


def test_part_optimizer_schedule_counts_optimizer_updates():
    config = _part_config()
    config.optim.update(schedule="linear", warmup_steps=4)
    _, schedule = make_part_optimizer(config, updates_per_train_step=4)
    # 10 train steps × 4 updates: warmup over updates 0..4, then linear decay to 0 at 40.
    assert np.isclose(schedule(2), 0.05) and np.isclose(schedule(4), 0.1)
    assert np.isclose(schedule(22), 0.05) and np.isclose(schedule(40), 0.0)
