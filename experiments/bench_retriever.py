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

Timing (`experiments.benchmarking.interleave`): the five phases run in `--rounds` alternating
rounds after a warm-up; each figure is a phase's best round, printed with the 1-minute load
average and the cores other processes kept busy (the server's CPU counts as the HTTP phases'
own); a ratio is printed only when the load held still (`--max-load-change`, `--max-others`),
otherwise REFUSED and why.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bm25s
import numpy as np

from experiments.benchmarking import (
    Case,
    Rounds,
    Timing,
    add_load_rule_arguments,
    figure,
    format_ratio,
    interleave,
    load_rule,
)
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
        "wall_s": wall_s,
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


def rate_ratio(
    rounds: Rounds, ours: Timing, ours_stats: dict, peer: Timing, peer_stats: dict
) -> str:
    """Our queries/s over the peer's (the phases may send different numbers of queries)."""
    speed = rounds.ratio(peer, ours)
    if speed is not None:
        speed *= ours_stats["queries"] / peer_stats["queries"]
    return format_ratio(speed, rounds, ours, peer)


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--time_limit_s", type=float, default=120.0, help="Per phase and round.")
    parser.add_argument("--timeout_s", type=float, default=30.0, help="Per request.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds.")
    parser.add_argument("--seed", type=int, default=0)
    add_load_rule_arguments(parser)
    args = parser.parse_args(argv)

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
    native = Bm25sNative(corpus)
    single_batches = [[q] for q in single]
    batch_batches = [
        batched[i : i + args.batch_size] for i in range(0, len(batched), args.batch_size)
    ]
    in_process = single_batches[: args.in_process_queries]
    # Each phase's stats from its fastest run (the one whose figure is printed).
    stats: dict[str, dict] = {}

    def phase(name: str, run) -> Callable[[], object]:
        def timed() -> None:
            result = run()
            result["queries"] = result["queries_per_s"] * result["wall_s"]
            if name not in stats or result["wall_s"] < stats[name]["wall_s"]:
                stats[name] = result

        return timed

    def local(engine, batches) -> Callable[[], object]:
        return lambda: run_in_process(engine, batches, args.topk, args.time_limit_s)

    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.jsonl"
        save_corpus(corpus, corpus_path)
        # Five phases per round plus the warm-up, each bounded by time_limit_s.
        lifetime = 5 * (args.rounds + 1) * args.time_limit_s + 120
        process, url = start_server(corpus_path, lifetime_s=lifetime)

        def http(batches, concurrency) -> Callable[[], object]:
            return lambda: run_load(
                url,
                batches,
                topk=args.topk,
                concurrency=concurrency,
                time_limit_s=args.time_limit_s,
                timeout_s=args.timeout_s,
            )

        try:
            rounds = interleave(
                {
                    "in-process single": phase("in-process single", local(retriever, in_process)),
                    "bm25s single": phase("bm25s single", local(native, in_process)),
                    "in-process batch": phase("in-process batch", local(retriever, batch_batches)),
                    "http single": Case(
                        phase("http single", http(single_batches, args.concurrency)),
                        processes=(process.pid,),
                    ),
                    "http batch": Case(
                        phase("http batch", http(batch_batches, args.batch_concurrency)),
                        processes=(process.pid,),
                    ),
                },
                rounds=args.rounds,
                rule=load_rule(args),
            )
        finally:
            process.terminate()
            process.wait(timeout=30)

    native_stats, single_stats = stats["bm25s single"], stats["in-process single"]
    print(
        figure(
            "bm25s.retrieve   :",
            rounds["bm25s single"],
            f"{native_stats['requests']} calls of 1 queries, "
            f"{native_stats['queries_per_s']:8.1f} queries/s; latency p50 "
            f"{native_stats['p50_ms']:.2f} ms",
        )
        + " (prm BM25Retriever: "
        + rate_ratio(
            rounds,
            rounds["in-process single"],
            single_stats,
            rounds["bm25s single"],
            native_stats,
        )
        + ")"
    )
    for name in ("in-process single", "in-process batch"):
        s = stats[name]
        print(
            figure(
                f"{name:17s}:",
                rounds[name],
                f"{s['requests']} calls of {s['queries_per_call']} queries, "
                f"{s['queries_per_s']:8.1f} queries/s; latency p50 {s['p50_ms']:.2f} ms, "
                f"p99 {s['p99_ms']:.2f} ms",
            )
        )
    for name, batches, concurrency, peer in (
        ("http single", single_batches, args.concurrency, "in-process single"),
        ("http batch", batch_batches, args.batch_concurrency, "in-process batch"),
    ):
        s = stats[name]
        print(
            figure(
                f"{name:17s}:",
                rounds[name],
                f"{s['requests']}/{len(batches)} requests ({len(batches[0])} queries each) at "
                f"concurrency {concurrency}, {s['errors']} errors, {s['wall_s']:.1f} s; "
                f"{s['requests_per_s']:8.1f} requests/s, {s['queries_per_s']:8.1f} queries/s",
            )
            + f" ({rate_ratio(rounds, rounds[name], s, rounds[peer], stats[peer])} in-process)"
            + f"; latency p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
            f"max {s['max_ms']:.1f} ms"
        )
    print(f"rounds' load {min(rounds.loads):.2f}..{max(rounds.loads):.2f}")


if __name__ == "__main__":
    main()
