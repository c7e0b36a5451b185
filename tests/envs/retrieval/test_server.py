from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prm.envs.retrieval import BM25Retriever, RetrievalClient, RetrievalServer, save_corpus
from prm.third_party.search_r1.retriever import RequestLimits


def raw_request(server, method, path, body=b"", headers=None):
    """One request over a fresh connection; returns (status, decoded JSON body)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post_json(server, payload):
    return raw_request(server, "POST", "/retrieve", json.dumps(payload).encode())


def assert_still_serving(server):
    status, payload = post_json(server, {"queries": ["Everest"], "topk": 1})
    assert status == 200
    assert payload["result"][0][0]["id"] == "2"


def test_binds_loopback_on_an_ephemeral_port(server):
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/retrieve"


def test_scored_response_has_the_upstream_shape(server, bm25):
    queries = ["capital of Germany", "highest mountain"]
    status, payload = post_json(server, {"queries": queries, "topk": 2, "return_scores": True})
    assert status == 200
    expected = {
        "result": [
            [
                {"document": {"id": p["id"], "contents": p["contents"]}, "score": p["score"]}
                for p in passages
            ]
            for passages in bm25.retrieve(queries, topk=2)
        ]
    }
    assert payload == expected


def test_unscored_response_is_a_list_of_documents(server, bm25):
    # Upstream crashes on return_scores=false; here it answers [[{"id", "contents"}, ...]].
    for payload in (
        {"queries": ["capital of Germany"], "topk": 2, "return_scores": False},
        {"queries": ["capital of Germany"], "topk": 2},
    ):
        status, answer = post_json(server, payload)
        assert status == 200
        (passages,) = bm25.retrieve(["capital of Germany"], topk=2)
        assert answer == {
            "result": [[{"id": p["id"], "contents": p["contents"]} for p in passages]]
        }


@pytest.mark.parametrize("return_scores", [True, False])
def test_no_queries_get_an_empty_result(server, return_scores):
    # Search-R1's trainer posts [] on a turn where no row searched and reads ["result"]
    # without checking the status.
    payload = {"queries": [], "topk": 3, "return_scores": return_scores}
    assert post_json(server, payload) == (200, {"result": []})


@pytest.mark.parametrize("return_scores", [True, False])
def test_blank_queries_get_no_passages_and_the_others_theirs(server, return_scores):
    # `<search> </search>` reaches the server as "" (upstream strips the query).
    queries = ["", "highest mountain", " \n\t", "capital of Germany"]
    payload = {"queries": queries, "topk": 2, "return_scores": return_scores}
    searched = post_json(server, {**payload, "queries": [queries[1], queries[3]]})[1]["result"]
    assert post_json(server, payload) == (200, {"result": [[], searched[0], [], searched[1]]})
    assert all(len(passages) == 2 for passages in searched)
    only_blank = {**payload, "queries": ["  "]}
    assert post_json(server, only_blank) == (200, {"result": [[]]})


def test_missing_or_null_topk_uses_the_server_default_of_3(server):
    for payload in ({"queries": ["river"]}, {"queries": ["river"], "topk": None}):
        status, answer = post_json(server, payload)
        assert status == 200
        assert len(answer["result"][0]) == 3


def test_unknown_fields_are_ignored(server):
    status, _ = post_json(server, {"queries": ["river"], "topk_rerank": 3, "extra": {"a": 1}})
    assert status == 200


def test_health(server):
    assert raw_request(server, "GET", "/health") == (200, {"status": "ok", "num_docs": 6})


def test_keep_alive_serves_several_requests_on_one_connection_even_after_a_400(server):
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        for query, expected in [("Everest", "2"), (None, 400), ("Python language", "3")]:
            body = json.dumps({"queries": [query], "topk": 1}).encode()
            connection.request("POST", "/retrieve", body=body)
            response = connection.getresponse()
            payload = json.loads(response.read())
            if expected == 400:
                assert response.status == 400
            else:
                assert response.status == 200
                assert payload["result"][0][0]["id"] == expected
    finally:
        connection.close()


def test_concurrent_clients_get_their_own_answers(server, bm25, known_answers):
    queries = [q for q, _ in known_answers] * 10
    expected = {q: bm25.retrieve([q], topk=2)[0] for q in queries}
    client = RetrievalClient(server.url)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: client.retrieve([q], topk=2)[0], queries))
    assert answers == [expected[q] for q in queries]


LIMITS = RequestLimits()

BAD_BODIES = {
    "invalid JSON": (b"{not json", "not valid JSON"),
    "not UTF-8": (b'{"queries": ["\xff"]}', "not UTF-8"),
    "not an object": (b'["river"]', "must be a JSON object"),
    "no queries": (b'{"topk": 3}', 'no "queries"'),
    "queries not a list": (b'{"queries": "river"}', "must be a list"),
    "query not a string": (b'{"queries": ["river", 3]}', r'"queries"[1] must be a string'),
    # json.loads raises RecursionError / a plain ValueError on these, not JSONDecodeError.
    "deeply nested": (b"[" * 100_000, "too deeply"),
    "deeply nested object": (b'{"queries": ' * 100_000, "too deeply"),
    "5000-digit integer": (
        b'{"queries": ["river"], "topk": ' + b"9" * 5000 + b"}",
        "integer longer than",
    ),
    "huge query": (
        json.dumps({"queries": ["a" * (LIMITS.max_query_chars + 1)]}).encode(),
        "characters",
    ),
    "too many queries": (
        json.dumps({"queries": ["river"] * (LIMITS.max_queries + 1)}).encode(),
        "split them",
    ),
    "topk zero": (b'{"queries": ["river"], "topk": 0}', '"topk" must be between'),
    "topk too large": (
        json.dumps({"queries": ["river"], "topk": LIMITS.max_topk + 1}).encode(),
        '"topk" must be between',
    ),
    "topk a string": (b'{"queries": ["river"], "topk": "3"}', '"topk" must be an integer'),
    "topk a bool": (b'{"queries": ["river"], "topk": true}', '"topk" must be an integer'),
    "topk a float": (b'{"queries": ["river"], "topk": 2.5}', '"topk" must be an integer'),
    "return_scores a string": (
        b'{"queries": ["river"], "return_scores": "yes"}',
        '"return_scores" must be',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_get_400_with_a_message_and_the_server_keeps_serving(server, case):
    body, message = BAD_BODIES[case]
    status, payload = raw_request(server, "POST", "/retrieve", body)
    assert status == 400
    assert message in payload["detail"]
    assert_still_serving(server)


def test_bad_http_framing_gets_4xx_and_the_server_keeps_serving(bm25):
    limits = RequestLimits(max_body_bytes=1000)
    with RetrievalServer(bm25, limits=limits, max_lifetime_s=60).start() as small:
        cases = [
            ("POST", "/retrieve", b"x" * 1001, {}, 413),
            ("POST", "/retrieve", b"{}", {"Content-Length": "-4"}, 400),
            ("POST", "/nowhere", b"{}", {}, 404),
            ("GET", "/retrieve", b"", {}, 405),
            ("GET", "/nowhere", b"", {}, 404),
        ]
        for method, path, body, headers, expected in cases:
            connection = http.client.HTTPConnection(small.host, small.port, timeout=10)
            connection.putrequest(method, path)
            headers = {"Content-Length": str(len(body)), **headers}
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            assert response.status == expected, (method, path, headers)
            assert "detail" in json.loads(response.read())
            connection.close()
        # A body without Content-Length (chunked) and a malformed request line.
        with socket.create_connection((small.host, small.port), timeout=10) as sock:
            sock.sendall(
                b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 411")
        # A request line the standard library cannot parse is answered HTTP/0.9 style: the body
        # alone, then the connection closes.
        with socket.create_connection((small.host, small.port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/x.y\r\n\r\n")
            reply = b"".join(iter(lambda: sock.recv(4096), b""))
            assert "Bad request version" in json.loads(reply)["detail"]
        assert_still_serving(small)


class FailingRetriever:
    def retrieve(self, queries, topk):
        raise RuntimeError("index unavailable")


def test_retriever_failure_is_a_500_and_the_server_keeps_serving():
    with RetrievalServer(FailingRetriever(), max_lifetime_s=60).start() as failing:
        for _ in range(2):
            status, payload = post_json(failing, {"queries": ["river"]})
            assert status == 500
            assert "index unavailable" in payload["detail"]


class CountingRetriever:
    def __init__(self, answer_one_less=False):
        self.calls = []
        self.answer_one_less = answer_one_less

    def retrieve(self, queries, topk):
        self.calls.append(list(queries))
        return [[] for _ in queries[: len(queries) - self.answer_one_less]]


def test_blank_queries_never_reach_the_retriever():
    retriever = CountingRetriever()
    with RetrievalServer(retriever, max_lifetime_s=60).start() as counting:
        assert post_json(counting, {"queries": []}) == (200, {"result": []})
        assert post_json(counting, {"queries": [" ", ""]}) == (200, {"result": [[], []]})
        assert post_json(counting, {"queries": ["a", " ", "b"]}) == (200, {"result": [[], [], []]})
    assert retriever.calls == [["a", "b"]]


def test_a_retriever_answering_too_few_queries_is_a_500():
    with RetrievalServer(CountingRetriever(answer_one_less=True), max_lifetime_s=60).start() as bad:
        status, payload = post_json(bad, {"queries": ["a", "b"]})
    assert status == 500
    assert "answered 1 of 2 queries" in payload["detail"]


def test_idle_and_lifetime_limits_stop_the_server(bm25):
    idle = RetrievalServer(bm25, idle_timeout_s=0.3).start()
    lifetime = RetrievalServer(bm25, max_lifetime_s=0.3).start()
    deadline = time.monotonic() + 10
    while not (idle.stopped and lifetime.stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idle.stopped and lifetime.stopped
    idle.shutdown()
    lifetime.shutdown()
    with pytest.raises(OSError):
        socket.create_connection((idle.host, idle.port), timeout=1).close()


def test_shutdown_before_or_without_serving_returns(bm25):
    RetrievalServer(bm25).shutdown()
    server = RetrievalServer(bm25).start()
    server.shutdown()
    assert server.stopped


def test_constructor_rejects_bad_settings(bm25):
    with pytest.raises(ValueError, match="default_topk"):
        RetrievalServer(bm25, default_topk=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        RetrievalServer(bm25, idle_timeout_s=0)


def test_command_line_server(corpus, tmp_path):
    save_corpus(corpus, tmp_path / "corpus.jsonl")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prm.envs.retrieval.server",
            f"--corpus={tmp_path / 'corpus.jsonl'}",
            f"--index_dir={tmp_path / 'index'}",
            "--port=0",
            "--max_lifetime_s=60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        announced = json.loads(process.stdout.readline())
        assert announced["url"].startswith("http://127.0.0.1:")
        assert announced["num_docs"] == len(corpus)
        port = int(announced["url"].split(":")[2].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/retrieve", body=b'{"queries": ["Everest"], "topk": 1}')
        answer = json.loads(connection.getresponse().read())
        connection.close()
        assert answer == {"result": [[{"id": "2", "contents": corpus[2]["contents"]}]]}
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert BM25Retriever.load(tmp_path / "index").retrieve(["Everest"], topk=1)[0][0]["id"] == "2"


def test_running_the_module_gives_no_runpy_warning():
    # The package must not import the server module before runpy executes it as __main__.
    completed = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "prm.envs.retrieval.server", "-h"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Warning" not in completed.stderr
    assert "--corpus" in completed.stdout
