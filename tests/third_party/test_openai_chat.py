import pytest

from prm.third_party.openai_chat import (
    ChatRequest,
    RequestError,
    ResponseError,
    build_error,
    build_response,
    completions_url,
    error_message,
    parse_response,
)


def test_request_round_trips_through_json():
    request = ChatRequest.user("m", "hello", temperature=0.0, max_tokens=7)
    payload = request.to_json()
    assert payload == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0.0,
        "max_tokens": 7,
    }
    assert ChatRequest.from_json(payload) == request


@pytest.mark.parametrize(
    "payload, message",
    [
        ([], "JSON object"),
        ({"model": "m", "messages": []}, "lacks"),
        ({"model": "m", "messages": [], "temperature": 0, "max_tokens": 4}, "at least one"),
        (
            {"model": "m", "messages": [{"role": "robot", "content": "x"}], "temperature": 0,
             "max_tokens": 4},
            "role",
        ),
        (
            {"model": "m", "messages": [{"role": "user"}], "temperature": 0, "max_tokens": 4},
            "'content'",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "0",
             "max_tokens": 4},
            "temperature",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0,
             "max_tokens": True},
            "max_tokens",
        ),
        (
            {"model": "", "messages": [{"role": "user", "content": "x"}], "temperature": 0,
             "max_tokens": 4},
            "model",
        ),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_with_the_reason(payload, message):
    with pytest.raises(RequestError, match=message):
        ChatRequest.from_json(payload)


def test_response_content_is_read_from_the_first_choice():
    assert parse_response(build_response("<score>1</score>", "m")) == "<score>1</score>"
    two = build_response("first", "m")
    two["choices"].append({"index": 1, "message": {"role": "assistant", "content": "second"}})
    assert parse_response(two) == "first"


@pytest.mark.parametrize(
    "payload, message",
    [
        ("text", "JSON object"),
        ({}, "choices"),
        ({"choices": []}, "choices"),
        ({"choices": ["x"]}, "message"),
        ({"choices": [{"message": {"content": None}}]}, "content must be a string"),
    ],
)
def test_off_protocol_answers_raise(payload, message):
    with pytest.raises(ResponseError, match=message):
        parse_response(payload)


def test_urls_and_errors():
    assert completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert error_message(build_error("overloaded")) == "overloaded"
    assert error_message({"detail": "x"}) is None
