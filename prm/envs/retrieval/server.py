"""An HTTP retriever server speaking Search-R1's `POST /retrieve` protocol (standard library only).

    python -m prm.envs.retrieval.server --corpus=wiki.jsonl --port=8000

serves `http://127.0.0.1:8000/retrieve`, the URL Search-R1's trainer calls by default, so prm's
index can back Search-R1-style tools and prm can be pointed at any Search-R1 server. `GET /health`
answers `{"status": "ok", "num_docs": n}` for readiness checks.

An empty `queries` list is answered `{"result": []}` and a blank query with no passages (Search-R1's
trainer sends both). Bad requests get a 4xx with `{"detail": message}` (FastAPI's error key, as
upstream) and never take the server down; see `prm/third_party/search_r1/README.md` for the
differences from upstream.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prm.envs.retrieval.base import Passage, Retriever, load_corpus
from prm.envs.retrieval.bm25 import BM25Retriever
from prm.envs.retrieval.dense import DenseRetriever
from prm.third_party.search_r1.retriever import (
    DEFAULT_LIMITS,
    DEFAULT_TOPK,
    RequestError,
    RequestLimits,
    build_response,
    decode_json,
    is_blank,
    parse_request,
)

logger = logging.getLogger(__name__)


class _HTTPServer(ThreadingHTTPServer):
    # The default backlog of 5 drops connections under a burst of concurrent clients.
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: RetrievalServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Socket timeout: an idle keep-alive or stalled client releases its thread after this long.
    timeout = 30
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _send_json(self, status: int, payload: object, *, close: bool = False) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str, *, close: bool = False) -> None:
        self._send_json(status, {"detail": message}, close=close)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library's own rejections (bad request line, unsupported method) as JSON.
        self._send_error(code, message or HTTPStatus(code).phrase, close=True)

    def do_GET(self) -> None:
        with self.server.owner.activity():
            path = urlsplit(self.path).path
            if path == "/health":
                self._send_json(HTTPStatus.OK, {"status": "ok", **self.server.owner.info})
            elif path == "/retrieve":
                self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, "Use POST /retrieve.")
            else:
                self._send_error(HTTPStatus.NOT_FOUND, f"No route {path}; use POST /retrieve.")

    def do_POST(self) -> None:
        with self.server.owner.activity():
            try:
                body = self._read_body()
            except RequestError as e:
                # The body (or what is left of it) is still on the socket: the connection closes.
                self._send_error(e.status, str(e), close=True)
                return
            try:
                path = urlsplit(self.path).path
                if path != "/retrieve":
                    raise RequestError(
                        f"No route {path}; use POST /retrieve.", HTTPStatus.NOT_FOUND
                    )
                request = parse_request(decode_json(body), self.server.owner.limits)
            except RequestError as e:
                self._send_error(e.status, str(e))
                return
            topk = request.topk if request.topk is not None else self.server.owner.default_topk
            try:
                results = self.server.owner.retrieve(request.queries, topk)
            except Exception as e:
                logger.exception("retrieval failed")
                self._send_error(
                    HTTPStatus.INTERNAL_SERVER_ERROR, f"Retrieval failed: {type(e).__name__}: {e}"
                )
                return
            self._send_json(HTTPStatus.OK, build_response(results, request.return_scores))

    def _read_body(self) -> bytes:
        """Reads exactly Content-Length bytes, refusing missing, malformed or oversized lengths."""
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise RequestError(
                "Content-Length is required (chunked bodies are not accepted).",
                HTTPStatus.LENGTH_REQUIRED,
            )
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(f"Bad Content-Length {length_header!r}.", HTTPStatus.BAD_REQUEST)
        limit = self.server.owner.limits.max_body_bytes
        if length > limit:
            raise RequestError(
                f"The body has {length} bytes, more than the limit {limit}; "
                "send fewer queries per request.",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestError(
                f"The body ended after {len(body)} of {length} bytes.", HTTPStatus.BAD_REQUEST
            )
        return body


class RetrievalServer:
    """Serves a `Retriever` over HTTP; optionally stops itself when idle or after a lifetime.

    Use as a context manager (`with RetrievalServer(r).start() as server: server.url`) or call
    `serve_forever()`. Port 0 picks a free ephemeral port; `port` then tells which.
    """

    def __init__(
        self,
        retriever: Retriever,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_topk: int = DEFAULT_TOPK,
        limits: RequestLimits = DEFAULT_LIMITS,
        idle_timeout_s: float | None = None,
        max_lifetime_s: float | None = None,
    ) -> None:
        if not 1 <= default_topk <= limits.max_topk:
            raise ValueError(
                f"default_topk must be between 1 and limits.max_topk={limits.max_topk}, "
                f"got {default_topk}."
            )
        for name, value in (("idle_timeout_s", idle_timeout_s), ("max_lifetime_s", max_lifetime_s)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}.")
        self.retriever = retriever
        self.default_topk = default_topk
        self.limits = limits
        self.info: dict[str, Any] = {}
        if hasattr(retriever, "__len__"):
            self.info["num_docs"] = len(retriever)  # type: ignore[arg-type]
        self._idle_timeout_s = idle_timeout_s
        self._max_lifetime_s = max_lifetime_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_activity = time.monotonic()
        self._stopped = threading.Event()
        self._serving = False
        self._serve_thread: threading.Thread | None = None
        self._httpd = _HTTPServer((host, port), self)

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The `/retrieve` endpoint, as Search-R1's `retriever.url` expects it."""
        return f"http://{self.host}:{self.port}/retrieve"

    def retrieve(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """The retriever's passages per query; blank queries get none and skip the retriever.

        Raises `RuntimeError` if the retriever answers a different number of queries.
        """
        searched = [i for i, query in enumerate(queries) if not is_blank(query)]
        results: list[list[Passage]] = [[] for _ in queries]
        if not searched:
            return results
        found = self.retriever.retrieve([queries[i] for i in searched], topk)
        if len(found) != len(searched):
            raise RuntimeError(f"the retriever answered {len(found)} of {len(searched)} queries.")
        for i, passages in zip(searched, found):
            results[i] = passages
        return results

    @contextlib.contextmanager
    def activity(self) -> Iterator[None]:
        """Marks a request in flight, so the idle limit never stops the server mid-request."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last_activity = time.monotonic()

    def _limit_reached(self, started: float) -> bool:
        now = time.monotonic()
        if self._max_lifetime_s is not None and now - started >= self._max_lifetime_s:
            logger.info("stopping: lifetime of %.1f s reached", self._max_lifetime_s)
            return True
        with self._lock:
            idle_s = now - self._last_activity if self._in_flight == 0 else 0.0
        if self._idle_timeout_s is not None and idle_s >= self._idle_timeout_s:
            logger.info("stopping: idle for %.1f s", idle_s)
            return True
        return False

    def _watch_limits(self, started: float) -> None:
        limits = [t for t in (self._idle_timeout_s, self._max_lifetime_s) if t is not None]
        poll_s = min(1.0, min(limits) / 10)
        while not self._stopped.wait(poll_s):
            if self._limit_reached(started):
                self._httpd.shutdown()
                return

    def serve_forever(self) -> None:
        """Serves until `shutdown()` or a configured idle/lifetime limit; then closes the socket."""
        self._serving = True
        started = time.monotonic()
        with self._lock:
            self._last_activity = started
        if self._idle_timeout_s is not None or self._max_lifetime_s is not None:
            threading.Thread(
                target=self._watch_limits, args=(started,), name="retriever-limits", daemon=True
            ).start()
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        finally:
            self._stopped.set()
            self._httpd.server_close()

    def start(self) -> RetrievalServer:
        """Serves from a background thread and returns immediately."""
        # Marked before the thread runs so that an immediate `shutdown()` still stops it.
        self._serving = True
        self._serve_thread = threading.Thread(
            target=self.serve_forever, name="retriever-server", daemon=True
        )
        self._serve_thread.start()
        return self

    def shutdown(self) -> None:
        """Stops serving (call it from any thread but the serving one) and closes the socket."""
        self._stopped.set()
        if self._serving:
            # Returns at once if serving already ended; if it has not begun, it never starts.
            self._httpd.shutdown()
        if self._serve_thread is not None:
            self._serve_thread.join()
        self._httpd.server_close()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def __enter__(self) -> RetrievalServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def _build_retriever(args: argparse.Namespace) -> Retriever:
    if args.retriever == "bm25":
        if args.index_dir and args.corpus is None:
            return BM25Retriever.load(args.index_dir)
        retriever = BM25Retriever.from_jsonl(args.corpus)
        if args.index_dir:
            retriever.save(args.index_dir)
        return retriever
    if args.model_dir is None:
        raise SystemExit("--retriever=dense needs --model_dir (a sentence-transformers model).")
    if args.index_dir and args.corpus is None:
        return DenseRetriever.load_sentence_transformers(
            args.index_dir, args.model_dir, query_prefix=args.query_prefix
        )
    retriever = DenseRetriever.from_sentence_transformers(
        args.model_dir,
        load_corpus(args.corpus),
        query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix,
    )
    if args.index_dir:
        retriever.save(args.index_dir)
    return retriever


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m prm.envs.retrieval.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--corpus", help='JSON-lines corpus of {"id", "contents"} rows.')
    parser.add_argument(
        "--index_dir",
        help="Saved index: loaded when --corpus is not given, else written after building.",
    )
    parser.add_argument("--retriever", choices=("bm25", "dense"), default="bm25")
    parser.add_argument("--model_dir", help="sentence-transformers model directory (dense).")
    parser.add_argument("--query_prefix", default="query: ", help="Dense: E5's query prefix.")
    parser.add_argument("--passage_prefix", default="passage: ", help="Dense: E5's passage prefix.")
    parser.add_argument("--host", default="127.0.0.1", help="Bind address (loopback by default).")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port.")
    parser.add_argument("--topk", type=int, default=DEFAULT_TOPK, help="Default top-k.")
    parser.add_argument("--max_topk", type=int, default=RequestLimits.max_topk)
    parser.add_argument("--max_queries", type=int, default=RequestLimits.max_queries)
    parser.add_argument(
        "--idle_timeout_s", type=float, help="Stop after this long without requests."
    )
    parser.add_argument("--max_lifetime_s", type=float, help="Stop after this long in any case.")
    args = parser.parse_args(argv)
    if args.corpus is None and args.index_dir is None:
        parser.error("give --corpus, --index_dir, or both.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = RetrievalServer(
        _build_retriever(args),
        host=args.host,
        port=args.port,
        default_topk=args.topk,
        limits=RequestLimits(max_queries=args.max_queries, max_topk=args.max_topk),
        idle_timeout_s=args.idle_timeout_s,
        max_lifetime_s=args.max_lifetime_s,
    )
    # One machine-readable line, so scripts that start the server with --port=0 learn its URL.
    print(json.dumps({"url": server.url, **server.info}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
