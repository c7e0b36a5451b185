"""Bounded loopback load test of the Search-R1-compatible retriever server.

    .venv/bin/python -m experiments.bench_retriever --num_requests=10000 --concurrency=64

Builds a synthetic corpus (Zipf-distributed words, DPR-sized 100-word passages) and, in one run,
compares prm's in-process BM25 with bm25s's own `retrieve`, then each HTTP load shape with the
same calls made in process (its peer):

  http-single  `--num_requests` one-query requests from `--concurrency` client threads to a
               server subprocess on 127.0.0.1 (many independent callers), against
               in-process one-query `BM25Retriever.retrieve` calls from one thread;
  http-batch   `--batch_requests` requests of `--batch_size` queries (one Search-R1 rollout
               turn sends a whole batch's queries at once), against the same batched calls
               in process.

Every phase is bounded in count and by `--time_limit_s`; the server is a subprocess bound to
127.0.0.1 with its own lifetime limit, so it stops by itself even if this script dies. Requests
are sent without retries, so failures show up as errors rather than as latency.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bm25s
import numpy as np

from prm.envs.retrieval import BM25Retriever, RetrievalClient, RetrievalError, save_corpus


def synthetic_corpus(num_docs: int, doc_words: int, vocab_size: int, seed: int):
    """Passages whose word frequencies follow Zipf's law, with `"Title"\\ntext` contents."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(vocab_size)]
    weights = 1.0 / np.arange(1, vocab_size + 1)
    weights /= weights.sum()
    words = rng.choice(vocab_size, size=(num_docs, doc_words), p=weights)
    corpus = [
        {"id": str(i), "contents": f'"{vocab[row[0]]}"\n' + " ".join(vocab[w] for w in row)}
        for i, row in enumerate(words)
    ]
    return corpus, vocab, weights


def synthetic_queries(vocab, weights, count: int, seed: int) -> list[str]:
    # Query words skip the 100 most frequent (stopword-like) words, as real queries mostly do.
    rng = np.random.default_rng(seed)
    tail = weights[100:] / weights[100:].sum()
    return [
        " ".join(vocab[100 + w] for w in rng.choice(len(tail), size=rng.integers(3, 7), p=tail))
        for _ in range(count)
    ]


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(latencies, q) * 1e3) if latencies else float("nan")


def run_load(
    url: str,
    batches: list[list[str]],
    *,
    topk: int,
    concurrency: int,
    time_limit_s: float,
    timeout_s: float,
) -> dict[str, float]:
    """Sends `batches` (one request each) from `concurrency` threads until done or out of time."""
    client = RetrievalClient(
        url, timeout_s=timeout_s, max_retries=0, max_queries_per_request=max(map(len, batches))
    )
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit_s

    def worker() -> None:
        nonlocal next_index
        while time.monotonic() < deadline:
            with lock:
                if next_index >= len(batches):
                    return
                batch = batches[next_index]
                next_index += 1
            start = time.perf_counter()
            try:
                results = client.retrieve(batch, topk)
                assert len(results) == len(batch)
            except (RetrievalError, AssertionError) as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall_s = time.perf_counter() - started
    completed = len(latencies)
    queries = sum(len(b) for b in batches[:completed])
    if errors:
        print(f"    first error: {errors[0]}")
    return {
        "requests": completed,
        "errors": len(errors),
        "wall_s": wall_s,
        "requests_per_s": completed / wall_s,
        "queries_per_s": queries / wall_s,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": percentile_ms(latencies, 100),
    }


class Bm25sNative:
    """bm25s's own retrieval (a dense score row and a partial sort per query), same settings."""

    def __init__(self, corpus: list[dict[str, str]]) -> None:
        self.index = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self.index.index(self._tokenize([d["contents"] for d in corpus]), show_progress=False)

    @staticmethod
    def _tokenize(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    def retrieve(self, queries: list[str], topk: int) -> object:
        return self.index.retrieve(self._tokenize(queries), k=topk, show_progress=False)


def run_in_process(
    retriever: BM25Retriever | Bm25sNative, batches: list[list[str]], topk: int, time_limit_s: float
) -> dict[str, float]:
    """The peer: the same calls made directly, one at a time, until done or out of time."""
    deadline = time.monotonic() + time_limit_s
    latencies = []
    started = time.perf_counter()
    for batch in batches:
        if time.monotonic() >= deadline:
            break
        t = time.perf_counter()
        retriever.retrieve(batch, topk)
        latencies.append(time.perf_counter() - t)
    wall_s = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "queries_per_call": len(batches[0]),
        "queries_per_s": sum(len(b) for b in batches[: len(latencies)]) / wall_s,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
    }


def start_server(corpus_path: Path, lifetime_s: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prm.envs.retrieval.server",
            f"--corpus={corpus_path}",
            "--host=127.0.0.1",
            "--port=0",
            f"--max_lifetime_s={lifetime_s}",
            "--idle_timeout_s=60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError("The server subprocess exited before announcing its URL.")
    return process, json.loads(line)["url"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_docs", type=int, default=20_000)
    parser.add_argument("--doc_words", type=int, default=100)
    parser.add_argument("--vocab_size", type=int, default=50_000)
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--num_requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch_requests", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--batch_concurrency", type=int, default=2)
    parser.add_argument("--in_process_queries", type=int, default=2_000)
    parser.add_argument("--time_limit_s", type=float, default=120.0, help="Per phase.")
    parser.add_argument("--timeout_s", type=float, default=30.0, help="Per request.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    corpus, vocab, weights = synthetic_corpus(
        args.num_docs, args.doc_words, args.vocab_size, args.seed
    )
    single = synthetic_queries(vocab, weights, args.num_requests, args.seed + 1)
    batched = synthetic_queries(
        vocab, weights, args.batch_requests * args.batch_size, args.seed + 2
    )
    print(
        f"corpus: {args.num_docs} docs x {args.doc_words} words, vocab {args.vocab_size}; "
        f"topk={args.topk}"
    )

    started = time.perf_counter()
    retriever = BM25Retriever(corpus)
    print(f"index build (in process): {time.perf_counter() - started:.2f} s")
    single_batches = [[q] for q in single]
    batch_batches = [
        batched[i : i + args.batch_size] for i in range(0, len(batched), args.batch_size)
    ]
    peer_single = run_in_process(
        retriever, single_batches[: args.in_process_queries], args.topk, args.time_limit_s
    )
    peer_batch = run_in_process(retriever, batch_batches, args.topk, args.time_limit_s)
    native = run_in_process(
        Bm25sNative(corpus), single_batches[: args.in_process_queries], args.topk, args.time_limit_s
    )
    print(
        f"bm25s.retrieve   : {native['requests']} calls of 1 queries, "
        f"{native['queries_per_s']:8.1f} queries/s; latency p50 {native['p50_ms']:.2f} ms "
        f"(prm BM25Retriever: {peer_single['queries_per_s'] / native['queries_per_s']:.2f}x)"
    )
    for name, stats in (("in-process single", peer_single), ("in-process batch ", peer_batch)):
        print(
            f"{name}: {stats['requests']} calls of {stats['queries_per_call']} queries, "
            f"{stats['queries_per_s']:8.1f} queries/s; latency p50 {stats['p50_ms']:.2f} ms, "
            f"p99 {stats['p99_ms']:.2f} ms"
        )

    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.jsonl"
        save_corpus(corpus, corpus_path)
        process, url = start_server(corpus_path, lifetime_s=3 * args.time_limit_s + 120)
        try:
            phases = [
                ("http-single      ", single_batches, args.concurrency, peer_single),
                ("http-batch       ", batch_batches, args.batch_concurrency, peer_batch),
            ]
            for name, batches, concurrency, peer in phases:
                stats = run_load(
                    url,
                    batches,
                    topk=args.topk,
                    concurrency=concurrency,
                    time_limit_s=args.time_limit_s,
                    timeout_s=args.timeout_s,
                )
                print(
                    f"{name}: {stats['requests']}/{len(batches)} requests "
                    f"({len(batches[0])} queries each) at concurrency {concurrency}, "
                    f"{stats['errors']} errors, {stats['wall_s']:.1f} s; "
                    f"{stats['requests_per_s']:8.1f} requests/s, "
                    f"{stats['queries_per_s']:8.1f} queries/s "
                    f"({stats['queries_per_s'] / peer['queries_per_s']:.2f}x in-process); "
                    f"latency p50 "
                    f"{stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms, "
                    f"max {stats['max_ms']:.1f} ms"
                )
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
