"""configs/sft.py: the default tiny policy's size, the options, and a smoke run end to end."""

import json
import os
import pathlib

import jax
import pytest
from flax import nnx

from configs import sft
from prm.envs.assets import load_world_assets, world_config_from
from prm.models import Transformer
from prm.trainers import sft as sft_trainer
from prm.training.loop import train
from prm.training.state import model_config_from


def test_default_policy_is_the_tiny_decoder():
    c = sft.get_config()
    model_config = model_config_from(c.model)
    model = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # Untied embedding and head 2·1024·128 = 262144; per layer q,k,v,o 4·128·128 = 65536,
    # q/k norms 2·32, MLP 3·128·384 = 147456, two norms 2·128: 213312; final norm 128.
    assert count == 262_144 + 2 * 213_312 + 128
    assert (c.data.name, c.data.seq_len, c.data.batch_size) == ("synthetic_demos", 256, 32)
    assert c.model.vocab_size == c.data.vocab_size == 1024
    assert model_config.max_position_embeddings >= c.data.seq_len + c.eval.qa.max_step_tokens


def test_options():
    assert sft.get_config("steps=50").total_steps == 50
    smoke = sft.get_config("smoke")
    assert smoke.total_steps < 10 and smoke.eval.qa.max_questions > 0
    with pytest.raises(ValueError, match="Unknown config option"):
        sft.get_config("lora")


def test_smoke_run_end_to_end(tmp_path, monkeypatch):
    config = sft.get_config("smoke")
    config.data.cache_dir = str(tmp_path / "worlds")
    workdir = str(tmp_path / "run")
    metrics = train(config, workdir)
    assert metrics["loss"] > 0 and os.path.isfile(os.path.join(workdir, "hf", "config.json"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "eval/qa/policy/all/em" in r]
    assert evals and evals[-1]["eval/qa/policy/all/n"] == config.eval.qa.max_questions
    assert 0.0 <= evals[-1]["eval/qa/expert/all/em"] <= 1.0
    table = pathlib.Path(workdir, "qa_test_step6.md").read_text()
    world = world_config_from(config.data.world)
    tokenizer = load_world_assets(world, config.data.cache_dir, config.data.vocab_size).tokenizer
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == sft.END_OF_TEXT_ID
    assert table.startswith("| group | n | policy EM | policy F1 | expert EM | expert F1 |")

    # The checkpoint exists now: asking for it again does not train.
    import prm.training.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a: pytest.fail("retrained"))
    assert sft_trainer.ensure_sft_checkpoint(workdir, config) == os.path.join(workdir, "hf")
