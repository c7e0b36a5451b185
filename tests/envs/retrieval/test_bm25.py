from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import bm25s
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prm.envs.retrieval import BM25Retriever, save_corpus

from .conftest import CORPUS


def test_the_answering_passage_ranks_first(bm25, known_answers):
    for query, answer_id in known_answers:
        (passages,) = bm25.retrieve([query], topk=3)
        assert passages[0]["id"] == answer_id, query
        assert passages[0]["score"] > passages[1]["score"], query


def test_scores_match_the_lucene_bm25_formula_by_hand():
    # Documents (no stopwords): d0 = [apple, banana] (|d|=2), d1 = [apple, apple, cherry] (3),
    # d2 = [cherry, date] (2); N = 3, avgdl = 7/3, k1 = 0.9, b = 0.4.
    # idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)); idf(apple) = ln(1 + 1.5/2.5) = ln 1.6.
    # tf part = tf / (tf + k1 * (1 - b + b * |d| / avgdl)):
    #   d0: 1 / (1 + 0.9 * (0.6 + 0.4 * 2 / (7/3))),  d1: 2 / (2 + 0.9 * (0.6 + 0.4 * 3 / (7/3))).
    retriever = BM25Retriever(
        [
            {"id": "d0", "contents": "apple banana"},
            {"id": "d1", "contents": "apple apple cherry"},
            {"id": "d2", "contents": "cherry date"},
        ],
        stopwords=[],
    )
    avgdl = 7 / 3
    idf_apple = math.log(1.6)
    d0 = idf_apple * 1 / (1 + 0.9 * (0.6 + 0.4 * 2 / avgdl))
    d1 = idf_apple * 2 / (2 + 0.9 * (0.6 + 0.4 * 3 / avgdl))
    np.testing.assert_allclose(retriever.scores("apple"), [d0, d1, 0.0], rtol=1e-5)
    (passages,) = retriever.retrieve(["apple"], topk=2)
    assert [p["id"] for p in passages] == ["d1", "d0"]
    assert passages[0]["score"] == pytest.approx(d1, rel=1e-5)


def test_ties_keep_corpus_order():
    corpus = [{"id": str(i), "contents": "same words here"} for i in range(5)]
    retriever = BM25Retriever(corpus)
    (passages,) = retriever.retrieve(["words"], topk=3)
    assert [p["id"] for p in passages] == ["0", "1", "2"]


def test_a_query_with_no_indexed_term_scores_zero_in_corpus_order(bm25):
    (passages,) = bm25.retrieve(["zzzqqq the of"], topk=2)
    assert [(p["id"], p["score"]) for p in passages] == [("0", 0.0), ("1", 0.0)]


def test_topk_above_corpus_size_returns_every_passage_once(bm25, corpus):
    (passages,) = bm25.retrieve(["capital"], topk=100)
    assert sorted(p["id"] for p in passages) == sorted(d["id"] for d in corpus)


def test_passages_carry_the_corpus_row(bm25, corpus):
    (passages,) = bm25.retrieve(["Everest"], topk=1)
    assert passages == [{**corpus[2], "score": passages[0]["score"]}]
    assert isinstance(passages[0]["score"], float)


def test_batch_equals_one_query_at_a_time_and_threads(bm25, known_answers):
    queries = [q for q, _ in known_answers]
    batched = bm25.retrieve(queries, topk=4)
    assert batched == [bm25.retrieve([q], topk=4)[0] for q in queries]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda q: bm25.retrieve([q], topk=4)[0], queries * 5))
    assert threaded == batched * 5


def test_save_load_round_trip(bm25, known_answers, tmp_path):
    bm25.save(tmp_path / "index")
    loaded = BM25Retriever.load(tmp_path / "index")
    queries = [q for q, _ in known_answers]
    assert loaded.retrieve(queries, topk=6) == bm25.retrieve(queries, topk=6)


def test_load_refuses_a_missing_or_mismatched_index(bm25, corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no prm BM25 index"):
        BM25Retriever.load(tmp_path)
    bm25.save(tmp_path / "index")
    save_corpus(corpus[:2], tmp_path / "index" / "corpus.jsonl")
    with pytest.raises(ValueError, match="covers 6 documents"):
        BM25Retriever.load(tmp_path / "index")


def test_from_jsonl(corpus, tmp_path):
    save_corpus(corpus, tmp_path / "c.jsonl")
    retriever = BM25Retriever.from_jsonl(tmp_path / "c.jsonl")
    assert retriever.retrieve(["Everest"], topk=1)[0][0]["id"] == "2"


def test_no_queries_no_results(bm25):
    assert bm25.retrieve([], topk=3) == []


def test_bad_arguments(bm25):
    with pytest.raises(TypeError, match="wrap a single query"):
        bm25.retrieve("capital", topk=1)
    with pytest.raises(ValueError, match="topk"):
        bm25.retrieve(["capital"], topk=0)


# Every corpus word (stopwords included) and one word no document has.
WORDS = sorted({w for d in CORPUS for w in re.findall(r"\w\w+", d["contents"].lower())} | {"zzz"})


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5), topk=st.integers(1, 8))
def test_ranking_equals_bm25s_dense_scoring_sorted_by_score_then_index(bm25, words, topk):
    # Independent reference: bm25s's own dense per-query scores, fully sorted on (-score, index).
    query = " ".join(words)
    reference = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    reference.index(
        bm25s.tokenize([d["contents"] for d in CORPUS], stopwords="en", show_progress=False),
        show_progress=False,
    )
    tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
    token_ids = reference.get_tokens_ids(tokens)
    dense = reference.get_scores_from_ids(token_ids) if token_ids else np.zeros(len(CORPUS))
    expected = sorted(range(len(CORPUS)), key=lambda i: (-dense[i], i))[:topk]
    (passages,) = bm25.retrieve([query], topk=topk)
    assert [int(p["id"]) for p in passages] == expected
    np.testing.assert_allclose([p["score"] for p in passages], dense[expected], rtol=1e-6)
