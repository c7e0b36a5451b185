"""Search-R1 (PeterGriffinJin/Search-R1 at a14dc3a) interfaces prm speaks; see README.md here.

`retriever`: the `POST /retrieve` protocol. `data`: the parquet data schema.
"""

from prm.third_party.search_r1.retriever import (
    DEFAULT_LIMITS,
    DEFAULT_TOPK,
    UPSTREAM_COMMIT,
    UPSTREAM_REPOSITORY,
    JSONBodyError,
    RequestError,
    RequestLimits,
    ResponseError,
    RetrieveRequest,
    build_response,
    decode_json,
    is_blank,
    load_json_body,
    parse_request,
    parse_response,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TOPK",
    "UPSTREAM_COMMIT",
    "UPSTREAM_REPOSITORY",
    "JSONBodyError",
    "RequestError",
    "RequestLimits",
    "ResponseError",
    "RetrieveRequest",
    "build_response",
    "decode_json",
    "is_blank",
    "load_json_body",
    "parse_request",
    "parse_response",
]
