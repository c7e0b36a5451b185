from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prm.envs.retrieval.base import (
    check_retrieve_args,
    load_corpus,
    save_corpus,
    to_documents,
    top_k_indices,
)


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.integers(min_value=-3, max_value=3), min_size=1, max_size=40),
    k=st.integers(min_value=1, max_value=50),
)
def test_top_k_indices_matches_a_full_sort_with_ties_in_index_order(scores, k):
    # Few distinct values force many ties; the reference is a plain sort on (-score, index).
    expected = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    got = top_k_indices(np.asarray(scores, dtype=np.float32), k)
    assert got.tolist() == expected


def test_top_k_indices_rejects_2d_scores():
    with pytest.raises(ValueError, match="1-D"):
        top_k_indices(np.zeros((2, 3)), 1)


@pytest.mark.parametrize(
    ("queries", "topk", "error"),
    [
        ("a single string", 3, TypeError),
        (["ok", 3], 3, TypeError),
        (["ok"], 0, ValueError),
        (["ok"], True, ValueError),
        (["ok"], 2.0, ValueError),
    ],
)
def test_check_retrieve_args_rejects_bad_input(queries, topk, error):
    with pytest.raises(error):
        check_retrieve_args(queries, topk)


def test_corpus_round_trip_and_title_text_rows(tmp_path):
    rows = [
        {"id": 7, "contents": '"A"\nfirst'},
        {"id": "x", "title": "B", "text": "second"},
    ]
    documents = to_documents(rows)
    assert documents == [
        {"id": "7", "contents": '"A"\nfirst'},
        {"id": "x", "contents": '"B"\nsecond'},
    ]
    path = tmp_path / "corpus.jsonl"
    save_corpus(documents, path)
    assert load_corpus(path) == documents


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "1", "contents": "ok"}', "{not json"], r"corpus.jsonl:2: not valid JSON"),
        (['{"id": "1"}'], r"corpus.jsonl:1: corpus row needs 'contents'"),
        (['{"contents": "no id"}'], r"corpus.jsonl:1: corpus row has no 'id'"),
        (['{"id": "1", "contents": 5}'], r"'contents' must be a string"),
        (["[1, 2]"], r"must be a JSON object"),
        ([""], r"has no rows"),
    ],
)
def test_load_corpus_names_the_bad_line(tmp_path, lines, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        load_corpus(path)


def test_empty_in_memory_corpus_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        to_documents([])


def test_saved_corpus_is_one_json_object_per_line(tmp_path):
    path = tmp_path / "c.jsonl"
    save_corpus([{"id": "1", "contents": '"T"\nline one\nline two'}], path)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": "1", "contents": '"T"\nline one\nline two'}
    ]
