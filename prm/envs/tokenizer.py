"""A small byte-level BPE tokenizer for the synthetic world, saved in Hugging Face format.

The default policy is trained from scratch, but it should run through exactly the code path of a
real model: `transformers.AutoTokenizer.from_pretrained(dir)` on a local directory. So the
tokenizer is trained with `tokenizers` (byte-level BPE: every string round-trips, no unknown
token) on the world's passages, questions and protocol text, and saved with
`PreTrainedTokenizerFast.save_pretrained`.

The protocol tags (`<think>`, `</search>`, …) are added tokens: each is one id wherever it
appears, so stop sequences are single tokens. They are *not* special tokens, because Search-R1
decodes with `skip_special_tokens=True` and the tags must survive that. `<|endoftext|>` is the
only special token (end of sequence and padding). Training is deterministic: the same texts give
the same files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from prm.envs import expert, protocol
from prm.envs.synthetic_world import World

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with `vocab_size` ids in all (tags and `<|endoftext|>` included)."""
    from transformers import PreTrainedTokenizerFast  # slow to import; only needed here

    base = len(pre_tokenizers.ByteLevel.alphabet())
    reserved = len(protocol.TAGS) + 1
    if vocab_size < base + reserved:
        raise ValueError(
            f"vocab_size must be >= {base + reserved} (256 bytes + tags + end-of-text), "
            f"got {vocab_size}."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(protocol.TAGS),
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_tokens(
        [AddedToken(tag, normalized=False, special=False) for tag in protocol.TAGS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def world_texts(world: World) -> Iterable[str]:
    """What a policy in `world` reads and writes: passages as observations, prompts, and the
    expert's step phrasing, each weighted by how often it occurs in trajectories."""
    yield from world.texts()
    for row in world.corpus_rows():
        yield protocol.format_observation([{**row, "score": 0.0}])
    for question in world.questions:
        yield protocol.render_prompt(question.text, protocol.COMPACT_TEMPLATE)
        yield from expert.gold_steps(world, question)
    yield protocol.SEARCH_R1_TEMPLATE
    yield protocol.INVALID_ACTION_FEEDBACK


def build_world_tokenizer(
    world: World, out_dir: str | os.PathLike[str], vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """Trains the world tokenizer and saves it to `out_dir` (loadable by `AutoTokenizer`)."""
    tokenizer = train_bpe_tokenizer(world_texts(world), vocab_size)
    tokenizer.save_pretrained(os.fspath(out_dir))
    return tokenizer
