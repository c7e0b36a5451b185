"""configs/toy.py: its options change several fields at once."""

from configs import toy


def test_toy_options_change_several_fields():
    smoke, lora = toy.get_config("smoke"), toy.get_config("lora,model=small,family=llama")
    assert smoke.total_steps < toy.get_config().total_steps and not smoke.progress
    assert (lora.lora.rank, lora.lora.alpha, lora.model.family) == (16, 64.0, "llama")
    assert lora.model.hidden_size == 256
