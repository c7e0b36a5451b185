"""The sampler on sharded parameters gives the same tokens and log-probs as on one device.

8 simulated CPU devices (tests/multidevice/conftest.py), parameters placed by the training
partition rules (`prm.training.sharding.shard_model`), two mesh shapes. Greedy tokens must be
identical; log-probs agree within 1e-5 (sharded matmuls sum in a different order).
"""

import jax
import numpy as np
import pytest
from flax import nnx

from prm.models import ModelConfig, Transformer
from prm.sampling import GREEDY, Sampler, SamplingParams
from prm.training.sharding import make_mesh, shard_model

pytestmark = pytest.mark.multidevice

CONFIG = ModelConfig(
    family="qwen2",
    vocab_size=96,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    attention_bias=True,
    eos_token_ids=(1,),
    pad_token_id=0,
)
PROMPTS = [[5, 9, 13, 17, 21], [7, 11], [30, 31, 32, 33, 34, 35, 36, 37]]


def sample(model: Transformer) -> tuple[list[list[int]], np.ndarray, list[list[int]], np.ndarray]:
    """A greedy step, forced tokens, then 4 sampled siblings per row: tokens and log-probs."""
    session = Sampler(model).start(PROMPTS)
    greedy = session.generate(6, sampling=GREEDY, stops=[[40, 41]])
    session.append([[50, 51], [], [52]])
    siblings = session.fork(4).generate(
        5, key=jax.random.key(3), sampling=SamplingParams(temperature=1.0, top_k=20)
    )
    return (
        greedy.token_lists(),
        np.asarray(greedy.logprobs),
        siblings.token_lists(),
        np.asarray(siblings.logprobs),
    )


@pytest.mark.parametrize(
    "mesh_shape", [{"data": 1, "fsdp": 2, "tensor": 4}, {"data": 2, "fsdp": 4, "tensor": 1}]
)
def test_sharded_sampling_matches_single_device(mesh_shape):
    reference = sample(Transformer(CONFIG, rngs=nnx.Rngs(0)))

    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    mesh = make_mesh(mesh_shape)
    with jax.set_mesh(mesh):
        shard_model(model, mesh)
        kernel = model.layers[0].mlp.up_proj.kernel[...]
        assert len({shard.device for shard in kernel.addressable_shards}) == 8
        sharded = sample(model)

    assert sharded[0] == reference[0]
    np.testing.assert_allclose(sharded[1], reference[1], atol=1e-5, rtol=1e-5)
    assert sharded[2] == reference[2]
    np.testing.assert_allclose(sharded[3], reference[3], atol=1e-5, rtol=1e-5)
