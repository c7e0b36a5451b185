from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prm.envs.retrieval import RetrievalClient, RetrievalError, Retriever
from prm.third_party.search_r1.retriever import build_response

MAX_STUB_REQUESTS = 20


class StubServer:
    """A scripted loopback server: answer `i` follows `script[i]`, (status, delay in seconds) or
    (status, delay, raw body) to send that body instead of the one the request asks for.

    Bounded: it answers at most MAX_STUB_REQUESTS requests, each after at most 2 s, and the
    fixture shuts it down.
    """

    def __init__(self, script: list[tuple[int, float]]) -> None:
        self.script = script
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(payload)
                index = len(stub.requests) - 1
                status, delay, *raw = stub.script[min(index, len(stub.script) - 1)]
                if index >= MAX_STUB_REQUESTS:
                    status, delay, raw = 400, 0.0, []
                time.sleep(min(delay, 2.0))
                if status == 200:
                    passages = [
                        [{"id": q, "contents": f'"{q}"\ntext', "score": 1.0}]
                        for q in payload["queries"]
                    ]
                    body = build_response(passages, payload["return_scores"])
                else:
                    body = {"detail": f"scripted {status}"}
                data = raw[0] if raw else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/retrieve"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def stub():
    servers = []

    def start(script):
        servers.append(StubServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def make_client(url, sleeps, **kwargs):
    defaults = {"backoff_base_s": 0.5, "jitter": 0.0, "sleep": sleeps.append, "timeout_s": 5.0}
    return RetrievalClient(url, **{**defaults, **kwargs})


def test_client_against_the_server_equals_in_process_retrieval(server, bm25, known_answers):
    client = RetrievalClient(server.url)
    assert isinstance(client, Retriever)
    queries = [q for q, _ in known_answers]
    assert client.retrieve(queries, topk=4) == bm25.retrieve(queries, topk=4)
    assert client.retrieve([], topk=4) == []


def test_queries_are_batched_into_requests_in_order(stub):
    server = stub([(200, 0.0)])
    client = make_client(server.url, [], max_queries_per_request=2)
    queries = ["a", "b", "c", "d", "e"]
    results = client.retrieve(queries, topk=3)
    assert [r[0]["id"] for r in results] == queries
    assert server.requests == [
        {"queries": ["a", "b"], "topk": 3, "return_scores": True},
        {"queries": ["c", "d"], "topk": 3, "return_scores": True},
        {"queries": ["e"], "topk": 3, "return_scores": True},
    ]


@pytest.mark.parametrize("status", [503, 500, 429])
def test_retryable_statuses_are_retried_with_exponential_backoff(stub, status):
    server = stub([(status, 0.0), (status, 0.0), (200, 0.0)])
    sleeps = []
    results = make_client(server.url, sleeps).retrieve(["q"], topk=1)
    assert results == [[{"id": "q", "contents": '"q"\ntext', "score": 1.0}]]
    assert len(server.requests) == 3
    # Attempt 0 waits 0.5 s, attempt 1 waits 0.5 * 2 = 1.0 s.
    assert sleeps == [0.5, 1.0]


def test_client_errors_are_not_retried(stub):
    server = stub([(400, 0.0)])
    sleeps = []
    with pytest.raises(RetrievalError, match="HTTP 400: scripted 400") as error:
        make_client(server.url, sleeps).retrieve(["q"], topk=1)
    assert error.value.status == 400
    assert len(server.requests) == 1
    assert sleeps == []


def test_a_timed_out_attempt_is_retried(stub):
    server = stub([(200, 2.0), (200, 0.0)])
    sleeps = []
    results = make_client(server.url, sleeps, timeout_s=0.5).retrieve(["q"], topk=1)
    assert results[0][0]["id"] == "q"
    assert len(server.requests) == 2
    assert sleeps == [0.5]


def test_unreachable_server_fails_after_capped_backoff():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on `port` now: every attempt is refused at once.
    sleeps = []
    client = make_client(
        f"http://127.0.0.1:{port}/retrieve",
        sleeps,
        max_retries=4,
        backoff_base_s=1.0,
        backoff_max_s=3.0,
    )
    with pytest.raises(RetrievalError, match="failed 5 times"):
        client.retrieve(["q"], topk=1)
    # min(3, 1 * 2**i) for i = 0..3.
    assert sleeps == [1.0, 2.0, 3.0, 3.0]


def scored_body(score: str) -> bytes:
    entry = '{"document": {"id": "1", "contents": "\\"T\\"\\ntext"}, "score": SCORE}'
    return ('{"result": [[' + entry.replace("SCORE", score) + "], []]}").encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"result": [[]]}', "answers 1 queries, 2 were sent"),
        (scored_body("NaN"), '"score" must be a finite number, got nan'),
        (scored_body("Infinity"), '"score" must be a finite number, got inf'),
        (scored_body("-1e999"), '"score" must be a finite number, got -inf'),
        (b"[" * 100_000, "not JSON: The body nests JSON arrays or objects too deeply"),
        (b'{"result": ' + b"1" * 5000 + b"}", "not JSON: The body holds an integer longer"),
        (b"<html>", "not JSON"),
    ],
)
def test_off_protocol_answer_raises_without_retry(stub, body, message):
    server = stub([(200, 0.0, body)])
    sleeps = []
    with pytest.raises(RetrievalError, match=message):
        make_client(server.url, sleeps).retrieve(["a", "b"], topk=1)
    assert len(server.requests) == 1
    assert sleeps == []


class TricklingServer:
    """Answers each connection one byte every 50 ms, for at most 3 s or until closed.

    `trickle="headers"` trickles from the status line on; `"body"` sends the headers at once
    (announcing a 10 kB body) and trickles the body. Accepts at most `max_connections`.
    """

    def __init__(self, trickle: str, max_connections: int = 4) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/retrieve"
        self.connections = 0
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: 10000\r\n\r\n"
        self.upfront, self.trickled = (b"", head) if trickle == "headers" else (head, b" " * 10000)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(max_connections,), daemon=True)
        self.thread.start()

    def _serve(self, max_connections: int) -> None:
        while not self.stopped.is_set() and self.connections < max_connections:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(self.upfront)
                deadline = time.monotonic() + 3.0
                for byte in self.trickled:
                    if self.stopped.is_set() or time.monotonic() > deadline:
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(0.05)
            except OSError:
                pass  # the client hung up: what the test expects

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.mark.parametrize("trickle", ["headers", "body"])
def test_timeout_bounds_a_whole_attempt_against_a_trickling_server(trickle):
    # Every read gets a byte within 50 ms, so a per-read timeout of 0.5 s never fires.
    server = TricklingServer(trickle)
    try:
        client = RetrievalClient(server.url, timeout_s=0.5, max_retries=0)
        started = time.monotonic()
        with pytest.raises(RetrievalError, match="no complete answer within timeout_s=0.5"):
            client.retrieve(["q"], topk=1)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert 0.5 <= elapsed < 1.5


def test_retries_stay_within_the_request_budget():
    server = TricklingServer("body")
    try:
        client = RetrievalClient(
            server.url, timeout_s=0.3, max_retries=2, backoff_base_s=0.1, jitter=0.5, seed=0
        )
        # Attempts 3 x 0.3 s; backoffs 0.1 and 0.2 s, each at most 1.5 times that.
        assert client.request_budget_s == pytest.approx(3 * 0.3 + 1.5 * (0.1 + 0.2))
        started = time.monotonic()
        with pytest.raises(RetrievalError, match="failed 3 times"):
            client.retrieve(["q"], topk=1)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert server.connections == 3
    assert 0.9 <= elapsed < client.request_budget_s + 0.5


def test_jittered_backoff_stays_within_its_band():
    client = RetrievalClient(backoff_base_s=1.0, backoff_max_s=100.0, jitter=0.25, seed=0)
    for attempt in range(5):
        for _ in range(20):
            assert 0.75 * 2**attempt <= client.backoff_s(attempt) <= 1.25 * 2**attempt


def test_bad_settings_are_rejected():
    for url in ("https://127.0.0.1:8000/retrieve", "127.0.0.1:8000/retrieve", "http:///retrieve"):
        with pytest.raises(ValueError, match="url must be http://host"):
            RetrievalClient(url)
    with pytest.raises(ValueError, match="max_retries"):
        RetrievalClient(max_retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetrievalClient(jitter=1.0)
    with pytest.raises(ValueError, match="max_queries_per_request"):
        RetrievalClient(max_queries_per_request=0)
