from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from prm.envs.retrieval import dense as dense_module
from prm.envs.retrieval.dense import DenseRetriever, SentenceTransformerEncoder

VOCAB = ["capital", "germany", "france", "mountain", "river", "python"]


def bag_of_words(texts):
    """L2-normalised counts of VOCAB words: a hand-checkable stand-in for a neural encoder."""
    counts = np.array(
        [[re.findall(r"\w+", t.lower()).count(w) for w in VOCAB] for t in texts], dtype=np.float32
    )
    norms = np.linalg.norm(counts, axis=1, keepdims=True)
    return counts / np.where(norms == 0, 1, norms)


@pytest.fixture
def dense(corpus):
    return DenseRetriever.build(corpus, bag_of_words, bag_of_words, batch_size=4)


def test_ranks_by_inner_product(dense):
    # Query "capital germany" embeds as (1, 1, 0, 0, 0, 0)/√2. Doc 1 (Berlin) has capital,
    # germany and river once each: (1, 1, 0, 0, 1, 0)/√3, score 2/√6. Doc 0 (Paris) has capital
    # and france: (1, 0, 1, 0, 0, 0)/√2, score 1/2. The rest share no query word: score 0, and
    # doc 2 is the first of them in corpus order.
    (passages,) = dense.retrieve(["capital germany"], topk=3)
    assert [p["id"] for p in passages] == ["1", "0", "2"]
    np.testing.assert_allclose(
        [p["score"] for p in passages], [2 / np.sqrt(6), 0.5, 0.0], atol=1e-6
    )


def test_build_batches_do_not_change_embeddings(corpus, dense):
    whole = DenseRetriever.build(corpus, bag_of_words, bag_of_words, batch_size=100)
    np.testing.assert_array_equal(whole.embeddings, dense.embeddings)


def test_ties_in_corpus_order_and_topk_above_corpus_size(dense, corpus):
    (passages,) = dense.retrieve(["nothing in the vocabulary"], topk=50)
    assert [p["id"] for p in passages] == [d["id"] for d in corpus]
    assert dense.retrieve([], topk=3) == []


def test_save_load_round_trip(dense, tmp_path):
    dense.save(tmp_path / "dense")
    loaded = DenseRetriever.load(tmp_path / "dense", bag_of_words)
    queries = ["river", "python mountain", "capital"]
    assert loaded.retrieve(queries, topk=6) == dense.retrieve(queries, topk=6)
    with pytest.raises(FileNotFoundError, match="no prm dense index"):
        DenseRetriever.load(tmp_path, bag_of_words)


def test_shape_errors(corpus):
    with pytest.raises(ValueError, match=r"embeddings must be \[6, dim\]"):
        DenseRetriever(corpus, np.zeros((5, 3)), bag_of_words)
    retriever = DenseRetriever(corpus, np.zeros((6, 3)), bag_of_words)
    with pytest.raises(ValueError, match="dim 6, passages 3"):
        retriever.retrieve(["capital"], topk=1)
    with pytest.raises(ValueError, match=r"must return \[2, dim\]"):
        DenseRetriever.build(corpus[:2], lambda texts: np.zeros((1, 3)), bag_of_words)


def test_missing_sentence_transformers_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"prm\[dense\]"):
        SentenceTransformerEncoder(tmp_path)


def _save_tiny_sentence_transformer(directory):
    """A randomly initialised 2-layer BERT with a word-level tokenizer, built offline."""
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "query", "passage", ":"]
    words += sorted(
        {w for t in ["capital germany france mountain river python"] for w in t.split()}
    )
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory / "bert")
    hf_tokenizer.save_pretrained(directory / "bert")
    transformer = models.Transformer(str(directory / "bert"), max_seq_length=32)
    pooling = models.Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(directory / "st"))
    return directory / "st"


@pytest.mark.slow  # ~30 s: imports torch and sentence-transformers, builds a model
def test_sentence_transformers_model_directory(corpus, tmp_path):
    pytest.importorskip(
        "sentence_transformers",
        reason="sentence-transformers is the optional extra prm[dense]; not installed here",
    )
    model_dir = _save_tiny_sentence_transformer(tmp_path)
    retriever = DenseRetriever.from_sentence_transformers(
        model_dir, corpus, query_prefix="", passage_prefix=""
    )
    np.testing.assert_allclose(np.linalg.norm(retriever.embeddings, axis=1), 1.0, rtol=1e-5)
    # With equal prefixes a passage's own text embeds to itself: inner product 1, ranked first.
    (passages,) = retriever.retrieve([corpus[3]["contents"]], topk=2)
    assert passages[0]["id"] == corpus[3]["id"]
    assert passages[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_query_blocks_do_not_change_results(dense, monkeypatch):
    queries = ["capital germany", "river", "python mountain", "france"]
    whole = dense.retrieve(queries, topk=3)
    # 6 scores per block over 6 documents: one query per block.
    monkeypatch.setattr(dense_module, "_SCORES_PER_BLOCK", 6)
    assert dense.retrieve(queries, topk=3) == whole
