"""A client for any server speaking Search-R1's `POST /retrieve` protocol (prm's or upstream's).

It implements the same `retrieve(queries, topk)` as the in-process retrievers, splits large
batches over several requests, and retries connection errors, timeouts and 5xx/429 answers with
exponential backoff; other 4xx answers are the caller's mistake and raise at once.

Retriever servers run beside the trainer (Search-R1 starts one per node) and speak plain HTTP, so
requests go direct over `http.client`: no TLS, and no HTTP proxy from the environment.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import time
import urllib.parse
from collections.abc import Callable, Sequence

from prm.envs.retrieval.base import Passage, check_retrieve_args
from prm.third_party.search_r1.retriever import (
    JSONBodyError,
    ResponseError,
    RetrieveRequest,
    load_json_body,
    parse_response,
)

logger = logging.getLogger(__name__)

# 429 (Too Many Requests) is the one 4xx worth retrying: the request was fine, the server busy.
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class RetrievalError(RuntimeError):
    """The server refused a request, answered off-protocol, or stayed unreachable after retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    """An attempt that failed in a way a later attempt may not."""


class RetrievalClient:
    """`Retriever` over HTTP.

    Each attempt (connecting, sending, and every read of the answer) ends within `timeout_s` of
    its start, however slowly the server trickles bytes. Attempt `i` (0-based) that fails
    retryably is followed, after `min(backoff_max_s, backoff_base_s * 2**i) * U(1 - jitter,
    1 + jitter)` seconds, by another, up to `max_retries` retries per request; so one request
    (one batch of queries) ends within `request_budget_s`. Host names are resolved outside that
    bound; Search-R1's URL names an address (127.0.0.1). Thread-safe: each attempt opens its own
    connection.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000/retrieve",
        *,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        jitter: float = 0.1,
        max_queries_per_request: int = 512,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if timeout_s <= 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be positive and the backoff times nonnegative.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}.")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}.")
        if max_queries_per_request < 1:
            raise ValueError(
                f"max_queries_per_request must be >= 1, got {max_queries_per_request}."
            )
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"url must be http://host[:port]/path, got {url!r}; retriever servers speak plain "
                "HTTP (put a TLS proxy beside the trainer to reach a remote one)."
            )
        self._host, self._port = parts.hostname, parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.url = url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.jitter = jitter
        self.max_queries_per_request = max_queries_per_request
        self._sleep = sleep
        self._rng = random.Random(seed)

    def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-`topk` passages per query, asking the server for scores (as Search-R1's trainer does)."""
        check_retrieve_args(queries, topk)
        results: list[list[Passage]] = []
        step = self.max_queries_per_request
        for start in range(0, len(queries), step):
            batch = list(queries[start : start + step])
            request = RetrieveRequest(tuple(batch), topk, return_scores=True)
            payload = self.post(request)
            try:
                parsed = parse_response(payload, num_queries=len(batch), return_scores=True)
            except ResponseError as e:
                raise RetrievalError(f"{self.url} answered off-protocol: {e}") from e
            results.extend([Passage(**p) for p in passages] for passages in parsed)
        return results

    @property
    def request_budget_s(self) -> float:
        """The longest one request can take: every attempt timing out, every backoff maximal."""
        backoffs = sum(
            min(self.backoff_max_s, self.backoff_base_s * 2**i) for i in range(self.max_retries)
        )
        return (self.max_retries + 1) * self.timeout_s + backoffs * (1 + self.jitter)

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return delay * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    def post(self, request: RetrieveRequest) -> object:
        """Sends one request with retries and returns the decoded JSON answer."""
        body = json.dumps(request.to_json()).encode("utf-8")
        attempt = 0
        while True:
            try:
                return self._post_once(body)
            except _Retryable as e:
                if attempt == self.max_retries:
                    raise RetrievalError(
                        f"{self.url} failed {attempt + 1} times; last error: {e}"
                    ) from e
                delay = self.backoff_s(attempt)
                logger.warning(
                    "retrieval attempt %d failed (%s); retrying in %.2f s", attempt, e, delay
                )
                self._sleep(delay)
                attempt += 1

    def _post_once(self, body: bytes) -> object:
        connection = _DeadlineConnection(self._host, self._port, time.monotonic() + self.timeout_s)
        try:
            connection.request(
                "POST", self._target, body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            status, data = response.status, response.read()
        except TimeoutError as e:
            raise _Retryable(f"no complete answer within timeout_s={self.timeout_s}") from e
        except (http.client.HTTPException, OSError) as e:
            # Refused or reset connections, and answers cut off mid-way.
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        finally:
            connection.close()
        if status in _RETRYABLE_STATUSES:
            raise _Retryable(f"HTTP {status}: {_error_detail(data)}")
        if not 200 <= status < 300:
            raise RetrievalError(
                f"{self.url} refused the request: HTTP {status}: {_error_detail(data)}", status
            )
        try:
            return load_json_body(data)
        except JSONBodyError as e:
            raise RetrievalError(f"{self.url} answered with a body that is not JSON: {e}") from e


def _remaining_s(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return remaining


class _DeadlineSocket(socket.socket):
    """A socket whose every send and receive times out at `deadline` (a `time.monotonic()`).

    A socket timeout alone bounds each `recv`, and `http.client` reads an answer in many of them
    (line by line, then the body), so a server that trickles bytes could hold an attempt for ever.
    """

    deadline: float

    @classmethod
    def adopt(cls, sock: socket.socket, deadline: float) -> _DeadlineSocket:
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.deadline = deadline
        return adopted

    def recv(self, *args):
        self.settimeout(_remaining_s(self.deadline))
        return super().recv(*args)

    def recv_into(self, *args):
        self.settimeout(_remaining_s(self.deadline))
        return super().recv_into(*args)

    def sendall(self, *args):
        # sendall's timeout bounds the whole call (Python >= 3.5), not each chunk.
        self.settimeout(_remaining_s(self.deadline))
        return super().sendall(*args)


class _DeadlineConnection(http.client.HTTPConnection):
    """An HTTP connection whose connect, sends and reads all end by `deadline`."""

    def __init__(self, host: str, port: int | None, deadline: float) -> None:
        super().__init__(host, port)
        self.deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), _remaining_s(self.deadline))
        self.sock = _DeadlineSocket.adopt(sock, self.deadline)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _error_detail(body: bytes) -> str:
    """The `detail` of an error answer (FastAPI's key), else the start of the body."""
    try:
        payload = load_json_body(body)
    except JSONBodyError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return json.dumps(payload)[:200]
