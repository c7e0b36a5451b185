import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.toy import get_config
from prm.training.loop import Stepper, build_run
from prm.training.state import reference_mode
from tests.helpers.parts_config import get_config as parts_config

TOKENS = np.arange(24, dtype=np.int32).reshape(2, 12) % 64


def _smoke(reference="none", lora_rank=0):
    config = get_config("smoke")
    config.export_hf = False
    config.optim.warmup_steps = 0  # the first step already moves the policy
    config.reference = reference
    config.lora.rank = lora_rank
    return config


def _outputs(run, name, state=None):
    with jax.set_mesh(run.mesh):
        out = run.models(state)[name](TOKENS)
    return np.asarray(out[0] if isinstance(out, tuple) else out)


def _buffers(tree):
    return {leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)}


def _train(run, steps=2):
    stepper = Stepper(run)
    for step in range(1, steps + 1):
        stepper(step)


REFERENCE_MODES = [("none", 0, "none"), ("copy", 4, "copy"), ("auto", 0, "copy"),
                   ("auto", 4, "lora_off"), ("lora_off", 4, "lora_off")]  # fmt: skip


@pytest.mark.parametrize(("reference", "lora_rank", "mode"), REFERENCE_MODES)
def test_reference_mode(reference, lora_rank, mode):
    assert reference_mode(_smoke(reference, lora_rank)) == mode


def test_reference_mode_errors():
    with pytest.raises(ValueError, match="Unknown reference 'lopy'; choose one of"):
        reference_mode(_smoke("lopy"))
    with pytest.raises(ValueError, match=r"'lora_off' needs LoRA \(lora.rank > 0\); use 'copy'"):
        reference_mode(_smoke("lora_off"))


def test_copy_reference_is_the_frozen_initial_policy(tmp_path):
    run = build_run(_smoke("copy"), str(tmp_path))
    initial = _outputs(run, "policy")
    np.testing.assert_array_equal(_outputs(run, "reference"), initial)
    assert not run.state.params.get("reference")  # not trained
    assert not _buffers(run.frozen["reference"]) & _buffers(run.state.params["policy"])

    _train(run)  # donates the policy's buffers each update: the copy must not be among them
    run.checkpointer.close()
    np.testing.assert_array_equal(_outputs(run, "reference"), initial)
    assert np.abs(_outputs(run, "policy") - initial).max() > 1e-3


def test_lora_off_reference_is_the_base_model_and_shares_its_weights(tmp_path):
    run = build_run(_smoke("lora_off", lora_rank=4), str(tmp_path / "lora"))
    base_run = build_run(_smoke(), str(tmp_path / "base"))  # same seed, no adapters
    base = _outputs(base_run, "policy")
    base_run.checkpointer.close()

    # The base weights are the policy's frozen arrays themselves, not a copy of them.
    assert _buffers(run.frozen["reference"]) == _buffers(run.frozen["policy"])
    with jax.set_mesh(run.mesh):
        models = run.models()
    is_base = nnx.Not(nnx.LoRAParam)
    assert _buffers(nnx.state(models["reference"], is_base)) == _buffers(run.frozen["policy"])

    _train(run)
    run.checkpointer.close()
    np.testing.assert_allclose(_outputs(run, "reference"), base, atol=1e-6)
    # The policy's adapters did train: with them on, the outputs left the base model's.
    assert np.abs(_outputs(run, "policy") - base).max() > 1e-3


def _with_parts(config, **parts):
    config.parts = ml_collections.ConfigDict(
        {name: dict(zip(("init", "head", "lr"), part)) for name, part in parts.items()}
    )
    return config


def test_extra_parts_start_from_the_policy_or_from_scratch(tmp_path):
    config = _with_parts(
        _smoke(),
        twin=("policy", "lm", 0.0),
        fresh=("scratch", "lm", 0.0),
        value=("scratch", "scalar", 0.0),
    )
    run = build_run(config, str(tmp_path))
    run.checkpointer.close()
    assert set(run.parts) == {"policy", "twin", "fresh", "value"}
    assert set(run.state.params) == {"policy", "twin", "fresh", "value"}  # all trained
    policy = _outputs(run, "policy")
    np.testing.assert_array_equal(_outputs(run, "twin"), policy)
    assert not _buffers(run.state.params["twin"]) & _buffers(run.state.params["policy"])
    assert np.abs(_outputs(run, "fresh") - policy).max() > 1e-2
    values = _outputs(run, "value")
    assert values.shape == TOKENS.shape and not values.any()  # a zero-initialised head


def test_each_part_trains_with_its_own_learning_rate(tmp_path):
    # Adam's first update of a coordinate is lr · g/(|g| + eps) (bias correction makes
    # m̂ = g, v̂ = g²), so the largest change of a part is its learning rate.
    config = parts_config("smoke")  # loss: policy NLL + KL to the reference + value regression
    config.export_hf = False
    config.optim.update(schedule="constant", warmup_steps=0, weight_decay=0.0, lr=3e-3)
    config.parts.value.lr = 1e-4
    run = build_run(config, str(tmp_path))
    before = jax.device_get(run.state.params)
    _train(run, steps=1)
    run.checkpointer.close()
    after = jax.device_get(run.state.params)
    for name, lr in (("policy", 3e-3), ("value", 1e-4)):
        changes = jax.tree.map(lambda a, b: np.abs(a - b).max(), after[name], before[name])
        np.testing.assert_allclose(max(jax.tree.leaves(changes)), lr, rtol=1e-3, err_msg=name)


BAD_PARTS = [
    ({"reference": ("policy", "lm", 0.0)}, "Part name 'reference' is taken"),
    (
        {"value": ("policy", "value", 0.0)},
        "config.parts.value: init must be one of .* head='value'",
    ),
]


@pytest.mark.parametrize(("parts", "error"), BAD_PARTS)
def test_bad_parts_are_clear_errors(tmp_path, parts, error):
    with pytest.raises(ValueError, match=error):
        build_run(_with_parts(_smoke("copy"), **parts), str(tmp_path))
