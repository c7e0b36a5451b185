"""Expert demonstrations in the synthetic world, tokenized with the protocol's masks (SFT data).

Each epoch the noisy expert (`prm.envs.expert`) plays every question of the split through the
real env and BM25 retriever, with a fresh noise seed per epoch, so the policy sees many
variations of each question (vague, wrong and redundant searches followed by recoveries). A
demonstration is tokenized segment by segment (`protocol.tokenize_segments`): its policy steps
are the targets (`loss_mask` 1, `step_id` = turn), the prompt and the observations are context
only (`loss_mask` 0, `step_id` −1). Each row holds one demonstration right-padded to `seq_len`
(`input_mask` marks real tokens); demonstrations longer than `seq_len` are left out, because the
policy runs with the same context cap.

Batches are a pure function of (seed, epoch, batch index), so the position `{"epoch", "index"}`
is all a checkpoint needs for an exact resume. Splits: "train" plays the world's train questions
with a new noise seed per epoch; "eval" plays its dev questions with the epoch-0 seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from prm.data.source import host_rows
from prm.envs import protocol
from prm.envs.assets import WorldAssets, load_world_assets, world_config_from
from prm.envs.expert import (
    WORLD_ENV_CONFIG,
    Demonstration,
    ExpertConfig,
    generate_demonstrations,
)
from prm.registry import DATASETS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

_WORLD_SPLITS = {"train": "train", "eval": "dev"}


def tokenize_demonstrations(
    demos: list[Demonstration], tokenizer: PreTrainedTokenizerFast, seq_len: int
) -> dict[str, np.ndarray]:
    """Demonstrations that fit `seq_len`, as `[N, seq_len]` rows (see the module docstring).

    Same tokens and masks as `protocol.tokenize_segments` (each segment encoded on its own), with
    every segment of every demonstration encoded in one batched tokenizer call.
    """
    texts = [s.text for d in demos for s in d.segments]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"])
    trajectories = []
    for demo in demos:
        ids = [next(encoded) for _ in demo.segments]
        trajectories.append(
            protocol.TokenizedTrajectory(
                tokens=np.concatenate(ids).astype(np.int32),
                loss_mask=np.repeat([s.trainable for s in demo.segments], [len(i) for i in ids]),
                step_id=np.repeat(
                    [s.step_index for s in demo.segments], [len(i) for i in ids]
                ).astype(np.int32),
            )
        )
    fitting = [t for t in trajectories if len(t.tokens) <= seq_len]
    if not fitting:
        raise ValueError(
            f"No demonstration fits seq_len={seq_len} (shortest has "
            f"{min(len(t.tokens) for t in trajectories)} tokens); raise seq_len."
        )
    return protocol.collate(fitting, seq_len, tokenizer.pad_token_id)


@DATASETS.register("synthetic_demos")
class DemonstrationSource:
    """Batches `{"tokens", "input_mask", "loss_mask", "step_id"}` of shape `[B_local, seq_len]`.

    Args:
      batch_size: global batch size (rows over all hosts).
      seq_len: row length; longer demonstrations are left out.
      world: `WorldConfig` fields (the default world when empty).
      expert: `ExpertConfig` noise rates (`seed` is set per epoch from `seed`).
      env: `EnvConfig` fields for the expert's episodes (default `WORLD_ENV_CONFIG`).
      cache_dir: where world assets are built and loaded (`prm.envs.assets`).
      vocab_size: the world tokenizer's vocabulary.
    """

    def __init__(
        self,
        batch_size: int,
        seq_len: int = 256,
        world: Mapping[str, Any] | None = None,
        expert: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
        cache_dir: str = "",
        vocab_size: int = 1024,
        seed: int = 0,
        split: str = "train",
        process_index: int = 0,
        process_count: int = 1,
    ):
        if split not in _WORLD_SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid splits are {sorted(_WORLD_SPLITS)}.")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.expert_fields = dict(expert or {})
        self.env_config = dataclasses.replace(WORLD_ENV_CONFIG, **dict(env or {}))
        self.seed = seed
        self.split = split
        self.rows = host_rows(batch_size, process_index, process_count)
        self.assets: WorldAssets = load_world_assets(
            world_config_from(world or {}), cache_dir or None, vocab_size
        )
        self.questions = self.assets.world.split(_WORLD_SPLITS[split])
        self.epoch, self.index = 0, 0
        self._epoch_rows: tuple[int, dict[str, np.ndarray]] | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The world's tokenizer (saved with the trained policy's HF export)."""
        return self.assets.tokenizer

    def epoch_rows(self, epoch: int) -> dict[str, np.ndarray]:
        """All rows of `epoch`, shuffled (cached for the current epoch)."""
        if self._epoch_rows is None or self._epoch_rows[0] != epoch:
            noise_epoch = epoch if self.split == "train" else 0
            config = ExpertConfig(
                **{**self.expert_fields, "seed": self.seed * 1_000_003 + noise_epoch}
            )
            demos = generate_demonstrations(
                self.assets.world,
                self.questions,
                self.assets.retriever,
                config,
                self.env_config,
                self.assets.tokenizer,
                protocol.COMPACT_TEMPLATE,
            )
            rows = tokenize_demonstrations(demos, self.assets.tokenizer, self.seq_len)
            order = np.random.default_rng([self.seed, epoch]).permutation(len(rows["tokens"]))
            if len(order) < self.batch_size:
                raise ValueError(
                    f"The {self.split} split has {len(order)} demonstrations that fit "
                    f"seq_len={self.seq_len}, fewer than batch_size={self.batch_size}."
                )
            self._epoch_rows = (epoch, {k: v[order] for k, v in rows.items()})
        return self._epoch_rows[1]

    def __iter__(self) -> DemonstrationSource:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self.epoch_rows(self.epoch)
        if (self.index + 1) * self.batch_size > len(rows["tokens"]):
            self.epoch, self.index = self.epoch + 1, 0
            rows = self.epoch_rows(self.epoch)
        start = self.index * self.batch_size
        self.index += 1
        batch = {k: v[start : start + self.batch_size] for k, v in rows.items()}
        return {k: v[self.rows] for k, v in batch.items()}

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
