"""A client for any server speaking Search-R1's `POST /retrieve` protocol (prm's or upstream's).

It implements the same `retrieve(queries, topk)` as the in-process retrievers, splits large
batches over several requests, and retries connection errors, timeouts and 5xx/429 answers with
exponential backoff; other 4xx answers are the caller's mistake and raise at once.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from prm.envs.retrieval.base import Passage, check_retrieve_args
from prm.third_party.search_r1.retriever import (
    ResponseError,
    RetrieveRequest,
    parse_response,
)

logger = logging.getLogger(__name__)

# 429 (Too Many Requests) is the one 4xx worth retrying: the request was fine, the server busy.
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Retriever servers run beside the trainer (Search-R1 starts one per node), so requests go
# direct: an HTTP proxy configured in the environment for outside traffic must not see them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RetrievalError(RuntimeError):
    """The server refused a request, answered off-protocol, or stayed unreachable after retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    """An attempt that failed in a way a later attempt may not."""


class RetrievalClient:
    """`Retriever` over HTTP.

    Attempt `i` (0-based) that fails retryably is followed, after
    `min(backoff_max_s, backoff_base_s * 2**i) * U(1 - jitter, 1 + jitter)` seconds, by another,
    up to `max_retries` retries per request. Thread-safe: each request opens its own connection.
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
        http_request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with _OPENER.open(http_request, timeout=self.timeout_s) as response:
                data = response.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code in _RETRYABLE_STATUSES:
                raise _Retryable(f"HTTP {e.code}: {detail}") from e
            raise RetrievalError(
                f"{self.url} refused the request: HTTP {e.code}: {detail}", e.code
            ) from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            # URLError wraps refused/reset connections; timeouts and resets mid-read are OSErrors.
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RetrievalError(f"{self.url} answered with a body that is not JSON: {e}") from e


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read()
    except OSError:
        return error.reason
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body[:200].decode("utf-8", "replace")
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return json.dumps(payload)[:200]
