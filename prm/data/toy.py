"""A synthetic next-token task a tiny model learns in seconds: repeat a random pattern.

Row: a pattern of `period` tokens drawn uniformly from the vocabulary, repeated to length T
(t_i = t_{i mod period}). The first period is unpredictable, so the loss mask is 0 there and 1
after. A model that has learnt nothing pays log V per target token; one that has learnt to copy
from `period` positions back (one attention head with relative positions suffices) pays ~0.

Batch `index` of a split is a pure function of (seed, split, index), which makes the source's
position a single integer and resume exact; each host takes its rows of the same global batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from prm.data.source import host_rows
from prm.registry import DATASETS

_SPLITS = {"train": 0, "eval": 1}


@DATASETS.register("toy_repeat")
class RepeatSource:
    """Batches `{"tokens": int32[B_local, T], "loss_mask": float32[B_local, T]}`."""

    def __init__(
        self,
        batch_size: int,
        seq_len: int,
        vocab_size: int,
        period: int = 4,
        seed: int = 0,
        split: str = "train",
        process_index: int = 0,
        process_count: int = 1,
    ):
        if split not in _SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid splits are {sorted(_SPLITS)}.")
        if not 1 <= period < seq_len:
            raise ValueError(f"Need 1 <= period ({period}) < seq_len ({seq_len}).")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.period = period
        self.seed = seed
        self.split = split
        self.rows = host_rows(batch_size, process_index, process_count)
        self.index = 0

    def __iter__(self) -> RepeatSource:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], self.index])
        self.index += 1
        pattern = rng.integers(0, self.vocab_size, size=(self.batch_size, self.period))
        tokens = pattern[:, np.arange(self.seq_len) % self.period]
        loss_mask = np.ones_like(tokens, dtype=np.float32)
        loss_mask[:, : self.period] = 0.0
        return {
            "tokens": tokens[self.rows].astype(np.int32),
            "loss_mask": loss_mask[self.rows],
        }

    def state(self) -> dict[str, Any]:
        return {"index": self.index}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.index = int(state["index"])
