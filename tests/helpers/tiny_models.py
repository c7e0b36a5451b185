"""Tiny random models and Hugging Face checkpoints for tests (no hub access).

config = tiny_config("qwen3")                          # prm ModelConfig
path = make_tiny_checkpoint(tmp_path, "llama")         # HF dir written by transformers/torch
model, config = prm.models.from_pretrained(path)
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

import dataclasses
import pathlib

from prm.models import Llama3RopeScaling, ModelConfig

FAMILIES = ("qwen2", "qwen3", "llama")

# A byte-level tokenizer (256 byte tokens, no merges) plus the chat specials; vocab padded to 272.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB_SIZE = 272


def tiny_config(family: str, **overrides) -> ModelConfig:
    """A 2-layer GQA config with the family's switches (qwen2 bias, qwen3 qk-norm, llama3 RoPE)."""
    config = ModelConfig(
        family=family,
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=24 if family == "qwen3" else 16,
        intermediate_size=96,
        rope_theta=10_000.0 if family != "llama" else 500_000.0,
        rope_scaling=(
            Llama3RopeScaling(
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            )
            if family == "llama"
            else None
        ),
        rms_norm_eps=1e-6,
        attention_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        tie_word_embeddings=family != "llama",
        max_position_embeddings=512,
        bos_token_id=256,
        eos_token_ids=(256,) if family != "qwen2" else (256, 258),
        pad_token_id=256,
    )
    return dataclasses.replace(config, **overrides)


def hf_config(family: str, **overrides):
    """The transformers config object for `tiny_config(family, **overrides)`."""
    import transformers

    return transformers.AutoConfig.for_model(**tiny_config(family, **overrides).to_hf())


def make_tiny_checkpoint(
    tmp_path: pathlib.Path | str,
    family: str,
    *,
    seed: int = 0,
    with_tokenizer: bool = True,
    **overrides,
) -> pathlib.Path:
    """Writes a random tiny HF checkpoint of `family` with transformers (torch) and returns its dir.

    The dir holds config.json + model.safetensors (+ a byte-level tokenizer with the chat special
    tokens when `with_tokenizer`), so code under test reads exactly what transformers writes.
    `overrides` are `ModelConfig` fields (e.g. `tie_word_embeddings=False`).
    """
    import torch
    import transformers

    path = pathlib.Path(tmp_path) / f"tiny-{family}"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family, **overrides))
    model.to(torch.float32).save_pretrained(path)
    if with_tokenizer:
        make_tiny_tokenizer().save_pretrained(path)
    return path


def make_tiny_tokenizer():
    """A byte-level BPE tokenizer without merges: id b < 256 is byte b, 256.. the specials."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in enumerate(_byte_level_chars())}
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[0],
    )


def _byte_level_chars() -> list[str]:
    """The printable character GPT-2's byte-level pre-tokenizer uses for each byte 0..255."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    unprintable = [b for b in range(256) if b not in printable]
    return [chr(b) if b in printable else chr(256 + unprintable.index(b)) for b in range(256)]
