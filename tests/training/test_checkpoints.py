import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prm.training.checkpoints import (
    Checkpointer,
    IncompatibleCheckpointError,
    flatten_by_name,
    unflatten_by_name,
)


def _state(seed=0):
    params = {"layers": [{"kernel": jax.random.normal(jax.random.key(seed), (3, 4))}],
              "scale": jnp.ones(4)}  # fmt: skip
    return {
        "params": params,
        "opt_state": optax.adamw(1e-3).init(params),
        "step": jnp.int32(7),
        "rng": jax.random.PRNGKey(seed),
    }


def _equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def test_flatten_names_and_roundtrip():
    state = _state()
    flat = flatten_by_name(state)
    assert "params.layers.0.kernel" in flat and "opt_state.0.mu.scale" in flat
    assert _equal(unflatten_by_name(state, flat), state)


def test_save_restore_exact_and_keep_last(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"data": {"index": step}})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    restored, meta = ckpt.restore(3, _state(0))
    assert meta == {"data": {"index": 3}}
    assert _equal(restored, _state(3))
    ckpt.close()


def test_unfinished_save_is_never_latest(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=3)
    ckpt.save(1, _state(), {"data": {}})
    ckpt.wait()
    ckpt.close()
    # A save killed before orbax's atomic rename leaves only a temporary directory behind.
    os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-1234" / "state")
    assert Checkpointer(str(tmp_path)).latest_step() == 1


def test_incompatible_state_is_a_clear_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, _state(), {"data": {}})
    ckpt.wait()
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path))  # a fresh process only knows what is on disk
    wider = _state()
    wider["params"]["scale"] = jnp.ones(5)
    with pytest.raises(IncompatibleCheckpointError, match=r"params.scale.*\[4\].*\[5\]"):
        ckpt.restore(1, wider)
    extra = _state()
    extra["params"]["bias"] = jnp.ones(4)
    with pytest.raises(IncompatibleCheckpointError, match="missing.*params.bias"):
        ckpt.restore(1, extra)
    assert ckpt.all_steps() == [1]
