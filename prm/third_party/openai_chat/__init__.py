"""The OpenAI-compatible Chat Completions protocol (OpenAI REST API v1, as vLLM and SGLang serve
it) that prm's HTTP judge speaks; see README.md here."""

from prm.third_party.openai_chat.chat import (
    ROLES,
    UPSTREAM_API,
    ChatRequest,
    RequestError,
    ResponseError,
    build_error,
    build_response,
    completions_url,
    error_message,
    parse_response,
)

__all__ = [
    "ROLES",
    "UPSTREAM_API",
    "ChatRequest",
    "RequestError",
    "ResponseError",
    "build_error",
    "build_response",
    "completions_url",
    "error_message",
    "parse_response",
]
