"""The HTTP judge against a scripted OpenAI-compatible server on 127.0.0.1.

The stub's behaviour per request is chosen by a marker in the prompt (the candidate's think
text). It answers at most MAX_STUB_REQUESTS requests and shuts itself down after
MAX_STUB_LIFETIME_S seconds.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prm.judges import HttpJudge, JudgeRequest, make_judge
from prm.third_party.openai_chat import ChatRequest, RequestError, build_error, build_response

MAX_STUB_REQUESTS = 200
MAX_STUB_LIFETIME_S = 60.0
TIMEOUT_S = 0.5
HANG_S = 1.5  # longer than TIMEOUT_S
SECRET = "sk-test-4f1d9c2b-never-show-me"

REPLIES = {  # the stub's answer to a well-behaved prompt, by prompt kind
    "Current Thinking Step": "<explanation>clear</explanation><score>+1</score>",
    "Generated Query": "<explanation>vague</explanation><score>-1</score>",
    "Predicted Answer": "<explanation>close</explanation><score>0</score>",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # a listen backlog for every concurrent client (default 5)


class ChatStub:
    """Markers: [ok], [500-once], [hang-once], [drop-once], [always-503], [400-echo] (a 400 whose
    message echoes the Authorization header), [garbage-body] (a 200 that is not JSON),
    [no-score] (a chat reply without a score), [trickle] (20 body bytes, one per 0.1 s), [slow]
    (0.2 s before answering)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        self.attempts = collections.Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                with stub.lock:
                    stub.in_flight += 1
                    stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
                try:
                    stub.handle(self)
                except OSError:
                    pass  # the client gave up (timeouts)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.deadline = threading.Timer(MAX_STUB_LIFETIME_S, self.httpd.shutdown)
        self.deadline.daemon = True
        self.deadline.start()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        with self.lock:
            index = len(self.requests)
            payload = json.loads(body)
            self.requests.append(payload)
            self.authorizations.append(handler.headers.get("Authorization"))
        if index >= MAX_STUB_REQUESTS or handler.path != "/v1/chat/completions":
            return self.send(handler, 400, build_error("request limit or wrong path"))
        try:
            request = ChatRequest.from_json(payload)
        except RequestError as e:
            return self.send(handler, 400, build_error(str(e), "invalid_request_error"))
        prompt = request.messages[-1][1]
        with self.lock:
            self.attempts[prompt] += 1
            first = self.attempts[prompt] == 1
        if "[500-once]" in prompt and first:
            return self.send(handler, 500, build_error("scripted 500"))
        if "[hang-once]" in prompt and first:
            time.sleep(HANG_S)
        if "[drop-once]" in prompt and first:
            handler.close_connection = True
            handler.connection.close()
            return None
        if "[always-503]" in prompt:
            return self.send(handler, 503, build_error("scripted 503"))
        if "[400-echo]" in prompt:
            echo = f"bad request with header {handler.headers.get('Authorization')}"
            return self.send(handler, 400, build_error(echo, "invalid_request_error"))
        if "[garbage-body]" in prompt:
            return self.send_raw(handler, 200, b"<html>not json</html>")
        if "[slow]" in prompt:
            time.sleep(0.2)
        if "[no-score]" in prompt:
            content = "I think it is fine."
        else:
            content = next(reply for key, reply in REPLIES.items() if key in prompt)
        data = json.dumps(build_response(content, request.model)).encode()
        if "[trickle]" in prompt:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            for byte in data[:20]:  # 2 s in all, far past the timeout
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.1)
            return None
        return self.send(handler, 200, json.loads(data))

    def send(self, handler, status: int, body: dict) -> None:
        self.send_raw(handler, status, json.dumps(body).encode())

    def send_raw(self, handler, status: int, data: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.deadline.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stub():
    server = ChatStub()
    yield server
    server.close()


class RecordedSleep:
    def __init__(self):
        self.delays: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self.lock:
            self.delays.append(seconds)


def make(stub, tmp_path, **options) -> HttpJudge:
    settings = dict(
        model="judge-model",
        timeout_s=TIMEOUT_S,
        max_retries=2,
        backoff_base_s=0.01,
        cache_dir=str(tmp_path / "cache"),
        sleep=RecordedSleep(),
    )
    return HttpJudge(stub.base_url, **{**settings, **options})


def requests_with(markers, kind="search"):
    return [
        JudgeRequest(
            context="Question: Who founded Gusto Labs?",
            think=f"I need the founder of Gusto Labs. {marker}",
            kind=kind,
            content="founder of Gusto Labs",
            step_index=0,
            golden_answers=("Brustu Kivo",),
        )
        for marker in markers
    ]


ANSWERABLE = ["[ok]", "[500-once]", "[hang-once]", "[drop-once]", "[no-score]"]
UNANSWERABLE = ["[always-503]", "[400-echo]", "[garbage-body]"]


def test_every_failure_is_retried_or_counted_and_gets_the_neutral_score(stub, tmp_path):
    judge = make(stub, tmp_path)
    start = time.monotonic()
    judgements = judge.judge(requests_with(ANSWERABLE + UNANSWERABLE))
    elapsed = time.monotonic() - start
    scores = [(j.reasoning, j.action, j.reasoning_invalid, j.action_invalid) for j in judgements]
    good, neutral = (1, -1, False, False), (0, 0, True, True)
    assert scores == [good] * 4 + [neutral] * 4
    # Per marker, 2 prompts each: [ok] 1 attempt; [500-once], [hang-once], [drop-once] 2;
    # [no-score] 1; [always-503] 3 (max_retries = 2); [400-echo], [garbage-body] 1 (final).
    assert judge.stats.snapshot() == {
        "prompts": 16,
        "cache_hits": 0,
        "requests": 2 * (1 + 2 + 2 + 2 + 1 + 3 + 1 + 1),
        "retries": 2 * (1 + 1 + 1 + 2),
        "timeouts": 2,
        "connection_errors": 2,
        "http_errors": 2 * (1 + 3 + 1),
        "bad_responses": 2,
        "failed": 2 * 3,
        "unparseable": 2,
        "fallbacks": 2 * 4,
    }
    assert len(stub.requests) == 26
    # Exponential backoff: attempt 0 waits ~0.01 s, attempt 1 ~0.02 s (x U(0.9, 1.1)).
    delays = sorted(judge._sleep.delays)
    assert len(delays) == 10
    assert all(0.009 <= d <= 0.011 for d in delays[:8])
    assert all(0.018 <= d <= 0.022 for d in delays[8:])
    assert elapsed < 5.0  # one timeout of 0.5 s; the rest is fast


def test_requests_follow_the_chat_completions_shape(stub, tmp_path):
    judge = make(stub, tmp_path, temperature=0.0, max_tokens=64)
    judge.judge(requests_with(["[ok]"], kind="answer"))
    assert len(stub.requests) == 2
    for payload in stub.requests:
        assert set(payload) == {"model", "messages", "temperature", "max_tokens"}
        assert payload["model"] == "judge-model"
        assert payload["temperature"] == 0.0 and payload["max_tokens"] == 64
        assert [m["role"] for m in payload["messages"]] == ["user"]
    prompts = [p["messages"][0]["content"] for p in stub.requests]
    assert sum("Current Thinking Step: I need the founder" in p for p in prompts) == 1
    assert sum("Predicted Answer: founder of Gusto Labs" in p for p in prompts) == 1


def test_the_cache_answers_a_repeated_batch_without_requests(stub, tmp_path):
    first = make(stub, tmp_path)
    requests = requests_with(ANSWERABLE)
    expected = first.judge(requests)
    sent = len(stub.requests)
    assert first.judge(requests) == expected
    assert len(stub.requests) == sent
    assert first.stats["cache_hits"] == 10
    first.close()
    # A resumed run: a new judge over the same cache directory.
    resumed = make(stub, tmp_path)
    assert resumed.judge(requests) == expected
    assert len(stub.requests) == sent
    assert resumed.stats["requests"] == 0 and resumed.stats["cache_hits"] == 10
    # Another model (or other sampling parameters) is another key.
    make(stub, tmp_path, model="other-model").judge(requests[:1])
    assert len(stub.requests) == sent + 2


def test_identical_prompts_in_one_batch_are_sent_once(stub, tmp_path):
    judge = make(stub, tmp_path, cache_dir="")
    judgements = judge.judge(requests_with(["[ok]"] * 5))
    assert len(stub.requests) == 2
    assert len(set(judgements)) == 1 and judge.stats["cache_hits"] == 8


def test_requests_run_concurrently_up_to_the_limit(stub, tmp_path):
    judge = make(stub, tmp_path, cache_dir="", concurrency=4)
    judge.judge(requests_with([f"[slow] {i}" for i in range(6)]))
    assert len(stub.requests) == 12
    assert 2 <= stub.peak_in_flight <= 4


def test_the_timeout_bounds_the_whole_request(stub, tmp_path):
    """A server that sends a byte every 0.1 s never trips a per-read timeout of 0.5 s."""
    judge = make(stub, tmp_path, cache_dir="", max_retries=0)
    start = time.monotonic()
    (judgement,) = judge.judge(requests_with(["[trickle]"]))
    elapsed = time.monotonic() - start
    assert judgement.reasoning_invalid and judgement.action_invalid
    assert judge.stats["timeouts"] == 2 and judge.stats["failed"] == 2
    assert elapsed < TIMEOUT_S + 0.5  # the trickle would take 2 s


def test_the_api_key_is_sent_but_never_shown_or_stored(stub, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PRM_TEST_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    judge = make_judge(
        {
            "name": "http",
            "base_url": stub.base_url,
            "model": "judge-model",
            "timeout_s": TIMEOUT_S,
            "max_retries": 1,
            "backoff_base_s": 0.0,
            "cache_dir": str(tmp_path / "cache"),
            "api_key_env": "PRM_TEST_JUDGE_KEY",
        }
    )
    judge.judge(requests_with(ANSWERABLE + UNANSWERABLE))
    judge.close()
    assert set(stub.authorizations) == {f"Bearer {SECRET}"}
    assert "bad request with header Bearer ***" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in repr(judge) and SECRET not in str(judge)
    files = [p for p in (tmp_path / "cache").iterdir() if p.is_file()]
    assert files
    assert all(SECRET.encode() not in p.read_bytes() for p in files)


def test_no_key_variable_means_no_authorization(stub, tmp_path, monkeypatch):
    monkeypatch.delenv("PRM_TEST_JUDGE_KEY", raising=False)
    judge = make(stub, tmp_path, api_key_env="PRM_TEST_JUDGE_KEY")
    judge.judge(requests_with(["[ok]"]))
    assert stub.authorizations == [None, None]


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="http"):
        HttpJudge("ftp://example.org/v1")
    with pytest.raises(ValueError, match="concurrency"):
        HttpJudge(concurrency=0)
    with pytest.raises(ValueError, match="temperature"):
        HttpJudge(temperature=-1.0)
