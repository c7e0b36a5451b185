"""prm.models on an 8-device (fsdp=2, tp=4) CPU mesh: sharded loading and sharded forward."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prm.models import KVCache, from_pretrained
from tests.helpers.tiny_models import make_tiny_checkpoint

pytestmark = pytest.mark.multidevice

# Megatron-style: column-parallel in-projections, row-parallel out-projections.
_COLUMN = ("q_proj.kernel", "k_proj.kernel", "v_proj.kernel", "gate_proj.kernel", "up_proj.kernel")


def _spec(param_path: str) -> P:
    if param_path.endswith(_COLUMN) or param_path == "lm_head.kernel":
        return P("fsdp", "tp")
    if param_path.endswith(("o_proj.kernel", "down_proj.kernel")) or param_path.endswith(
        "embedding"
    ):
        return P("tp", "fsdp")
    return P()


def test_sharded_load_matches_single_device(tmp_path):
    mesh = jax.make_mesh((2, 4), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    path = make_tiny_checkpoint(tmp_path, "qwen2", with_tokenizer=False)
    sharded, config = from_pretrained(
        path, sharding_fn=lambda p, shape, dtype: NamedSharding(mesh, _spec(p))
    )
    reference, _ = from_pretrained(path)
    q_kernel = sharded.layers[0].attn.q_proj.kernel[...]
    assert q_kernel.sharding == NamedSharding(mesh, P("fsdp", "tp"))
    assert len(q_kernel.addressable_shards) == 8
    assert q_kernel.addressable_shards[0].data.shape == (32, 16)  # [64, 64] over (2, 4)

    ids = np.random.default_rng(0).integers(0, 259, (4, 6)).astype(np.int32)
    forward = nnx.jit(lambda m, x, mask=None, cache=None: m(x, mask, cache))
    with jax.set_mesh(mesh):
        logits, _ = forward(sharded, ids)
        cache = KVCache.init(config, 4, max_len=8)
        prefill, cache = forward(sharded, ids[:, :5], None, cache)
        step, cache = forward(sharded, ids[:, 5:], None, cache)
    expected, _ = forward(reference, ids)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(step[:, 0], expected[:, 5], atol=1e-5, rtol=1e-5)
