"""Dense retrieval: inner product between query and passage embeddings (a flat index).

Search-R1's default retriever is E5 (`intfloat/e5-base-v2`) with FAISS `Flat` inner product over
L2-normalised mean-pooled embeddings, queries prefixed `"query: "` and passages `"passage: "`
(Search-R1, arXiv 2503.09516; repo `search_r1/search/retrieval_server.py`):

    score(q, d) = <e(prefix_q + q), e(prefix_d + d)>.

`DenseRetriever` takes any encoder (texts -> `[n, dim]` array); `from_sentence_transformers`
builds one from a local sentence-transformers model directory. `sentence-transformers` is the
optional extra `prm[dense]` and is imported only there.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

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

Encoder = Callable[[Sequence[str]], np.ndarray]
"""Maps `n` texts to a float `[n, dim]` array of embeddings."""

_EMBEDDINGS_FILE = "embeddings.npy"
_CORPUS_FILE = "corpus.jsonl"
_CONFIG_FILE = "prm_dense.json"
_SCORES_PER_BLOCK = 2**26


def _encode(encoder: Encoder, texts: Sequence[str], what: str) -> np.ndarray:
    embeddings = np.asarray(encoder(texts), dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(
            f"The {what} encoder must return [{len(texts)}, dim] for {len(texts)} texts, "
            f"got shape {embeddings.shape}."
        )
    return embeddings


class DenseRetriever:
    """Exact inner-product search over precomputed passage embeddings; thread-safe if the encoder is."""

    def __init__(
        self, corpus: Iterable[Mapping[str, object]], embeddings: np.ndarray, query_encoder: Encoder
    ) -> None:
        """`embeddings[i]` embeds `corpus[i]`; `query_encoder` must embed into the same space."""
        self._documents = to_documents(corpus)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self._documents):
            raise ValueError(
                f"embeddings must be [{len(self._documents)}, dim] (one row per document), "
                f"got shape {embeddings.shape}."
            )
        self._embeddings = embeddings
        self._query_encoder = query_encoder

    @classmethod
    def build(
        cls,
        corpus: Iterable[Mapping[str, object]],
        passage_encoder: Encoder,
        query_encoder: Encoder,
        *,
        batch_size: int = 512,
    ) -> DenseRetriever:
        """Embeds every document's `contents` with `passage_encoder`, `batch_size` at a time."""
        documents = to_documents(corpus)
        contents = [d["contents"] for d in documents]
        embeddings = np.concatenate(
            [
                _encode(passage_encoder, contents[i : i + batch_size], "passage")
                for i in range(0, len(contents), batch_size)
            ]
        )
        return cls(documents, embeddings, query_encoder)

    @classmethod
    def from_sentence_transformers(
        cls,
        model_dir: str | os.PathLike[str],
        corpus: Iterable[Mapping[str, object]],
        *,
        query_prefix: str = "query: ",
        passage_prefix: str = "passage: ",
        device: str | None = None,
        batch_size: int = 512,
    ) -> DenseRetriever:
        """Embeds `corpus` with a local sentence-transformers model (E5 prefixes by default)."""
        model = SentenceTransformerEncoder(model_dir, device=device)
        return cls.build(
            corpus,
            model.encoder(passage_prefix),
            model.encoder(query_prefix),
            batch_size=batch_size,
        )

    @property
    def documents(self) -> list[Document]:
        return self._documents

    @property
    def embeddings(self) -> np.ndarray:
        return self._embeddings

    def __len__(self) -> int:
        return len(self._documents)

    def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Returns, per query, the `min(topk, len(self))` best passages; ties in corpus order."""
        check_retrieve_args(queries, topk)
        if not queries:
            return []
        query_embeddings = _encode(self._query_encoder, list(queries), "query")
        if query_embeddings.shape[1] != self._embeddings.shape[1]:
            raise ValueError(
                f"Query embeddings have dim {query_embeddings.shape[1]}, passages "
                f"{self._embeddings.shape[1]}; use the encoder the index was built with."
            )
        # Score a block of queries at a time so the [queries, docs] matrix stays ~256 MB.
        block = max(1, _SCORES_PER_BLOCK // len(self._documents))
        results = []
        for start in range(0, len(query_embeddings), block):
            scores = query_embeddings[start : start + block] @ self._embeddings.T
            results.extend(
                [
                    Passage(
                        id=self._documents[i]["id"],
                        contents=self._documents[i]["contents"],
                        score=float(row[i]),
                    )
                    for i in top_k_indices(row, topk)
                ]
                for row in scores
            )
        return results

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes the embeddings and the corpus to `directory` (the encoder is not saved)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / _EMBEDDINGS_FILE, self._embeddings)
        save_corpus(self._documents, directory / _CORPUS_FILE)
        (directory / _CONFIG_FILE).write_text(json.dumps({"dim": self._embeddings.shape[1]}))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], query_encoder: Encoder) -> DenseRetriever:
        """Reads an index written by `save`; `query_encoder` must match the one used to build it."""
        directory = Path(directory)
        if not (directory / _CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} holds no prm dense index ({_CONFIG_FILE} missing); "
                "build one with DenseRetriever.build(...).save(directory)."
            )
        return cls(
            load_corpus(directory / _CORPUS_FILE),
            np.load(directory / _EMBEDDINGS_FILE),
            query_encoder,
        )

    @classmethod
    def load_sentence_transformers(
        cls,
        directory: str | os.PathLike[str],
        model_dir: str | os.PathLike[str],
        *,
        query_prefix: str = "query: ",
        device: str | None = None,
    ) -> DenseRetriever:
        """Reads a saved index and encodes queries with the sentence-transformers model."""
        model = SentenceTransformerEncoder(model_dir, device=device)
        return cls.load(directory, model.encoder(query_prefix))


class SentenceTransformerEncoder:
    """A local sentence-transformers model producing L2-normalised embeddings.

    Calls are serialised by a lock: Hugging Face fast tokenizers raise "Already borrowed" when
    one instance is used from several threads at once, as a threaded server would.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "Dense retrieval needs sentence-transformers, an optional extra: "
                "pip install 'prm[dense]' (or pip install sentence-transformers)."
            ) from e
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(
                f"{model_dir} is not a directory; pass a local sentence-transformers model "
                "directory (models are not downloaded at run time)."
            )
        self._model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], prefix: str = "") -> np.ndarray:
        with self._lock:
            return self._model.encode(
                [prefix + t for t in texts],
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )

    def encoder(self, prefix: str) -> Encoder:
        """An `Encoder` that prepends `prefix` (E5's `"query: "` / `"passage: "`) to each text."""
        return lambda texts: self.encode(texts, prefix)
