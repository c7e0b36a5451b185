"""The synthetic world's assets on disk: tokenizer, BM25 index and question files, built once.

    assets = load_world_assets(WorldConfig(), cache_dir="~/.cache/prm/worlds")

builds (or loads, when present) one directory per world, keyed by a hash of everything the
assets depend on (the `WorldConfig`, the vocabulary size and a format version):

    <cache_dir>/world-<key>/
      manifest.json              world config, vocabulary size, counts
      tokenizer/                 Hugging Face tokenizer (`AutoTokenizer.from_pretrained`)
      bm25/                      `BM25Retriever.save` (index + corpus.jsonl)
      questions/<split>.jsonl    Search-R1 / FlashRAG rows, gold chains under `metadata`

A directory is built under a temporary name in `cache_dir` and renamed into place in one
`os.rename`, so a failed or killed build never leaves a half-written asset behind, and two
processes racing to build the same world both end up loading the one that won. The world itself
is not stored: it is a pure function of its config and regenerated on load.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prm.envs.retrieval.bm25 import BM25Retriever
from prm.envs.synthetic_world import SPLITS, World, WorldConfig
from prm.envs.tokenizer import build_world_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Bump when the layout or the content of a built directory changes; old directories are ignored.
ASSETS_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "prm", "worlds")
_SPLITS = SPLITS
DEFAULT_WORLD = WorldConfig()


@dataclasses.dataclass(frozen=True)
class WorldAssets:
    world: World
    tokenizer: PreTrainedTokenizerFast
    retriever: BM25Retriever
    path: Path


def assets_key(world_config: WorldConfig, vocab_size: int) -> str:
    """A short hash of everything the built files depend on."""
    spec = {
        "version": ASSETS_VERSION,
        "vocab_size": vocab_size,
        "world": dataclasses.asdict(world_config),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """`cache_dir`, else `$PRM_CACHE_DIR/worlds`, else `~/.cache/prm/worlds`."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if root := os.environ.get("PRM_CACHE_DIR"):
        return Path(root).expanduser() / "worlds"
    return Path(DEFAULT_CACHE_DIR).expanduser()


def world_config_from(world: Mapping[str, Any]) -> WorldConfig:
    """A `WorldConfig` from a config block (lists from a stored JSON config become tuples)."""
    fields = dict(world)
    if "questions_per_type" in fields:
        fields["questions_per_type"] = tuple(tuple(p) for p in fields["questions_per_type"])
    if "split_fractions" in fields:
        fields["split_fractions"] = tuple(fields["split_fractions"])
    return WorldConfig(**fields)


def world_assets_path(
    world_config: WorldConfig = DEFAULT_WORLD,
    cache_dir: str | os.PathLike[str] | None = None,
    vocab_size: int = 1024,
) -> Path:
    return resolve_cache_dir(cache_dir) / f"world-{assets_key(world_config, vocab_size)}"


def load_world_assets(
    world_config: WorldConfig = DEFAULT_WORLD,
    cache_dir: str | os.PathLike[str] | None = None,
    vocab_size: int = 1024,
) -> WorldAssets:
    """The world of `world_config` with its tokenizer and BM25 index; builds them if absent.

    Loaded assets are kept for the life of the process (the same arguments return the same
    object), so trainers and evaluations that each ask for the world share one copy.
    """
    return _load(world_assets_path(world_config, cache_dir, vocab_size), world_config, vocab_size)


@functools.lru_cache(maxsize=4)
def _load(path: Path, world_config: WorldConfig, vocab_size: int) -> WorldAssets:
    from transformers import AutoTokenizer  # slow to import; only needed here

    world = World(world_config)
    if not path.is_dir():
        _build(world, path, vocab_size)
    return WorldAssets(
        world=world,
        tokenizer=AutoTokenizer.from_pretrained(os.fspath(path / "tokenizer")),
        retriever=BM25Retriever.load(path / "bm25"),
        path=path,
    )


def _build(world: World, path: Path, vocab_size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        build_world_tokenizer(world, staging / "tokenizer", vocab_size)
        BM25Retriever(world.corpus_rows()).save(staging / "bm25")
        (staging / "questions").mkdir()
        for split in _SPLITS:
            with open(staging / "questions" / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for row in world.question_rows(split):
                    f.write(json.dumps(row) + "\n")
        manifest = {
            "version": ASSETS_VERSION,
            "vocab_size": vocab_size,
            "world": dataclasses.asdict(world.config),
            "num_passages": len(world.passages),
            "num_questions": {split: len(world.split(split)) for split in _SPLITS},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.rename(staging, path)
        except OSError:
            # Another process finished the same build first; its directory is equivalent.
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
