"""Search-R1's retriever protocol: the `POST /retrieve` request and response, with validation.

Follows `search_r1/search/retrieval_server.py` of PeterGriffinJin/Search-R1 at commit `a14dc3a`
(see README.md beside this file for what differs). Request:

    {"queries": [str, ...], "topk": int | null, "return_scores": bool}

Response, one list per query, best passage first:

    return_scores=true:  {"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}
    return_scores=false: {"result": [[{"id", "contents"}, ...], ...]}

An empty `queries` list is answered `{"result": []}` and a blank query with an empty list, in
both shapes: Search-R1's trainer sends both (a turn where no row searched, `<search> </search>`)
and reads `["result"]` without checking the status.

Plain dicts and the standard library only, so other tools can use this module on its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

UPSTREAM_REPOSITORY = "PeterGriffinJin/Search-R1"
UPSTREAM_COMMIT = "a14dc3a"
# Upstream `retrieval_server.py --topk`; used when a request's `topk` is missing or null.
DEFAULT_TOPK = 3


class RequestError(ValueError):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ResponseError(ValueError):
    """A server answer that does not follow the protocol."""


class JSONBodyError(ValueError):
    """A body that is not UTF-8 JSON the standard library can hold."""


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Bounds a server enforces so one request cannot exhaust it.

    The defaults admit one Search-R1 GRPO turn in a single request (512 prompts x 5 samples =
    2560 queries) with queries up to one 500-token generation.
    """

    max_queries: int = 4096
    max_query_chars: int = 4096
    max_topk: int = 100
    max_body_bytes: int = 16 * 1024 * 1024


DEFAULT_LIMITS = RequestLimits()


@dataclasses.dataclass(frozen=True)
class RetrieveRequest:
    queries: tuple[str, ...]
    topk: int | None = None
    return_scores: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "queries": list(self.queries),
            "topk": self.topk,
            "return_scores": self.return_scores,
        }


def load_json_body(body: bytes) -> object:
    """Parses a UTF-8 JSON body, or raises `JSONBodyError` saying what is wrong with it.

    Besides syntax errors this refuses nesting deeper than the interpreter's recursion limit
    (`RecursionError`) and integers longer than `sys.get_int_max_str_digits()` (`ValueError`),
    which `json.loads` raises as other exceptions.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONBodyError(f"The body is not UTF-8: {e}.") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONBodyError(f"The body is not valid JSON: {e.msg} at char {e.pos}.") from e
    except RecursionError as e:
        raise JSONBodyError("The body nests JSON arrays or objects too deeply.") from e
    except ValueError as e:  # the one other ValueError json.loads raises
        raise JSONBodyError(
            f"The body holds an integer longer than {sys.get_int_max_str_digits()} digits."
        ) from e


def decode_json(body: bytes) -> object:
    """Parses a request body (see `load_json_body`), or raises `RequestError` (400)."""
    try:
        return load_json_body(body)
    except JSONBodyError as e:
        raise RequestError(str(e)) from e


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(payload: object, limits: RequestLimits = DEFAULT_LIMITS) -> RetrieveRequest:
    """Validates a decoded request body; unknown fields are ignored, as upstream does.

    Types are checked strictly (no `"3"` for 3, no `1` for true) so a misbehaving client gets a
    message instead of a guess. An empty list and blank queries are valid (see the module
    docstring); `is_blank` tells which queries get no passages.
    """
    if not isinstance(payload, Mapping):
        raise RequestError(f"The body must be a JSON object, got {type(payload).__name__}.")
    if "queries" not in payload:
        raise RequestError('The body has no "queries" field (a list of strings).')
    queries = payload["queries"]
    if not isinstance(queries, list):
        raise RequestError(f'"queries" must be a list of strings, got {type(queries).__name__}.')
    if len(queries) > limits.max_queries:
        raise RequestError(
            f'"queries" has {len(queries)} entries, more than the limit {limits.max_queries}; '
            "split them over several requests."
        )
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise RequestError(f'"queries"[{i}] must be a string, got {type(query).__name__}.')
        if len(query) > limits.max_query_chars:
            raise RequestError(
                f'"queries"[{i}] has {len(query)} characters, more than the limit '
                f"{limits.max_query_chars}."
            )
    topk = payload.get("topk")
    if topk is not None:
        if not _is_int(topk):
            raise RequestError(f'"topk" must be an integer or null, got {type(topk).__name__}.')
        if not 1 <= topk <= limits.max_topk:
            raise RequestError(f'"topk" must be between 1 and {limits.max_topk}, got {topk}.')
    return_scores = payload.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise RequestError(
            f'"return_scores" must be true or false, got {type(return_scores).__name__}.'
        )
    return RetrieveRequest(tuple(queries), topk, return_scores)


def is_blank(query: str) -> bool:
    """A query with nothing to search for (empty or whitespace only): answered with no passages."""
    return not query.strip()


def build_response(
    results: Sequence[Sequence[Mapping[str, Any]]], return_scores: bool
) -> dict[str, Any]:
    """Wraps per-query passages `{"id", "contents", "score"}` in the upstream response shape."""
    if return_scores:
        return {
            "result": [
                [
                    {
                        "document": {"id": p["id"], "contents": p["contents"]},
                        "score": float(p["score"]),
                    }
                    for p in passages
                ]
                for passages in results
            ]
        }
    return {
        "result": [
            [{"id": p["id"], "contents": p["contents"]} for p in passages] for passages in results
        ]
    }


def _parse_document(document: object, where: str) -> dict[str, str]:
    if not isinstance(document, Mapping) or not isinstance(document.get("contents"), str):
        raise ResponseError(f'{where}: expected a document object with string "contents".')
    # Upstream's raw-document BM25 path returns {"title", "text", "contents"} without an id.
    return {"id": str(document.get("id", "")), "contents": document["contents"]}


def parse_response(
    payload: object, *, num_queries: int, return_scores: bool
) -> list[list[dict[str, Any]]]:
    """Reads a response body back into per-query `{"id", "contents"[, "score"]}` dicts.

    `"score"` is present exactly when `return_scores` is true. Raises `ResponseError` when the
    body does not have the shape the request asked for or answers a different number of queries.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("result"), list):
        raise ResponseError('The response must be a JSON object with a "result" list.')
    result = payload["result"]
    if len(result) != num_queries:
        raise ResponseError(f"The response answers {len(result)} queries, {num_queries} were sent.")
    parsed = []
    for q, entries in enumerate(result):
        if not isinstance(entries, list):
            raise ResponseError(f"result[{q}] must be a list.")
        passages = []
        for j, entry in enumerate(entries):
            where = f"result[{q}][{j}]"
            if not return_scores:
                passages.append(_parse_document(entry, where))
                continue
            if not isinstance(entry, Mapping) or "document" not in entry:
                raise ResponseError(f'{where}: expected {{"document": ..., "score": ...}}.')
            score = entry.get("score")
            if not isinstance(score, int | float) or isinstance(score, bool):
                raise ResponseError(f'{where}: "score" must be a number.')
            # json.loads accepts NaN and Infinity and reads 1e999 as inf; a long int overflows.
            try:
                value = float(score)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise ResponseError(f'{where}: "score" must be a finite number, got {score!r:.40}.')
            passages.append({**_parse_document(entry["document"], where), "score": value})
        parsed.append(passages)
    return parsed
