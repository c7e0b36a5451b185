"""The OpenAI-compatible Chat Completions protocol, the subset a judge needs, with validation.

Follows the Chat Completions endpoint of the OpenAI REST API v1 (`POST /v1/chat/completions`,
platform.openai.com/docs/api-reference/chat/create) as served by vLLM's and SGLang's
OpenAI-compatible servers (see README.md beside this file). Request:

    {"model": str, "messages": [{"role": str, "content": str}, ...],
     "temperature": float, "max_tokens": int}

Answer (other fields ignored): `{"choices": [{"message": {"content": str}, ...}, ...], ...}`; the
reply is `choices[0].message.content`. Errors: `{"error": {"message": str, ...}}`.

Plain dicts and the standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

UPSTREAM_API = "OpenAI REST API v1, Chat Completions (POST /v1/chat/completions)"
ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
    """A request that does not follow the protocol."""


class ResponseError(ValueError):
    """A server answer that does not follow the protocol."""


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    temperature: float = 0.0
    max_tokens: int = 512

    def __post_init__(self):
        object.__setattr__(self, "messages", tuple(tuple(m) for m in self.messages))
        if not isinstance(self.model, str) or not self.model:
            raise RequestError(f"model must be a nonempty string, got {self.model!r}.")
        if not self.messages:
            raise RequestError("messages must hold at least one message.")
        for role, content in self.messages:
            if role not in ROLES or not isinstance(content, str):
                raise RequestError(
                    f"A message is (role in {ROLES}, content string), got ({role!r}, "
                    f"{type(content).__name__})."
                )
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float):
            raise RequestError(f"temperature must be a number, got {self.temperature!r}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise RequestError(f"temperature must lie in [0, 2], got {self.temperature}.")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise RequestError(f"max_tokens must be an integer, got {self.max_tokens!r}.")
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {self.max_tokens}.")

    @classmethod
    def user(cls, model: str, prompt: str, **sampling: Any) -> ChatRequest:
        """A request with one user message."""
        return cls(model, (("user", prompt),), **sampling)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, payload: object) -> ChatRequest:
        """Parses and validates a request body (servers and test stubs); all four fields are
        required here, although the API has defaults for `temperature` and `max_tokens`."""
        if not isinstance(payload, Mapping):
            raise RequestError(f"The body must be a JSON object, got {type(payload).__name__}.")
        missing = {"model", "messages", "temperature", "max_tokens"} - set(payload)
        if missing:
            raise RequestError(f"The request lacks {sorted(missing)}.")
        messages = payload["messages"]
        if not isinstance(messages, Sequence) or isinstance(messages, str):
            raise RequestError("messages must be a list of {role, content} objects.")
        pairs = []
        for message in messages:
            if not isinstance(message, Mapping) or {"role", "content"} - set(message):
                raise RequestError(f"A message needs 'role' and 'content', got {message!r}.")
            pairs.append((message["role"], message["content"]))
        return cls(
            payload["model"],
            tuple(pairs),
            payload["temperature"],
            payload["max_tokens"],
        )


def completions_url(base_url: str) -> str:
    """`{base_url}/chat/completions`; base_url ends in `/v1` for vLLM and SGLang servers."""
    return base_url.rstrip("/") + "/chat/completions"


def parse_response(payload: object) -> str:
    """`choices[0].message.content` of a chat completion; ResponseError if it is not there."""
    if not isinstance(payload, Mapping):
        raise ResponseError(f"The answer must be a JSON object, got {type(payload).__name__}.")
    choices = payload.get("choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
        raise ResponseError("The answer has no 'choices' list (or it is empty).")
    message = choices[0].get("message") if isinstance(choices[0], Mapping) else None
    if not isinstance(message, Mapping):
        raise ResponseError("choices[0] has no 'message' object.")
    content = message.get("content")
    if not isinstance(content, str):
        raise ResponseError(
            f"choices[0].message.content must be a string, got {type(content).__name__}."
        )
    return content


def build_response(content: str, model: str) -> dict[str, Any]:
    """A minimal chat completion carrying `content` (servers and test stubs)."""
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


def build_error(message: str, kind: str = "server_error") -> dict[str, Any]:
    """An error body in the API's shape."""
    return {"error": {"message": message, "type": kind}}


def error_message(payload: object) -> str | None:
    """The `error.message` of an error body, or None if the body has none."""
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        message = payload["error"].get("message")
        return message if isinstance(message, str) else None
    return None
