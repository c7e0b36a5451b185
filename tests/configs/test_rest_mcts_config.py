"""configs/rest_mcts.py options."""

import pytest

from configs.rest_mcts import get_config


def test_config_options():
    assert get_config("smoke").self_train.iterations == 1
    assert get_config("iterations=3").self_train.iterations == 3
    with pytest.raises(ValueError, match="Unknown config option"):
        get_config("bogus=1")


def test_trace_source_and_fit_length_options():
    config = get_config("traces=sampling,samples=8,epochs=2")
    assert config.self_train.traces == "sampling"
    assert config.self_train.samples_per_problem == 8
    assert config.self_train.epochs == 2.0
    assert get_config().self_train.policy_steps == 0  # epochs decide by default
    assert get_config("policy_steps=60").self_train.policy_steps == 60
    with pytest.raises(ValueError, match="traces='beam': use one of mcts, sampling"):
        get_config("traces=beam")


def test_self_training_defaults_do_not_collapse_the_policy():
    # docs/RESULTS.md: 96 training problems, epochs, and a fine-tuning rate well below SFT's.
    config = get_config()
    assert (config.problems.train, config.problems.test) == (96, 64)
    assert config.self_train.policy_lr == 1e-4 < config.warm_start.optim.lr
    assert get_config("policy_lr=0.001").self_train.policy_lr == 1e-3
