"""Questions of the synthetic world, a batch per RL step (the prompts RL trainers roll out).

    source = make_data_source(dict(name="world_questions", batch_size=16, world={}), "train")
    questions = next(source)        # this host's `Question`s of the next batch
    source.state()                  # {"epoch": 0, "index": 1}: saved with each checkpoint

Each epoch visits every question of the split once in an order fixed by (seed, epoch), so a
resumed run sees exactly the questions an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prm.data.source import QuestionBatches
from prm.envs.assets import WorldAssets, load_world_assets, world_config_from
from prm.registry import DATASETS

# Trainer split name -> world split; "train" reads `train_split`.
WORLD_SPLITS = {"train": "rl", "eval": "dev", "test": "test"}


@DATASETS.register("world_questions")
class WorldQuestionSource(QuestionBatches):
    """Batches of `batch_size` (global) questions of the world's `split`.

    `seq_len`, `env` and `expert` are not used to draw questions; they describe the episodes
    for the trainer and its evaluation (`prm.evaluation.evaluate_world_config` reads them from
    the same `data` block), so one block configures the whole world setup.

    RL trains on `train_split`: by default the world's "rl" questions, which the SFT warm start
    never saw (`WorldConfig.rl_fraction`). On "train", the questions of the SFT demonstrations,
    the warm start answers almost all it can already (greedy EM 1.0 on the 1-2 hop types of the
    default world), so RL has little to learn that carries over to held-out questions.
    """

    def __init__(
        self,
        batch_size: int,
        world: Mapping[str, Any] | None = None,
        cache_dir: str = "",
        vocab_size: int = 1024,
        seed: int = 0,
        seq_len: int = 256,
        env: Mapping[str, Any] | None = None,
        expert: Mapping[str, Any] | None = None,
        split: str = "train",
        train_split: str = "rl",
        process_index: int = 0,
        process_count: int = 1,
    ):
        del seq_len, env, expert
        if split not in WORLD_SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid splits are {sorted(WORLD_SPLITS)}.")
        self.assets: WorldAssets = load_world_assets(
            world_config_from(world or {}), cache_dir or None, vocab_size
        )
        world_split = train_split if split == "train" else WORLD_SPLITS[split]
        self.questions = self.assets.world.split(world_split)
        if world_split == "rl" and not self.questions:
            raise ValueError(
                "The world has no 'rl' questions to train on: set data.world.rl_fraction > 0 "
                "(the share of train questions held back from SFT), or data.train_split='train'."
            )
        if len(self.questions) < batch_size:
            raise ValueError(
                f"The {split} split has {len(self.questions)} questions, fewer than "
                f"batch_size={batch_size}; lower data.batch_size."
            )
        self._start(batch_size, seed, process_index, process_count)

    @property
    def tokenizer(self):
        """The world's tokenizer (saved with the trained policy's HF export)."""
        return self.assets.tokenizer
