"""configs/rest_mcts.py options."""

import pytest

from configs.rest_mcts import get_config


def test_config_options():
    assert get_config("smoke").self_train.iterations == 1
    assert get_config("iterations=3").self_train.iterations == 3
    with pytest.raises(ValueError, match="Unknown config option"):
        get_config("bogus=1")
