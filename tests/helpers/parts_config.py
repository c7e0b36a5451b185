"""Config file of a toy run with a frozen reference and a trainable value part, for tests that
drive `python -m experiments.train` in a subprocess (the trainer registers on import):

    python -m experiments.train --config=tests/helpers/parts_config.py:smoke --workdir=/tmp/parts

Options are those of `configs/toy.py`; `lora` gives a LoRA-off reference ("auto").
"""

from __future__ import annotations

import ml_collections

import tests.helpers.parts_trainer  # noqa: F401 - registers "test_policy_with_value"
from configs.toy import get_config as toy_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = toy_config(arg)
    c.trainer = "test_policy_with_value"
    c.reference = "auto"
    c.parts = ml_collections.ConfigDict(
        {"value": {"init": "scratch", "head": "scalar", "lr": 1e-3}}
    )
    return c
