"""The retriever interface the environments call, and the pieces every retriever shares.

A retriever maps a batch of queries to ranked passages. A passage is a row of a Search-R1 style
collection (`wiki-18.jsonl`: `{"id": str, "contents": '"Title"\\ntext'}`) plus its score, so the
in-process retrievers and an HTTP server speaking Search-R1's `/retrieve` protocol are
interchangeable (Search-R1, arXiv 2503.09516, repo `search_r1/search/retrieval_server.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypedDict, runtime_checkable

import numpy as np


class Document(TypedDict):
    """One collection row: `contents` is the title in double quotes, a newline, then the text."""

    id: str
    contents: str


class Passage(TypedDict):
    """A retrieved row with its retrieval score (higher is better)."""

    id: str
    contents: str
    score: float


@runtime_checkable
class Retriever(Protocol):
    """Anything that ranks passages for a batch of queries."""

    def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Returns, per query, the `min(topk, corpus size)` best passages, best first."""
        ...


def check_retrieve_args(queries: Sequence[str], topk: int) -> None:
    """Raises a clear error for arguments no retriever can answer."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise TypeError(
            f"queries must be a list of strings, got {type(queries).__name__}; "
            "wrap a single query in a list."
        )
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise TypeError(f"queries[{i}] must be a string, got {type(query).__name__}.")
    if isinstance(topk, bool) or not isinstance(topk, int | np.integer) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}.")


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `min(k, len(scores))` highest scores, best first.

    Ties are broken by the lower index (corpus order), so rankings do not depend on the sort
    algorithm or on how a partial sort happens to split equal scores.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}.")
    n = scores.shape[0]
    if k < n:
        kth_best = np.partition(scores, n - k)[n - k]
        # Every index scoring at least the k-th best, in ascending index order, so that the
        # stable sort below keeps ties in corpus order.
        candidates = np.flatnonzero(scores >= kth_best)
    else:
        candidates = np.arange(n)
    order = np.argsort(-scores[candidates], kind="stable")
    return candidates[order[:k]]


def to_document(row: Mapping[str, object], where: str) -> Document:
    """Checks one corpus row and returns it as a `Document`.

    Rows are `{"id", "contents"}` as in `wiki-18.jsonl`. Rows with `{"id", "title", "text"}`
    (the form Search-R1's index builder once expected, its issue #74) are converted to
    `contents = '"' + title + '"\\n' + text`, the same layout.
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: a corpus row must be a JSON object, got {type(row).__name__}.")
    if "id" not in row:
        raise ValueError(f"{where}: corpus row has no 'id' field (keys: {sorted(row)}).")
    if "contents" in row:
        contents = row["contents"]
    elif "title" in row and "text" in row:
        contents = f'"{row["title"]}"\n{row["text"]}'
    else:
        raise ValueError(
            f"{where}: corpus row needs 'contents' (or 'title' and 'text'), has {sorted(row)}."
        )
    if not isinstance(contents, str):
        raise ValueError(f"{where}: 'contents' must be a string, got {type(contents).__name__}.")
    return Document(id=str(row["id"]), contents=contents)


def to_documents(rows: Iterable[Mapping[str, object]]) -> list[Document]:
    """Checks and converts in-memory corpus rows (see `to_document`); the corpus must be nonempty."""
    documents = [to_document(row, f"corpus row {i}") for i, row in enumerate(rows)]
    if not documents:
        raise ValueError("The corpus is empty: a retriever needs at least one document.")
    return documents


def load_corpus(path: str | os.PathLike[str]) -> list[Document]:
    """Reads a JSON-lines corpus (one `{"id", "contents"}` object per line; blank lines skipped)."""
    documents = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}).") from e
            documents.append(to_document(row, where))
    if not documents:
        raise ValueError(f"{path}: the corpus file has no rows.")
    return documents


def save_corpus(documents: Iterable[Document], path: str | os.PathLike[str]) -> None:
    """Writes documents as JSON lines, readable by `load_corpus` and by Search-R1's tools."""
    with open(path, "w", encoding="utf-8") as f:
        for document in documents:
            f.write(json.dumps({"id": document["id"], "contents": document["contents"]}))
            f.write("\n")
