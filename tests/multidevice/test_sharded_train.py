"""A sharded train step computes the same numbers as one device (8 simulated CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs.toy import get_config
from prm.training.loop import Stepper, build_run
from prm.training.sharding import constrain, make_mesh

NUM_STEPS = 3


def _config(mesh_shape):
    config = get_config("smoke")
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    return config


def _train(mesh_shape, devices, workdir):
    run = build_run(_config(mesh_shape), str(workdir), devices=devices)
    stepper = Stepper(run)
    losses = [stepper(step) for step in range(1, NUM_STEPS + 1)]
    run.checkpointer.close()
    return run, losses


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    return _train((1, 1, 1), jax.devices()[:1], tmp_path_factory.mktemp("one"))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_steps_match_one_device(mesh_shape, single_device, tmp_path):
    assert jax.device_count() == 8
    reference_run, reference = single_device
    run, metrics = _train(mesh_shape, jax.devices(), tmp_path)
    # Float32 sums are reordered across shards: agreement to ~1e-5 relative, not bitwise.
    for got, want in zip(metrics, reference):
        for name in ("loss", "grad_norm", "accuracy"):
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, err_msg=name)
    got_params = jax.device_get(run.state.params)
    want_params = jax.device_get(reference_run.state.params)
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_parameters_and_moments_are_sharded_by_the_rules(tmp_path):
    run = build_run(_config((2, 2, 2)), str(tmp_path))
    run.checkpointer.close()
    q_kernel = run.state.params["policy"]["layers"][0]["attn"]["q_proj"]["kernel"][...]
    assert q_kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert len(q_kernel.addressable_shards) == 8
    assert q_kernel.addressable_shards[0].data.shape == (32, 32)  # [64, 64] over fsdp=2, tensor=2
    adam = run.state.opt_state.inner_states["policy"].inner_state[1][0]
    mu = adam.mu["policy"]["layers"][0]["attn"]["q_proj"]["kernel"][...]
    assert mu.sharding.spec == PartitionSpec("fsdp", "tensor")


def test_constrain_shards_activations_on_a_cpu_mesh():
    mesh = make_mesh({"data": -1})
    x = np.arange(16.0).reshape(8, 2)
    with jax.set_mesh(mesh):
        y = jax.jit(lambda v: constrain(v * 2, PartitionSpec("data")))(x)
    assert y.sharding.spec == PartitionSpec("data")
    np.testing.assert_array_equal(y, 2 * x)
