"""A hand-made corpus whose right passage for each query is known, and a served BM25 index."""

from __future__ import annotations

import pytest

from prm.envs.retrieval import BM25Retriever, RetrievalServer

CORPUS = [
    {"id": "0", "contents": '"Paris"\nParis is the capital and largest city of France.'},
    {"id": "1", "contents": '"Berlin"\nBerlin is the capital of Germany, on the river Spree.'},
    {"id": "2", "contents": '"Mount Everest"\nEverest is the highest mountain above sea level.'},
    {"id": "3", "contents": '"Python"\nPython is a programming language created by Guido.'},
    {"id": "4", "contents": '"Amazon River"\nThe Amazon river flows through Brazil and Peru.'},
    {"id": "5", "contents": '"Marie Curie"\nCurie won Nobel prizes in physics and chemistry.'},
]

# (query, id of the only passage that answers it)
KNOWN_ANSWERS = [
    ("What is the capital of Germany?", "1"),
    ("highest mountain", "2"),
    ("who created the Python programming language", "3"),
    ("Which river flows through Peru?", "4"),
    ("Nobel prize in chemistry", "5"),
    ("largest city in France", "0"),
]


@pytest.fixture
def corpus() -> list[dict[str, str]]:
    return [dict(row) for row in CORPUS]


@pytest.fixture
def known_answers() -> list[tuple[str, str]]:
    return list(KNOWN_ANSWERS)


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever(CORPUS)


@pytest.fixture(scope="module")
def server(bm25: BM25Retriever):
    # The lifetime bound stops the server even if a test leaves it running.
    with RetrievalServer(bm25, max_lifetime_s=120).start() as running:
        yield running
