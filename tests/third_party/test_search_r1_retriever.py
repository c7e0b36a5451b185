from __future__ import annotations

import json

import pytest

from prm.third_party.search_r1.retriever import (
    DEFAULT_TOPK,
    RequestError,
    RequestLimits,
    ResponseError,
    RetrieveRequest,
    build_response,
    decode_json,
    is_blank,
    parse_request,
    parse_response,
)

PASSAGES = [
    [
        {
            "id": "12",
            "contents": '"Paul Walker"\nPaul William Walker IV was an actor.',
            "score": 8.5,
        },
        {"id": "7", "contents": '"Charger"\nThe Dodge Charger is a car.', "score": 3.25},
    ],
    [],
]


def test_scored_response_shape_is_upstreams():
    assert build_response(PASSAGES, return_scores=True) == {
        "result": [
            [
                {
                    "document": {
                        "id": "12",
                        "contents": '"Paul Walker"\nPaul William Walker IV was an actor.',
                    },
                    "score": 8.5,
                },
                {
                    "document": {"id": "7", "contents": '"Charger"\nThe Dodge Charger is a car.'},
                    "score": 3.25,
                },
            ],
            [],
        ]
    }


def test_unscored_response_shape_is_a_list_of_documents():
    assert build_response(PASSAGES, return_scores=False) == {
        "result": [
            [
                {"id": "12", "contents": '"Paul Walker"\nPaul William Walker IV was an actor.'},
                {"id": "7", "contents": '"Charger"\nThe Dodge Charger is a car.'},
            ],
            [],
        ]
    }


@pytest.mark.parametrize("return_scores", [True, False])
def test_parse_response_inverts_build_response_through_json(return_scores):
    payload = json.loads(json.dumps(build_response(PASSAGES, return_scores)))
    parsed = parse_response(payload, num_queries=2, return_scores=return_scores)
    if return_scores:
        assert parsed == PASSAGES
    else:
        assert parsed == [
            [{"id": p["id"], "contents": p["contents"]} for p in ps] for ps in PASSAGES
        ]


def test_parse_response_accepts_upstream_raw_bm25_documents():
    # Upstream's BM25 path over raw documents answers {"title", "text", "contents"} and no id.
    payload = {
        "result": [
            [{"document": {"title": "T", "text": "x", "contents": '"T"\nx'}, "score": 2}],
        ]
    }
    parsed = parse_response(payload, num_queries=1, return_scores=True)
    assert parsed == [[{"id": "", "contents": '"T"\nx', "score": 2.0}]]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], '"result" list'),
        ({"result": {}}, '"result" list'),
        ({"result": [[]]}, "answers 1 queries, 2 were sent"),
        ({"result": [[], 3]}, r"result\[1\] must be a list"),
        ({"result": [[{"id": "1", "contents": "c"}], []]}, '"document"'),
        ({"result": [[{"document": {"id": "1", "contents": "c"}, "score": True}], []]}, "number"),
        ({"result": [[{"document": {"id": "1", "contents": "c"}}], []]}, "number"),
        ({"result": [[{"document": {"id": "1"}, "score": 1.0}], []]}, '"contents"'),
        (
            {"result": [[{"document": {"id": "1", "contents": "c"}, "score": 10**400}], []]},
            "finite",
        ),
    ],
)
def test_parse_response_rejects_off_protocol_bodies(payload, message):
    with pytest.raises(ResponseError, match=message):
        parse_response(payload, num_queries=2, return_scores=True)


@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_parse_response_rejects_scores_that_are_not_finite(score):
    # json.loads reads these non-standard tokens (and 1e999) as floats; they must not pass on.
    body = '{"result": [[{"document": {"id": "1", "contents": "c"}, "score": SCORE}]]}'
    body = body.replace("SCORE", score)
    with pytest.raises(ResponseError, match=r'result\[0\]\[0\]: "score" must be a finite number'):
        parse_response(json.loads(body), num_queries=1, return_scores=True)


def test_request_body_is_what_search_r1s_trainer_sends():
    # search_r1/llm_agent/generation.py `_batch_search` posts exactly these three fields.
    request = RetrieveRequest(("who played in fast and furious?",), topk=3, return_scores=True)
    assert request.to_json() == {
        "queries": ["who played in fast and furious?"],
        "topk": 3,
        "return_scores": True,
    }
    assert parse_request(json.loads(json.dumps(request.to_json()))) == request


def test_request_defaults_follow_upstream():
    # Upstream QueryRequest: topk Optional[int] = None (server --topk, default 3),
    # return_scores: bool = False. Unknown fields (e.g. the rerank server's) are ignored.
    request = parse_request({"queries": ["q"], "topk_rerank": 3})
    assert request == RetrieveRequest(("q",), topk=None, return_scores=False)
    assert DEFAULT_TOPK == 3


LIMITS = RequestLimits(max_queries=3, max_query_chars=10, max_topk=5)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("q", "must be a JSON object"),
        ({}, 'no "queries"'),
        ({"queries": "q"}, "must be a list"),
        ({"queries": ["a", "b", "c", "d"]}, "4 entries, more than the limit 3"),
        ({"queries": [None]}, r'"queries"\[0\] must be a string'),
        ({"queries": ["x" * 11]}, "11 characters, more than the limit 10"),
        ({"queries": ["q"], "topk": 0}, "between 1 and 5, got 0"),
        ({"queries": ["q"], "topk": 6}, "between 1 and 5, got 6"),
        ({"queries": ["q"], "topk": "3"}, "integer or null, got str"),
        ({"queries": ["q"], "topk": False}, "integer or null, got bool"),
        ({"queries": ["q"], "return_scores": 1}, "true or false, got int"),
        ({"queries": ["q"], "return_scores": None}, "true or false, got NoneType"),
    ],
)
def test_parse_request_rejects_bad_requests_with_400(payload, message):
    with pytest.raises(RequestError, match=message) as error:
        parse_request(payload, LIMITS)
    assert error.value.status == 400


def test_empty_and_blank_queries_are_valid_requests():
    # Search-R1's trainer posts every turn, with [] when no row searched, and "" for
    # `<search> </search>`; it reads ["result"] without checking the status.
    assert parse_request({"queries": []}) == RetrieveRequest(())
    request = parse_request({"queries": ["", " \n\t", "q"]})
    assert request.queries == ("", " \n\t", "q")
    assert [is_blank(q) for q in request.queries] == [True, True, False]


@pytest.mark.parametrize("return_scores", [True, False])
def test_empty_answers_have_the_same_shape_either_way(return_scores):
    assert build_response([], return_scores) == {"result": []}
    assert build_response([[], []], return_scores) == {"result": [[], []]}
    assert parse_response({"result": []}, num_queries=0, return_scores=return_scores) == []


def test_limits_are_inclusive():
    request = parse_request({"queries": ["x" * 10] * 3, "topk": 5}, LIMITS)
    assert len(request.queries) == 3 and request.topk == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'{"queries": [', "not valid JSON"),
        # json.loads raises RecursionError and a plain ValueError for these two.
        (b"[" * 100_000, "nests JSON arrays or objects too deeply"),
        (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
        (b'{"a": ' * 100_000, "too deeply"),
        (b'{"queries": ["q"], "topk": ' + b"7" * 5000 + b"}", "integer longer than 4300 digits"),
    ],
)
def test_decode_json_errors(body, message):
    with pytest.raises(RequestError, match=message):
        decode_json(body)
    assert decode_json(b'{"queries": ["\xc3\xa9"]}') == {"queries": ["é"]}
