import pytest

from configs import toy
from configs.common import base_config, model_config, parse_arg


def test_parse_arg_types_and_flags():
    opts = parse_arg("smoke,steps=7,lr=0.5,name=tiny", smoke=False, steps=100, lr=1.0, name="x")
    assert (opts.smoke, opts.steps, opts.lr, opts.name) == (True, 7, 0.5, "tiny")
    assert parse_arg(None, smoke=False).smoke is False
    assert parse_arg("smoke=false", smoke=True).smoke is False


def test_parse_arg_errors_list_valid_options():
    with pytest.raises(ValueError, match=r"Unknown config option 'smok'; valid options are lr=1"):
        parse_arg("smok", lr=1)
    with pytest.raises(ValueError, match="needs a value"):
        parse_arg("steps", steps=1)
    with pytest.raises(ValueError, match="is a bool"):
        parse_arg("smoke=maybe", smoke=False)


def test_configs_are_locked_against_typos():
    c = base_config()
    c.lock()
    with pytest.raises(AttributeError, match="lrr"):
        c.optim.lrr = 1.0
    with pytest.raises(ValueError, match="Unknown model size"):
        model_config("qwen3", "huge")


def test_toy_options_change_several_fields():
    smoke, lora = toy.get_config("smoke"), toy.get_config("lora,model=small,family=llama")
    assert smoke.total_steps < toy.get_config().total_steps and not smoke.progress
    assert (lora.lora.rank, lora.lora.alpha, lora.model.family) == (16, 64.0, "llama")
    assert lora.model.hidden_size == 256
