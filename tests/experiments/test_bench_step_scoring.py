"""experiments/bench_step_scoring.py: scoring each step prefix with its own forward gives the
same step rewards as prm's one forward pair (so the benchmark compares equal work products)."""

import numpy as np
from flax import nnx

from experiments.bench_step_scoring import per_prefix_step_rewards, rows_with_steps
from prm.models import Transformer
from prm.trainers.implicit_prm import implicit_step_rewards
from tests.helpers.tiny_models import tiny_config


def test_per_prefix_scoring_equals_one_forward_pair():
    config = tiny_config("qwen3")
    prm, reference = Transformer(config, rngs=nnx.Rngs(0)), Transformer(config, rngs=nnx.Rngs(1))
    tokens, input_mask, step_id = rows_with_steps(batch=3, prompt=4, steps=3, step_tokens=3, seed=0)
    tokens = tokens % config.vocab_size
    step_id[2, 7:10] = -1  # row 2: an observation inside step 1 (scored by neither side)
    one, present = implicit_step_rewards(prm, reference, tokens, input_mask, step_id, 0.05, 3)
    per = per_prefix_step_rewards(prm, reference, tokens, input_mask, step_id, 0.05, 3)
    np.testing.assert_allclose(np.asarray(one), per, atol=2e-6)
    # Row 1 stops a step early: its last step is absent and 0 on both sides.
    np.testing.assert_array_equal(np.asarray(present)[1], [True, True, False])
    assert per[1, 2] == 0.0 and np.abs(per).min(where=np.asarray(present), initial=1) > 0
