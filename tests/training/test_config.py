"""prm.training.config: loading config files, the option parser, and the shared blocks."""

import os

import pytest
from ml_collections.config_flags import config_path

from prm.training.config import ConfigFileError, base_config, load_config, model_config, parse_arg
from prm.training.update import DEFAULT_UPDATES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OWN_CONFIG = """
from prm.training.config import base_config, parse_arg

def get_config(arg=None):
    opts = parse_arg(arg, steps=5)
    c = base_config()
    c.total_steps = opts.steps
    return c
"""


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
    with pytest.raises(ValueError, match=r"'smoke' is a bool \(true or false\); got 'maybe'"):
        parse_arg("smoke=maybe", smoke=False)
    with pytest.raises(ValueError, match=r"'steps' is of type int \(default 600\); got 'abc'"):
        parse_arg("steps=abc", steps=600)


def test_configs_are_locked_against_typos():
    c = base_config()
    c.lock()
    with pytest.raises(AttributeError, match="lrr"):
        c.optim.lrr = 1.0
    with pytest.raises(ValueError, match="Unknown model size"):
        model_config("qwen3", "huge")


def test_load_config_from_any_directory_with_options_and_home(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(OWN_CONFIG)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir("/")
    config = load_config("~/mine.py:steps=3")
    assert config.total_steps == 3 and config.is_locked
    assert load_config(f"{tmp_path}/mine.py").total_steps == 5
    with pytest.raises(ConfigFileError, match=r"~/mine.py:stepz=3: Unknown config option 'stepz'"):
        load_config("~/mine.py:stepz=3")


def test_missing_config_file_lists_the_configs_next_to_it(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigFileError) as error:
        load_config("configs/nope.py:smoke")
    configs = sorted(
        f"configs/{name}"
        for name in os.listdir(os.path.join(ROOT, "configs"))
        if name.endswith(".py") and name not in ("__init__.py", "common.py")
    )
    assert "configs/toy.py" in configs
    assert str(error.value) == (
        f"Config file configs/nope.py does not exist (relative to the current directory, {ROOT})."
        f" Config files there: {', '.join(configs)}."
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "from lab_configs.common import base_config\n",
            r"No module named 'lab_configs'.*in a project of your own, import the helpers from "
            r"prm.training.config",
        ),
        ("x = 1\n", r"defines no get_config\(arg=None\)"),
        ("def get_config(arg=None):\n    return {}\n", r"get_config returned dict, not an ml_"),
    ],
    ids=["failed-import", "no-get-config", "not-a-config-dict"],
)
def test_broken_config_files_are_one_error_naming_the_file(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text(text)
    with pytest.raises(ConfigFileError, match=f"^broken.py.*{message}"):
        load_config("broken.py")


def test_base_config_has_the_rl_blocks_with_the_loop_defaults():
    c = base_config()
    assert c.reference == "none" and not c.parts and not c.warm_start
    assert c.updates.to_dict() == DEFAULT_UPDATES


def _leaves(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_base_config_key_can_be_overridden_on_the_command_line():
    # `--config.a.b=v` resolves a.b with config_flags' path lookup: attribute first, then item
    # (a block named like a ConfigDict method, e.g. `update`, would reach the method instead).
    c = base_config()
    c.lock()
    for path, value in _leaves(c):
        assert config_path.get_value(path, c) == value, path
