"""Retrieval for search environments: BM25 and dense retrievers, a Search-R1-compatible HTTP
server and a client, all behind `Retriever.retrieve(queries, topk) -> list[list[Passage]]`.

The dense retriever is imported from `prm.envs.retrieval.dense` (its model backend is the
optional extra `prm[dense]`). `RetrievalServer` loads on first access, so that
`python -m prm.envs.retrieval.server` runs the module once, as `__main__` (runpy warns when
the package has already imported it).
"""

from typing import Any

from prm.envs.retrieval.base import (
    Document,
    Passage,
    Retriever,
    load_corpus,
    save_corpus,
    top_k_indices,
)
from prm.envs.retrieval.bm25 import BM25Retriever
from prm.envs.retrieval.client import RetrievalClient, RetrievalError


def __getattr__(name: str) -> Any:
    if name == "RetrievalServer":
        from prm.envs.retrieval.server import RetrievalServer

        return RetrievalServer
    raise AttributeError(f"module 'prm.envs.retrieval' has no attribute {name!r}")


__all__ = [
    "BM25Retriever",
    "Document",
    "Passage",
    "RetrievalClient",
    "RetrievalError",
    "RetrievalServer",
    "Retriever",
    "load_corpus",
    "save_corpus",
    "top_k_indices",
]
