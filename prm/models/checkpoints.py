"""Hugging Face checkpoints <-> `Transformer`: safetensors load and save, tensor by tensor.

A checkpoint dir holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json`. The tokenizer lives in the same dir and is loaded with
`transformers.AutoTokenizer.from_pretrained(path)`; `save_pretrained` writes only weights and
config (save a tokenizer with `tokenizer.save_pretrained(path)`).

Safetensors files are read through their header and `np.memmap`: every dtype, bfloat16 included
(numpy has none; `ml_dtypes` supplies it), comes back as a zero-copy view of the file, so a tensor
is copied once, onto its device (or its `sharding_fn` sharding), and a 7B checkpoint never sits
twice in host memory. (`safetensors.safe_open(framework="numpy")` rejects bfloat16 tensors.)
"""

from __future__ import annotations

import json
import math
import pathlib
import struct
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from prm.models.config import ModelConfig
from prm.models.transformer import Transformer

ShardingFn = Callable[[str, tuple[int, ...], Any], jax.sharding.Sharding | None]

# HF key -> prm parameter path, and whether the tensor is transposed (torch Linear stores
# [out, in]; nnx.Linear kernels are [in, out]). "{i}" is the layer index.
COMMON_KEYS: tuple[tuple[str, str, bool], ...] = (
    ("model.embed_tokens.weight", "embed.embedding", False),
    ("model.norm.weight", "final_norm.scale", False),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.input_norm.scale", False),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.post_attn_norm.scale", False),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.attn.q_proj.kernel", True),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.attn.k_proj.kernel", True),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.attn.v_proj.kernel", True),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attn.o_proj.kernel", True),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.gate_proj.kernel", True),
    ("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.mlp.up_proj.kernel", True),
    ("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.mlp.down_proj.kernel", True),
)
FAMILY_KEYS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "qwen2": (
        ("model.layers.{i}.self_attn.q_proj.bias", "layers.{i}.attn.q_proj.bias", False),
        ("model.layers.{i}.self_attn.k_proj.bias", "layers.{i}.attn.k_proj.bias", False),
        ("model.layers.{i}.self_attn.v_proj.bias", "layers.{i}.attn.v_proj.bias", False),
    ),
    "qwen3": (
        ("model.layers.{i}.self_attn.q_norm.weight", "layers.{i}.attn.q_norm.scale", False),
        ("model.layers.{i}.self_attn.k_norm.weight", "layers.{i}.attn.k_norm.scale", False),
    ),
    "llama": (),
}
UNTIED_KEYS = (("lm_head.weight", "lm_head.kernel", True),)
# Buffers some older checkpoints carry; recomputed from the config, so safe to skip.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
_INDEX_FILE = "model.safetensors.index.json"
_SINGLE_FILE = "model.safetensors"
_REDO = "re-download or re-export the checkpoint"


def key_map(config: ModelConfig) -> dict[str, tuple[str, bool]]:
    """HF key -> (prm parameter path, transposed) for every tensor of `config`'s checkpoint."""
    table = COMMON_KEYS + FAMILY_KEYS[config.family]
    if not config.tie_word_embeddings:
        table += UNTIED_KEYS
    mapping = {}
    for hf_key, path, transposed in table:
        layers = range(config.num_layers) if "{i}" in hf_key else [None]
        for i in layers:
            mapping[hf_key.format(i=i)] = (path.format(i=i), transposed)
    return mapping


def read_safetensors_header(file: pathlib.Path) -> tuple[dict[str, Any], int]:
    """(header without `__metadata__`, byte offset of the data section) of a safetensors file.

    The header is checked against the file before any tensor is read: a truncated download, a
    file that is not safetensors, or an entry whose dtype, shape and byte range disagree is one
    `ValueError` naming the file (and the tensor), not a reshape error deep inside numpy.
    """
    size = file.stat().st_size
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(
                f"{file}: {size} bytes, too short for a safetensors file (it starts with an 8-byte "
                f"header length); {_REDO}."
            )
        (header_size,) = struct.unpack("<Q", prefix)
        if 8 + header_size > size:
            raise ValueError(
                f"{file}: the header claims {header_size} bytes but the file has {size} bytes "
                f"(truncated download, or not a safetensors file?); {_REDO}."
            )
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{file}: the header is not valid JSON ({error}); the file is corrupt or not "
                f"safetensors; {_REDO}."
            ) from None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: the header is not a JSON object; {_REDO}.")
    header.pop("__metadata__", None)
    data_start = 8 + header_size
    ends = {key: _tensor_end(file, key, info) for key, info in header.items()}
    # In byte order, so a truncated file names the tensor the cut falls in.
    for key, end in sorted(ends.items(), key=lambda item: item[1]):
        if data_start + end > size:
            raise ValueError(
                f"{file}: tensor {key!r} ends at byte {data_start + end} but the file has {size} "
                f"bytes (truncated download?); {_REDO}."
            )
    return header, data_start


def _tensor_end(file: pathlib.Path, key: str, info: Any) -> int:
    """The end offset of a header entry, after checking its dtype, shape and byte range agree."""
    try:
        dtype, shape, (start, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        if not all(isinstance(x, int) and x >= 0 for x in (*shape, start, end)):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{file}: tensor {key!r} has a malformed header entry {info!r} (expected dtype, shape "
            f"and data_offsets); {_REDO}."
        ) from None
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"Unsupported dtype {dtype} of tensor {key!r} in {file}.")
    nbytes = math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize
    if end - start != nbytes:
        raise ValueError(
            f"{file}: tensor {key!r} ({dtype}, shape {shape}) needs {nbytes} bytes but its "
            f"data_offsets [{start}, {end}] hold {end - start}; the header is corrupt; {_REDO}."
        )
    return end


def iter_safetensors(file: pathlib.Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (key, zero-copy read-only view) for each tensor of a safetensors file."""
    header, data_start = read_safetensors_header(file)
    data = np.memmap(file, dtype=np.uint8, mode="r", offset=data_start)
    for key, info in header.items():
        start, end = info["data_offsets"]
        view = data[start:end].view(_SAFETENSORS_DTYPES[info["dtype"]])
        yield key, view.reshape(info["shape"])


def write_safetensors(file: pathlib.Path, tensors: dict[str, tuple[jax.Array, bool]]) -> int:
    """Writes `{key: (array, transposed)}` as a safetensors file; returns the data size in bytes.

    Arrays are fetched to the host one at a time, so at most one tensor is in host memory.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, (array, transposed) in tensors.items():
        shape = array.shape[::-1] if transposed else array.shape
        size = math.prod(shape) * np.dtype(array.dtype).itemsize
        header[key] = {
            "dtype": _SAFETENSORS_NAMES[np.dtype(array.dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format aligns data to 8 bytes
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for array, transposed in tensors.values():
            host = np.asarray(jax.device_get(array))
            f.write(np.ascontiguousarray(host.T if transposed else host).view(np.uint8).data)
    return offset


def save_pretrained(
    model: Transformer,
    config: ModelConfig,
    path: str | pathlib.Path,
    *,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Writes `config.json` and HF-named safetensors weights that transformers and vLLM load.

    Weights keep their `param_dtype`. Above `max_shard_bytes` the weights are split into
    `model-0000k-of-0000n.safetensors` files listed in `model.safetensors.index.json`.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = _flat_params(model)
    shards: list[dict[str, tuple[jax.Array, bool]]] = [{}]
    shard_bytes = 0
    for hf_key, (param_path, transposed) in key_map(config).items():
        array = params[param_path][...]
        size = array.size * array.dtype.itemsize
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][hf_key] = (array, transposed)
        shard_bytes += size
    hf_config = {**config.to_hf(), "dtype": jnp.dtype(config.param_dtype).name}
    (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if len(shards) == 1:
        write_safetensors(path / _SINGLE_FILE, shards[0])
        return
    weight_map, total_size = {}, 0
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total_size += write_safetensors(path / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (path / _INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _flat_params(model: Transformer) -> dict[str, nnx.Variable]:
    return {
        ".".join(map(str, path)): variable
        for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def _checkpoint_files(path: pathlib.Path) -> list[pathlib.Path]:
    index = path / _INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(
                f"{index} is not a safetensors index (JSON with a weight_map of tensor -> file); "
                f"{_REDO}."
            ) from None
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index} lists {', '.join(missing)}, missing from {path} (an interrupted "
                "download?); download the missing files or re-export the checkpoint."
            )
        return [path / name for name in names]
    if (path / _SINGLE_FILE).exists():
        return [path / _SINGLE_FILE]
    raise FileNotFoundError(
        f"No {_SINGLE_FILE} or {_INDEX_FILE} in {path}; expected a Hugging Face checkpoint dir "
        "(PyTorch .bin checkpoints are not supported: convert them with transformers first)."
    )


def from_pretrained(
    path: str | pathlib.Path,
    param_dtype: Any = jnp.float32,
    sharding_fn: ShardingFn | None = None,
    *,
    dtype: Any = None,
) -> tuple[Transformer, ModelConfig]:
    """Loads a local HF Qwen2/Qwen2.5/Qwen3/Llama 3 checkpoint dir into a `Transformer`.

    Args:
      path: dir with `config.json` and safetensors weights (no hub access).
      param_dtype: dtype the weights are stored in (cast on the host, tensor by tensor).
      sharding_fn: `(param_path, shape, dtype) -> Sharding | None`; each tensor is
        `jax.device_put` with it as it is read (None: default device). Use a mesh with
        `AxisType.Auto` axes (the forward relies on GSPMD propagation).
      dtype: activation dtype; defaults to `param_dtype`.

    Raises:
      ValueError: unsupported architecture, a checkpoint key prm does not know, a missing key, a
        shape mismatch, or a truncated or corrupt safetensors file (each names the file and key).
      FileNotFoundError: no weights, or shards the index lists are missing.
    """
    path = pathlib.Path(path)
    config = ModelConfig.from_hf(
        json.loads((path / "config.json").read_text()), dtype=dtype, param_dtype=param_dtype
    )
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    targets = _flat_params(abstract)
    expected = key_map(config)
    arrays: dict[str, jax.Array] = {}
    # Tied checkpoints may still carry an lm_head; accepted only if it equals the embedding.
    tied_lm_head: tuple[np.ndarray, pathlib.Path] | None = None
    embedding: np.ndarray | None = None
    files = _checkpoint_files(path)
    for file in files:  # every shard's header is checked before the first tensor is read
        read_safetensors_header(file)
    for file in files:
        for key, tensor in iter_safetensors(file):
            if key.endswith(_IGNORED_SUFFIXES):
                continue
            if key == "lm_head.weight" and config.tie_word_embeddings:
                tied_lm_head = (tensor, file)
                continue
            if key not in expected:
                raise ValueError(
                    f"Unexpected tensor {key!r} in {file} for a {config.family} model with "
                    f"tie_word_embeddings={config.tie_word_embeddings}; prm.models does not know "
                    "where it goes (is config.json from the same checkpoint?)."
                )
            if key == "model.embed_tokens.weight":
                embedding = tensor
            param_path, transposed = expected[key]
            if param_path in arrays:
                raise ValueError(f"Tensor {key!r} appears twice (again in {file}).")
            target = targets[param_path]
            hf_shape = target.shape[::-1] if transposed else target.shape
            if tensor.shape != hf_shape:
                raise ValueError(
                    f"Tensor {key!r} in {file} has shape {tensor.shape}; config.json implies "
                    f"{hf_shape}."
                )
            if transposed:
                tensor = tensor.T
            host = np.asarray(tensor, dtype=target.dtype)
            sharding = sharding_fn(param_path, target.shape, target.dtype) if sharding_fn else None
            arrays[param_path] = jax.device_put(host, sharding)
    missing = [key for key, (param_path, _) in expected.items() if param_path not in arrays]
    if missing:
        raise ValueError(f"Checkpoint {path} lacks tensors {missing[:8]} (of {len(missing)}).")
    if tied_lm_head is not None:
        lm_head, file = tied_lm_head
        if not np.array_equal(lm_head, embedding):
            raise ValueError(
                f"config.json ties word embeddings but lm_head.weight in {file} differs from "
                "model.embed_tokens.weight; set tie_word_embeddings=false in config.json."
            )
    graphdef, state = nnx.split(abstract)
    for path_key, variable in nnx.to_flat_state(state):
        param_path = ".".join(map(str, path_key))
        variable.set_value(arrays[param_path])
    return nnx.merge(graphdef, state), config
