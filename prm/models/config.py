"""`ModelConfig`: one frozen description of a Qwen2/Qwen2.5, Qwen3 or Llama 3 decoder.

The three families share one architecture (pre-norm decoder, RoPE, GQA, SwiGLU MLP, RMSNorm) and
differ only in switches recorded here:

| family | q/k/v bias | o bias          | q/k RMSNorm | RoPE                      |
|--------|------------|-----------------|-------------|---------------------------|
| qwen2  | yes        | no              | no          | default                   |
| qwen3  | no         | no              | yes         | default, explicit head_dim|
| llama  | no         | no              | no          | default or llama3 scaling |

`ModelConfig.from_hf` reads a Hugging Face `config.json` dict, in either the transformers 4
layout (`rope_theta`, `rope_scaling`) or the transformers 5 layout (`rope_parameters`);
`to_hf` writes both so transformers 4/5 and vLLM read the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

FAMILIES = ("qwen2", "qwen3", "llama")
_ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
}
_DTYPE_NAMES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1 frequency-dependent RoPE scaling (transformers `rope_type="llama3"`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a decoder-only transformer.

    `dtype` is the activation/compute dtype, `param_dtype` the storage dtype of the weights.
    `eos_token_ids` is a tuple because Llama 3.1 checkpoints list several end tokens.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10_000.0
    rope_scaling: Llama3RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    max_position_embeddings: int = 32_768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # Recompute each decoder layer in the backward pass instead of storing its activations
    # (gradient checkpointing): memory per layer drops to its input, at ~1/3 more compute.
    # A training switch, not part of the checkpoint format (from_hf/to_hf leave it alone).
    remat: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown model family {self.family!r}; expected one of {FAMILIES}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention)."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings.")

    @property
    def rope_inv_freq(self) -> np.ndarray:
        """Inverse RoPE frequencies [head_dim // 2], float64 (static, computed on the host).

        Default: theta^(-2i/d) (Su et al. 2021, RoFormer eq. 15). Llama 3 scaling (Meta Llama 3.1
        reference code, `apply_scaling`): wavelengths longer than
        `original_max / low_freq_factor` are divided by `factor`, shorter than
        `original_max / high_freq_factor` are kept, and those in between interpolate linearly in
        `original_max / wavelength`.
        """
        exponent = np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim
        inv_freq = 1.0 / self.rope_theta**exponent
        scaling = self.rope_scaling
        if scaling is None:
            return inv_freq
        wavelength = 2 * np.pi / inv_freq
        old_len = scaling.original_max_position_embeddings
        smooth = (old_len / wavelength - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smooth = np.clip(smooth, 0.0, 1.0)
        # smooth == 0 for long wavelengths (fully scaled), 1 for short ones (unchanged).
        return (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq

    @classmethod
    def from_hf(
        cls, hf: dict[str, Any], *, dtype: Any = None, param_dtype: Any = None
    ) -> ModelConfig:
        """Builds a config from a Hugging Face `config.json` dict.

        `param_dtype` defaults to the checkpoint's `dtype`/`torch_dtype` (float32 if absent) and
        `dtype` defaults to `param_dtype`. Raises ValueError for architectures this module does
        not implement (other model types, sliding-window attention, non-SiLU MLPs, MLP bias,
        RoPE types other than default and llama3).
        """
        family = hf.get("model_type")
        if family not in FAMILIES:
            raise ValueError(
                f"Unsupported model_type {family!r} in config.json; prm.models supports "
                f"{FAMILIES} (Qwen2/Qwen2.5, Qwen3 dense, Llama 3)."
            )
        for arch in hf.get("architectures") or ():
            if arch != _ARCHITECTURES[family]:
                raise ValueError(
                    f"Unsupported architecture {arch!r} for model_type {family!r}; expected "
                    f"{_ARCHITECTURES[family]!r} (heads other than the causal-LM head are not "
                    "loaded by prm.models)."
                )
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"Unsupported hidden_act {hf['hidden_act']!r}; expected 'silu'.")
        if hf.get("mlp_bias", False):
            raise ValueError("Unsupported mlp_bias=True; prm.models implements bias-free MLPs.")
        if hf.get("use_sliding_window", False):
            raise ValueError(
                "Unsupported use_sliding_window=True; prm.models implements full attention only."
            )
        attention_bias = family == "qwen2" or bool(hf.get("attention_bias", False))
        if attention_bias and family != "qwen2":
            raise ValueError(
                f"Unsupported attention_bias=True for {family!r} (it would also bias o_proj); "
                "no released checkpoint of this family uses it."
            )
        rope_theta, rope_scaling = _rope_from_hf(hf)
        if param_dtype is None:
            name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
            if name not in _DTYPE_NAMES:
                raise ValueError(
                    f"Unsupported checkpoint dtype {name!r}; use {list(_DTYPE_NAMES)}."
                )
            param_dtype = _DTYPE_NAMES[name]
        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        num_heads = hf["num_attention_heads"]
        return cls(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            intermediate_size=hf["intermediate_size"],
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            attention_bias=attention_bias,
            qk_norm=family == "qwen3",
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            dtype=param_dtype if dtype is None else dtype,
            param_dtype=param_dtype,
            max_position_embeddings=hf.get("max_position_embeddings", 32_768),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dict for this config (transformers 4 and 5 keys)."""
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        rope_scaling = None
        if self.rope_scaling is not None:
            rope_scaling = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
            rope_parameters = {**rope_scaling, "rope_theta": self.rope_theta}
        eos: int | list[int] | None = list(self.eos_token_ids) or None
        if eos is not None and len(eos) == 1:
            eos = eos[0]
        hf: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.family]],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "dtype": jnp.dtype(self.param_dtype).name,
            "torch_dtype": jnp.dtype(self.param_dtype).name,
            "use_cache": True,
        }
        if self.family != "qwen2":
            hf["attention_bias"] = False
            hf["attention_dropout"] = 0.0
        if self.family == "llama":
            hf["mlp_bias"] = False
        else:
            hf["use_sliding_window"] = False
        return hf


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise ValueError(
            f"Unsupported rope type {rope_type!r}; prm.models implements 'default' and 'llama3'."
        )
    scaling = Llama3RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )
    return float(theta), scaling
