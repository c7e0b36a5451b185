"""In-process BM25 retrieval over a passage collection, with bm25s (Lù, 2024, arXiv 2407.03618).

Scoring is Lucene's BM25 with pyserini's defaults `k1 = 0.9`, `b = 0.4`, the configuration
Search-R1's BM25 server uses through `pyserini.search.lucene.LuceneSearcher`:

    score(q, d) = Σ_{t ∈ q} idf(t) · tf(t, d) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl)),
    idf(t) = log(1 + (N − df(t) + 0.5) / (df(t) + 0.5)).

Text is lowercased and split on `\\w\\w+` with English stopwords removed; unlike Lucene's default
analyzer there is no Porter stemming.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import bm25s
import numpy as np

from prm.envs.retrieval.base import (
    Document,
    Passage,
    check_retrieve_args,
    load_corpus,
    save_corpus,
    to_documents,
    top_k_indices,
)

_CONFIG_FILE = "prm_bm25.json"
_CORPUS_FILE = "corpus.jsonl"


class BM25Retriever:
    """BM25 over the `contents` of each document; thread-safe for concurrent `retrieve` calls."""

    def __init__(
        self,
        corpus: Iterable[Mapping[str, object]],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        stopwords: str | Sequence[str] = "en",
    ) -> None:
        """Indexes `corpus`, rows `{"id", "contents"}` (or `{"id", "title", "text"}`)."""
        self._documents = to_documents(corpus)
        self._stopwords = stopwords
        self._index = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._index.index(
            self._tokenize([d["contents"] for d in self._documents]),
            show_progress=False,
        )

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str], **kwargs: object) -> BM25Retriever:
        """Indexes a JSON-lines corpus file such as Search-R1's `wiki-18.jsonl`."""
        return cls(load_corpus(path), **kwargs)

    @property
    def documents(self) -> list[Document]:
        return self._documents

    def __len__(self) -> int:
        return len(self._documents)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(
            texts, lower=True, stopwords=self._stopwords, return_ids=False, show_progress=False
        )

    def _matches(self, tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Documents sharing a term with the query (ascending index) and their BM25 scores.

        Sums the query terms' posting lists, so a query costs time in the postings it touches
        rather than in the corpus size (a dense row per query would be 84 MB on wiki-18's 21M
        passages). A repeated query term counts once per occurrence, as in Lucene and bm25s.
        """
        arrays = self._index.scores
        indptr = arrays["indptr"]
        token_ids = self._index.get_tokens_ids(tokens)
        if not token_ids:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        postings = [slice(indptr[t], indptr[t + 1]) for t in token_ids]
        documents = np.concatenate([arrays["indices"][p] for p in postings])
        term_scores = np.concatenate([arrays["data"][p] for p in postings])
        matched, positions = np.unique(documents, return_inverse=True)
        scores = np.bincount(positions, weights=term_scores, minlength=len(matched))
        return matched, scores.astype(np.float32)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for one query, float32 `[len(self)]` (0 = no shared term)."""
        matched, matched_scores = self._matches(self._tokenize([query])[0])
        scores = np.zeros(len(self._documents), dtype=np.float32)
        scores[matched] = matched_scores
        return scores

    def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Returns, per query, the `min(topk, len(self))` best passages; ties in corpus order.

        Documents sharing no term with a query score 0 and fill the list in corpus order.
        """
        check_retrieve_args(queries, topk)
        limit = min(topk, len(self._documents))
        results = []
        for tokens in self._tokenize(list(queries)):
            matched, matched_scores = self._matches(tokens)
            # `matched` is ascending, so tie-breaking by position is by corpus order.
            ranked = [
                (int(matched[i]), float(matched_scores[i]))
                for i in top_k_indices(matched_scores, limit)
            ]
            ranked += [(i, 0.0) for i in _first_unmatched(matched, limit - len(ranked))]
            results.append(
                [
                    Passage(
                        id=self._documents[i]["id"],
                        contents=self._documents[i]["contents"],
                        score=score,
                    )
                    for i, score in ranked
                ]
            )
        return results

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes the index, the corpus and the tokenizer settings to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._index.save(directory, show_progress=False)
        save_corpus(self._documents, directory / _CORPUS_FILE)
        (directory / _CONFIG_FILE).write_text(json.dumps({"stopwords": self._stopwords}))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BM25Retriever:
        """Reads an index written by `save`."""
        directory = Path(directory)
        config_path = directory / _CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{directory} holds no prm BM25 index ({_CONFIG_FILE} missing); "
                "build one with BM25Retriever(corpus).save(directory)."
            )
        retriever = cls.__new__(cls)
        retriever._stopwords = json.loads(config_path.read_text())["stopwords"]
        retriever._documents = load_corpus(directory / _CORPUS_FILE)
        retriever._index = bm25s.BM25.load(directory)
        num_indexed = retriever._index.scores["num_docs"]
        if num_indexed != len(retriever._documents):
            raise ValueError(
                f"{directory}: the index covers {num_indexed} documents but {_CORPUS_FILE} has "
                f"{len(retriever._documents)}; rebuild the index."
            )
        return retriever


def _first_unmatched(matched: np.ndarray, count: int) -> np.ndarray:
    """The `count` lowest document indices not in `matched` (ascending, distinct)."""
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(matched) + count), matched)[:count]
