"""The data-source interface every trainer reads batches through.

A source is an iterator of numpy batches (this host's rows of the global batch) with a small
JSON-serialisable position, saved in each checkpoint, so a resumed run continues with exactly
the batches an uninterrupted run would have seen:

    source = make_data_source(config.data, split="train")
    batch = next(source)        # {"tokens": int32[B_local, T], "loss_mask": float32[B_local, T]}
    saved = source.state()      # e.g. {"index": 17}
    source.restore(saved)

Sources are registered in `prm.registry.DATASETS` and built from the config block
`data = dict(name=..., batch_size=<global>, **source_kwargs)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from prm.registry import DATASETS


@runtime_checkable
class DataSource(Protocol):
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

    def __next__(self) -> dict[str, np.ndarray]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """This host's rows of a global batch: contiguous equal slices in process order."""
    if batch_size % process_count:
        raise ValueError(
            f"Global batch size {batch_size} is not divisible by the {process_count} hosts; "
            "choose a multiple of jax.process_count()."
        )
    per_host = batch_size // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


def make_data_source(data_config: Mapping[str, Any], split: str = "train") -> DataSource:
    """Builds the registered source `data_config["name"]` for this host."""
    kwargs = dict(data_config.items())
    cls = DATASETS.get(kwargs.pop("name"))
    return cls(
        **kwargs,
        split=split,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


class QuestionBatches:
    """Batches of `batch_size` (global) items of `self.questions`, epoch by epoch in an order
    fixed by (seed, epoch); this host's rows of each. Subclasses set `questions` and call
    `_start`. Used by the world's and the datasets' question sources."""

    questions: Sequence[Any]

    def _start(self, batch_size: int, seed: int, process_index: int, process_count: int) -> None:
        self.batch_size, self.seed = batch_size, seed
        self.rows = host_rows(batch_size, process_index, process_count)
        self.epoch, self.index = 0, 0

    def __iter__(self) -> QuestionBatches:
        return self

    def __next__(self) -> list[Any]:
        if (self.index + 1) * self.batch_size > len(self.questions):
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.questions))
        start = self.index * self.batch_size
        self.index += 1
        batch = [self.questions[i] for i in order[start : start + self.batch_size]]
        return batch[self.rows]

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
