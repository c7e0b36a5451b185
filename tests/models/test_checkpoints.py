"""HF safetensors load/save: round trips, transformers compatibility and clear errors."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from prm.models import ModelConfig, Transformer, from_pretrained, save_pretrained
from prm.models.checkpoints import key_map
from tests.helpers.tiny_models import FAMILIES, make_tiny_checkpoint, tiny_config


def _params(model: Transformer) -> dict[str, np.ndarray]:
    return {
        ".".join(map(str, path)): np.asarray(variable[...])
        for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def _assert_same_params(a: Transformer, b: Transformer) -> None:
    params_a, params_b = _params(a), _params(b)
    assert params_a.keys() == params_b.keys()
    for name, value in params_a.items():
        assert value.dtype == params_b[name].dtype, name
        np.testing.assert_array_equal(value, params_b[name], err_msg=name)


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("max_shard_bytes", [2**30, 40_000])
def test_save_load_round_trip(tmp_path, param_dtype, max_shard_bytes):
    config = tiny_config("qwen2", param_dtype=param_dtype, dtype=param_dtype)
    model = Transformer(config, rngs=nnx.Rngs(1))
    save_pretrained(model, config, tmp_path, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes < 2**30)
    loaded, loaded_config = from_pretrained(tmp_path, param_dtype=param_dtype)
    assert loaded_config == config
    _assert_same_params(model, loaded)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_saved_checkpoint(tmp_path, family):
    """A prm-initialised model saved by prm gives the same logits in transformers."""
    config = tiny_config(family)
    model = Transformer(config, rngs=nnx.Rngs(2))
    save_pretrained(model, config, tmp_path, max_shard_bytes=60_000)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = np.random.default_rng(0).integers(0, 259, (2, 6))
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(ids)).logits.numpy()
    logits, _ = nnx.jit(lambda m, i: m(i))(model, ids)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_checkpoint_loads_exactly(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "qwen3", with_tokenizer=False)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(path)
    bf16_path = tmp_path / "bf16"
    torch_model.to(torch.bfloat16).save_pretrained(bf16_path)
    model, config = from_pretrained(bf16_path, param_dtype=jnp.float32)
    assert config.param_dtype == jnp.float32
    expected = torch_model.model.layers[1].self_attn.q_proj.weight.float().detach().numpy()
    np.testing.assert_array_equal(model.layers[1].attn.q_proj.kernel[...], expected.T)
    model_bf16, _ = from_pretrained(bf16_path, param_dtype=jnp.bfloat16)
    assert model_bf16.embed.embedding[...].dtype == jnp.bfloat16


def test_sharding_fn_places_each_parameter(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
    device = jax.devices()[0]
    calls = []

    def sharding_fn(param_path, shape, dtype):
        calls.append((param_path, shape, dtype))
        return jax.sharding.SingleDeviceSharding(device)

    model, config = from_pretrained(path, sharding_fn=sharding_fn)
    params = _params(model)
    assert sorted(name for name, _, _ in calls) == sorted(params)
    for name, shape, dtype in calls:
        assert params[name].shape == shape and dtype == jnp.float32
    assert model.lm_head.kernel[...].sharding == jax.sharding.SingleDeviceSharding(device)


def test_key_map_covers_every_parameter_once():
    for family in FAMILIES:
        for tied in (True, False):
            config = tiny_config(family, tie_word_embeddings=tied)
            paths = [path for path, _ in key_map(config).values()]
            model = nnx.eval_shape(lambda c=config: Transformer(c, rngs=nnx.Rngs(0)))
            assert sorted(paths) == sorted(_params_abstract(model))


def _params_abstract(model: Transformer) -> list[str]:
    return [".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def _rewrite(path, edit) -> None:
    """Applies `edit(tensors)` to the single-file checkpoint at `path`."""
    file = path / "model.safetensors"
    tensors = dict(safetensors.numpy.load_file(file))
    edit(tensors)
    safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})


def test_unknown_tensor_is_an_error(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "qwen2", with_tokenizer=False)
    _rewrite(path, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"Unexpected tensor 'model.layers.0.mlp.extra.weight'"):
        from_pretrained(path)


def test_missing_tensor_is_an_error(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "qwen2", with_tokenizer=False)
    _rewrite(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match=r"lacks tensors \['model.layers.1.self_attn.k_proj.bias'"):
        from_pretrained(path)


def test_shape_mismatch_is_an_error(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
    hf = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**hf, "intermediate_size": 80}))
    with pytest.raises(
        ValueError,
        match=r"'model.layers.0.mlp.\w+_proj.weight' .* shape \(\d+, \d+\); config.json implies",
    ):
        from_pretrained(path)


def test_tied_checkpoint_with_lm_head(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "qwen3", with_tokenizer=False)
    _rewrite(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
    model, _ = from_pretrained(path)  # an lm_head equal to the embedding is redundant
    assert model.lm_head is None
    _rewrite(path, lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1}))
    with pytest.raises(ValueError, match="lm_head.weight .* differs"):
        from_pretrained(path)


def test_rotary_inv_freq_buffers_are_skipped(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)
    inv_freq = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}
    _rewrite(path, lambda t: t.update(inv_freq))
    from_pretrained(path)


def test_missing_weights_file_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("qwen2").to_hf()))
    with pytest.raises(FileNotFoundError, match="No model.safetensors"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trips_through_hf_dict(family):
    config = tiny_config(family)
    assert ModelConfig.from_hf(config.to_hf()) == config
    # transformers parses our dict into the same architecture (head_dim, rope, bias switches).
    reparsed = transformers.AutoConfig.for_model(**config.to_hf()).to_dict()
    assert ModelConfig.from_hf(reparsed) == config


def test_config_reads_transformers4_rope_layout():
    hf = tiny_config("llama").to_hf()
    del hf["rope_parameters"]
    hf["rope_scaling"] = {**hf["rope_scaling"], "type": hf["rope_scaling"].pop("rope_type")}
    hf["eos_token_id"] = [256, 257]
    config = ModelConfig.from_hf(hf)
    assert config.rope_scaling == tiny_config("llama").rope_scaling
    assert config.rope_theta == 500_000.0 and config.eos_token_ids == (256, 257)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mistral"}, "Unsupported model_type 'mistral'"),
        ({"architectures": ["Qwen2ForSequenceClassification"]}, "Unsupported architecture"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "Unsupported rope type"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_config_rejects_unsupported_architectures(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf({**tiny_config("qwen2").to_hf(), **change})


def _saved(tmp_path, **save_kwargs):
    """A tiny qwen2 checkpoint written by prm's save_pretrained."""
    config = tiny_config("qwen2")
    save_pretrained(Transformer(config, rngs=nnx.Rngs(0)), config, tmp_path, **save_kwargs)
    return tmp_path


def _parse(file):
    """(tensor entries, data start) read straight from the format: u64 length, JSON, data."""
    raw = file.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header.pop("__metadata__")
    return header, 8 + length


def test_truncated_file_names_the_file_and_the_tensor_cut(tmp_path):
    file = _saved(tmp_path) / "model.safetensors"
    header, data_start = _parse(file)
    # Cut 10 bytes into the tensor that starts in the middle of the data section.
    starts = sorted((entry["data_offsets"][0], key) for key, entry in header.items())
    start, key = starts[len(starts) // 2]
    cut = data_start + start + 10
    os.truncate(file, cut)
    end = data_start + header[key]["data_offsets"][1]
    expected = f"tensor {key!r} ends at byte {end} but the file has {cut} bytes (truncated"
    with pytest.raises(ValueError, match=re.escape(f"{file}: {expected}")) as error:
        from_pretrained(tmp_path)
    assert "re-download or re-export" in str(error.value)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: b"", r"0 bytes, too short for a safetensors file"),
        (lambda raw: raw[:100], r"the header claims \d+ bytes but the file has 100 bytes"),
        (lambda raw: raw[:8] + b"\xff" * 16 + raw[24:], r"the header is not valid JSON"),
        (lambda raw: b"<!DOCTYPE html>" + raw[15:], r"the header claims \d+ bytes"),  # error page
    ],
    ids=["empty", "cut-in-header", "garbage-header", "html"],
)
def test_corrupt_header_is_one_error_naming_the_file(tmp_path, corrupt, message):
    file = _saved(tmp_path) / "model.safetensors"
    file.write_bytes(corrupt(file.read_bytes()))
    with pytest.raises(ValueError, match=f"{re.escape(str(file))}: {message}"):
        from_pretrained(tmp_path)


def test_header_entry_disagreeing_with_its_bytes_is_an_error(tmp_path):
    file = _saved(tmp_path) / "model.safetensors"
    header, data_start = _parse(file)
    key = "model.norm.weight"  # F32 [hidden_size]
    header[key]["shape"] = [header[key]["shape"][0] + 1]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (data_start - 8 - len(text))  # same length: the data section does not move
    assert len(text) == data_start - 8
    raw = file.read_bytes()
    file.write_bytes(raw[:8] + text + raw[data_start:])
    hidden = tiny_config("qwen2").hidden_size
    start, end = header[key]["data_offsets"]
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"tensor {key!r} (F32, shape [{hidden + 1}]) needs {4 * (hidden + 1)} bytes but its "
            f"data_offsets [{start}, {end}] hold {4 * hidden}"
        ),
    ):
        from_pretrained(tmp_path)


def test_missing_shard_is_named(tmp_path):
    _saved(tmp_path, max_shard_bytes=40_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(FileNotFoundError, match=f"lists {shards[-1].name}, missing from"):
        from_pretrained(tmp_path)
