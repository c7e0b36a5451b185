"""The HTTP judge: SLATE's rubric prompts sent to an OpenAI-compatible chat completions server.

SLATE serves its judge (Gemma-3-27B-it at temperature 0, slate.md §3.2) behind an HTTP API and
sends the 2k prompts of a step in one batch; a failed call scores every prompt 0, with no cache
and no retries. Here each prompt is one `POST {base_url}/chat/completions` request
(`third_party.openai_chat`, as vLLM's and SGLang's servers answer it), and:

- requests run concurrently on a thread pool (`concurrency`), identical prompts once per batch;
- `timeout_s` bounds each whole request (connect, send, wait, read), not each socket operation;
- timeouts, connection errors, 429 and 5xx answers are retried up to `max_retries` times, after
  `min(backoff_max_s, backoff_base_s * 2**attempt) * U(0.9, 1.1)` seconds; other answers are final;
- replies are cached on disk (sqlite under `cache_dir`, one row per reply, each write its own
  transaction) keyed by a hash of (model, messages, temperature, max_tokens), so a resumed run
  asks nothing twice; failed requests are not cached;
- a prompt without a usable reply gets `neutral_score`, flagged invalid (`PromptJudge`);
- the API key is read from the environment variable `api_key_env` (if set) and sent as a bearer
  token. It is never logged, shown by `repr`, or written to the cache.

Counters (`stats`): `prompts`, `cache_hits` (prompts answered without a request), `requests`
(HTTP attempts), `retries`, `timeouts`, `connection_errors`, `http_errors` (non-200 answers),
`bad_responses` (200 answers off-protocol), `failed` (prompts left without a reply),
`unparseable`, `fallbacks` (neutral scores given).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import os
import random
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from prm.judges.base import stable_hash
from prm.judges.prompts import PromptJudge
from prm.registry import JUDGES
from prm.third_party.openai_chat import (
    ChatRequest,
    ResponseError,
    completions_url,
    error_message,
    parse_response,
)

logger = logging.getLogger(__name__)

_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
CACHE_FILE = "chat-cache.sqlite"


class _Retryable(Exception):
    def __init__(self, message: str, counter: str):
        super().__init__(message)
        self.counter = counter


class _Final(Exception):
    def __init__(self, message: str, counter: str):
        super().__init__(message)
        self.counter = counter


class ReplyCache:
    """Replies on disk, keyed by request hash: sqlite in WAL mode, one transaction per write.

    A killed process loses at most the write in flight; several processes may share one file.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        path = Path(directory).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / CACHE_FILE
        self._lock = threading.Lock()
        # Autocommit (isolation_level=None): each INSERT commits on its own.
        self._db = sqlite3.connect(
            self.path, timeout=30.0, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT)")

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, reply FROM replies WHERE key IN ({marks})"
                found.update(self._db.execute(query, chunk).fetchall())
        return found

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, reply))

    def close(self) -> None:
        with self._lock:
            self._db.close()


@JUDGES.register("http")
class HttpJudge(PromptJudge):
    """SLATE's judge over an OpenAI-compatible chat completions server (see the module docstring).

    Args:
      base_url: the API root, e.g. "http://127.0.0.1:8000/v1" (`vllm serve` / SGLang).
      model: the served model name.
      temperature, max_tokens: sampling parameters of every request (SLATE: temperature 0).
      timeout_s: bound on one whole request; max_retries: retries per prompt after the first try.
      backoff_base_s, backoff_max_s: retry delays (see the module docstring).
      concurrency: requests in flight at once.
      cache_dir: directory of the reply cache ("" = no cache).
      api_key_env: the environment variable holding the API key (unset: no Authorization).
      neutral_score: the score of a prompt without a usable reply.
      all_golden_answers: show every gold alias to the answer judge (upstream: the first only).
      sleep: the function that waits between retries (tests pass a fake).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "google/gemma-3-27b-it",
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        concurrency: int = 16,
        cache_dir: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        neutral_score: int = 0,
        all_golden_answers: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(
            neutral_score=neutral_score,
            all_golden_answers=all_golden_answers,
            extra_counters=(
                "cache_hits",
                "requests",
                "retries",
                "timeouts",
                "connection_errors",
                "http_errors",
                "bad_responses",
            ),
        )
        if timeout_s <= 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be positive and the backoff times nonnegative.")
        if max_retries < 0 or concurrency < 1:
            raise ValueError(
                f"Need max_retries >= 0 and concurrency >= 1, got {max_retries}, {concurrency}."
            )
        url = urllib.parse.urlsplit(completions_url(base_url))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}.")
        ChatRequest.user(model, "", temperature=temperature, max_tokens=max_tokens)  # validates
        self.url = url
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.concurrency = concurrency
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self._sleep = sleep
        self._rng = random.Random()
        self.cache = ReplyCache(cache_dir) if cache_dir else None

    def __repr__(self) -> str:
        return (
            f"HttpJudge(url={self.url.geturl()!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> HttpJudge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chat_request(self, prompt: str) -> ChatRequest:
        return ChatRequest.user(
            self.model, prompt, temperature=self.temperature, max_tokens=self.max_tokens
        )

    def complete(self, prompts: Sequence[str]) -> list[str | None]:
        requests = [self.chat_request(p) for p in prompts]
        keys = [stable_hash(r.to_json()) for r in requests]
        replies: dict[str, str | None] = self.cache.get_many(list(set(keys))) if self.cache else {}
        missing = {k: r for k, r in zip(keys, requests) if k not in replies}
        self.stats.add("cache_hits", len(keys) - len(missing))
        if missing:
            workers = min(self.concurrency, len(missing))
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                answers = pool.map(self._ask, missing.values())
                replies.update(zip(missing, answers))
        return [replies[k] for k in keys]

    def _ask(self, request: ChatRequest) -> str | None:
        """The reply to one request (with retries), cached; None if there is none to be had."""
        body = json.dumps(request.to_json()).encode("utf-8")
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.add("retries")
                self._sleep(self.backoff_s(attempt - 1))
            self.stats.add("requests")
            try:
                reply = parse_response(self._post(body))
            except _Retryable as e:
                self.stats.add(e.counter)
                last_error = str(e)
                continue
            except _Final as e:
                self.stats.add(e.counter)
                logger.warning("judge request failed: %s", self._redact(str(e)))
                return None
            except ResponseError as e:
                self.stats.add("bad_responses")
                logger.warning("judge answered off-protocol: %s", self._redact(str(e)))
                return None
            if self.cache is not None:
                self.cache.put(stable_hash(request.to_json()), reply)
            return reply
        logger.warning(
            "judge request failed %d times; last error: %s",
            self.max_retries + 1,
            self._redact(last_error),
        )
        return None

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return delay * self._rng.uniform(0.9, 1.1)

    def _post(self, body: bytes) -> object:
        """One attempt: the decoded JSON answer of a 200; raises _Retryable or _Final otherwise.

        The deadline covers the whole exchange: every socket operation gets the time left.
        """
        deadline = time.monotonic() + self.timeout_s

        def time_left() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete answer within {self.timeout_s} s")
            return left

        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        connection_type = (
            http.client.HTTPSConnection
            if self.url.scheme == "https"
            else http.client.HTTPConnection
        )
        connection = connection_type(self.url.hostname, self.url.port, timeout=self.timeout_s)
        try:
            connection.connect()
            sock = connection.sock
            sock.settimeout(time_left())
            connection.request("POST", self.url.path or "/", body, headers)
            sock.settimeout(time_left())
            response = connection.getresponse()
            chunks = []
            while True:
                sock.settimeout(time_left())
                chunk = response.read1(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
        except TimeoutError as e:
            raise _Retryable(f"timeout: {e}", "timeouts") from e
        except (OSError, http.client.HTTPException) as e:
            raise _Retryable(f"{type(e).__name__}: {e}", "connection_errors") from e
        finally:
            connection.close()
        try:
            payload = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if response.status != 200:
            detail = error_message(payload) or data[:200].decode("utf-8", "replace")
            message = f"HTTP {response.status}: {detail}"
            if response.status in _RETRYABLE_STATUSES:
                raise _Retryable(message, "http_errors")
            raise _Final(message, "http_errors")
        if payload is None:
            raise _Final(f"a 200 answer that is not JSON: {data[:80]!r}", "bad_responses")
        return payload

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text
