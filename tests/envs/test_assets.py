"""World assets: built once per config, loaded after that, never left half-written."""

import json
import os

import pytest

from prm.envs import assets as A
from prm.envs.retrieval.bm25 import BM25Retriever
from prm.envs.synthetic_world import World, WorldConfig

TINY_WORLD = WorldConfig(
    num_persons=6,
    num_cities=3,
    num_countries=2,
    num_companies=2,
    num_films=2,
    questions_per_type=(("single", 10), ("bridge", 10), ("comparison", 3), ("compositional", 3)),
)
VOCAB = 320


@pytest.fixture(autouse=True)
def fresh_process_cache():
    A._load.cache_clear()
    yield
    A._load.cache_clear()


def test_build_then_load_without_rebuilding(tmp_path, monkeypatch):
    built = A.load_world_assets(TINY_WORLD, tmp_path, VOCAB)
    path = A.world_assets_path(TINY_WORLD, tmp_path, VOCAB)
    assert built.path == path and sorted(os.listdir(tmp_path)) == [path.name]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["num_passages"] == len(built.world.passages)
    assert len(built.tokenizer) == VOCAB
    rows = [json.loads(line) for line in (path / "questions" / "dev.jsonl").open()]
    assert [r["id"] for r in rows] == [q.id for q in built.world.split("dev")]
    query = built.world.split("train")[0].text
    first = built.retriever.retrieve([query], 3)

    def no_rebuild(*args):
        raise AssertionError("assets were rebuilt")

    A._load.cache_clear()
    monkeypatch.setattr(A, "_build", no_rebuild)
    loaded = A.load_world_assets(TINY_WORLD, tmp_path, VOCAB)
    assert loaded.tokenizer.get_vocab() == built.tokenizer.get_vocab()
    assert loaded.retriever.retrieve([query], 3) == first
    # Within a process the same arguments give the same object.
    assert A.load_world_assets(TINY_WORLD, tmp_path, VOCAB) is loaded


def test_the_key_covers_world_and_vocabulary():
    base = A.assets_key(TINY_WORLD, VOCAB)
    assert base == A.assets_key(WorldConfig(**vars(TINY_WORLD)), VOCAB)
    assert base != A.assets_key(WorldConfig(**{**vars(TINY_WORLD), "seed": 1}), VOCAB)
    assert base != A.assets_key(TINY_WORLD, VOCAB + 1)


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_save(self, directory):
        directory.mkdir(parents=True)
        (directory / "partial").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(BM25Retriever, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        A.load_world_assets(TINY_WORLD, tmp_path, VOCAB)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    assert A.load_world_assets(TINY_WORLD, tmp_path, VOCAB).path.is_dir()


def test_losing_a_build_race_keeps_the_winner(tmp_path):
    path = A.world_assets_path(TINY_WORLD, tmp_path, VOCAB)
    path.mkdir(parents=True)
    (path / "winner").write_text("first build")
    A._build(World(TINY_WORLD), path, VOCAB)
    assert os.listdir(path) == ["winner"] and os.listdir(tmp_path) == [path.name]


def test_cache_dir_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path))
    assert A.resolve_cache_dir(None) == tmp_path / "worlds"
    assert A.resolve_cache_dir(tmp_path / "x") == tmp_path / "x"
