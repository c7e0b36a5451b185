"""Warm starts: named by their config, shipped ones used as they are, others trained once."""

import json
import os

import pytest

from configs import search_r1, sft, slate
from prm.envs.assets import load_world_assets
from prm.models import from_pretrained
from prm.training import loop
from prm.training.loop import SHIPPED_WARM_STARTS, ensure_warm_start, warm_start_name


def test_name_ignores_run_control_keys_only():
    config = sft.get_config()
    name = warm_start_name(config)
    config.progress, config.log_every = False, 7  # how the run is driven, not what it learns
    assert warm_start_name(config) == name
    config.optim.lr = 1e-3
    assert warm_start_name(config) != name


@pytest.mark.parametrize("rl_config", [search_r1.get_config, slate.get_config])
def test_default_rl_configs_start_from_the_shipped_sft_export(rl_config, monkeypatch):
    monkeypatch.setattr(loop, "train", lambda *a: pytest.fail("trained a shipped warm start"))
    warm_start = rl_config().warm_start
    export = ensure_warm_start(warm_start)
    assert export == os.path.join(SHIPPED_WARM_STARTS, warm_start_name(warm_start), "hf")
    model, config = from_pretrained(export)
    assert config.vocab_size == warm_start.model.vocab_size == 1024


def test_shipped_tokenizer_is_the_world_tokenizer_built_fresh(tmp_path):
    warm_start = slate.get_config().warm_start
    export = ensure_warm_start(warm_start)
    # A world built from scratch in an empty cache trains its BPE tokenizer again: it must be
    # the tokenizer the shipped policy was trained with, token for token.
    fresh = load_world_assets(cache_dir=str(tmp_path), vocab_size=warm_start.data.vocab_size)
    with open(os.path.join(export, "tokenizer.json")) as f:
        shipped = json.load(f)
    with open(fresh.path / "tokenizer" / "tokenizer.json") as f:
        built = json.load(f)
    assert shipped["model"]["vocab"] == built["model"]["vocab"]
    assert shipped["model"]["merges"] == built["model"]["merges"]
    assert shipped["added_tokens"] == built["added_tokens"]


def test_other_warm_starts_are_trained_once(tmp_path, monkeypatch):
    calls = []
    config = sft.get_config("smoke")
    config.optim.lr = 1.5e-3  # not shipped

    def fake_train(warm_start, directory):
        calls.append(directory)
        os.makedirs(os.path.join(directory, "hf"))
        open(os.path.join(directory, "hf", "config.json"), "w").close()

    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(loop, "train", fake_train)
    first = ensure_warm_start(config)
    assert first == str(tmp_path / "warm_starts" / warm_start_name(config) / "hf")
    assert ensure_warm_start(config) == first and len(calls) == 1
