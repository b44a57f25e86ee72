"""The one error shape (docs/api.md §1.3): built by `utils/api/errors.py`, enforced on the way
out by `utils/asgi/error_shape.py` for what the framework answers itself."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from utils.api.errors import (
    MAX_DETAIL,
    MAX_ERROR,
    encode_error,
    error_body,
    error_payload,
    field_to_loc,
    loc_to_field,
    validation_payload,
)
from utils.asgi.error_shape import MAX_ERROR_BODY, ErrorShape, reshape, send_error

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}


def assert_shape(payload: dict[str, Any]) -> None:
    """What every client may rely on, whatever the error."""
    assert set(payload) == {"error", "field", "detail"}
    assert isinstance(payload["error"], str) and payload["error"]
    assert payload["field"] is None or isinstance(payload["field"], str)
    assert payload["detail"] and all(set(d) == {"type", "loc", "msg"} for d in payload["detail"])
    text = json.dumps(payload)
    assert "IODescriptor" not in text and "pydantic.dev" not in text


# what BentoML 1.4.40 sends for a pydantic ValidationError (include_input=False)
PYDANTIC = {
    "error": "2 validation error for PredictBatchRequestIODescriptor",
    "detail": [
        {
            "type": "string_type",
            "loc": ["iq_b64_samples", 1],
            "msg": "Input should be a valid string",
            "url": "https://errors.pydantic.dev/2.14/v/string_type",
        },
        {
            "type": "extra_forbidden",
            "loc": ["extra"],
            "msg": "Extra inputs are not permitted",
            "url": "https://errors.pydantic.dev/2.14/v/extra_forbidden",
        },
    ],
}


def test_pydantic_errors_name_the_field_and_no_internal_class() -> None:
    payload = validation_payload(PYDANTIC["detail"])
    assert_shape(payload)
    assert payload["field"] == "iq_b64_samples[1]"
    assert payload["error"] == (
        "iq_b64_samples[1]: Input should be a valid string (and 1 more problem in detail)"
    )
    assert [d["loc"] for d in payload["detail"]] == [["iq_b64_samples", 1], ["extra"]]


def test_a_whole_body_problem_has_no_field() -> None:
    payload = validation_payload(
        [{"type": "value_error", "loc": [], "msg": "Value error, give exactly one of a and b"}]
    )
    assert_shape(payload)
    assert payload["field"] is None
    assert payload["error"] == "request body: give exactly one of a and b"
    assert payload["detail"][0]["msg"] == "give exactly one of a and b"


def test_own_errors_carry_a_structured_loc() -> None:
    payload = error_payload("iq_data[1][0][1]: IQ values must be numbers", "iq_data[1][0][1]", 400)
    assert_shape(payload)
    assert payload["detail"] == [
        {"type": "invalid_input", "loc": ["iq_data", 1, 0, 1], "msg": "IQ values must be numbers"}
    ]
    assert error_payload("overloaded: busy", None, 503)["detail"][0]["type"] == "overloaded"


@given(
    st.lists(
        st.one_of(
            st.integers(0, 10**6), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
        ),
        min_size=1,
        max_size=6,
    ).filter(lambda loc: isinstance(loc[0], str))
)
def test_field_and_loc_round_trip(loc: list[str | int]) -> None:
    field = loc_to_field(loc)
    assert field is not None and field_to_loc(field) == loc


@pytest.mark.parametrize(
    ("status", "body", "content_type", "field", "error"),
    [
        (400, json.dumps(PYDANTIC), b"application/json", "iq_b64_samples[1]", None),
        # BentoML 1.4.40 wraps its own 4xx exceptions in a list
        (400, json.dumps([{"error": "bad thing"}]), b"application/json", None, "bad thing"),
        (504, json.dumps({"error": "Not able to process"}), b"application/json", None, None),
        (404, "Not Found", b"text/plain; charset=utf-8", None, "path: no route at this path"),
        (
            405,
            "Method Not Allowed",
            b"text/plain",
            None,
            "method: POST is not allowed on this route",
        ),
        (418, "", b"text/plain", None, "HTTP 418"),
        (400, "{not json", b"application/json", None, "{not json"),
    ],
)
def test_reshape_gives_every_framework_error_the_shape(
    status: int, body: str, content_type: bytes, field: str | None, error: str | None
) -> None:
    payload = reshape(status, body.encode(), content_type, SCOPE)
    assert payload is not None
    assert_shape(payload)
    assert payload["field"] == field
    if error is not None:
        assert payload["error"] == error


def test_reshape_leaves_a_shaped_body_alone() -> None:
    shaped = json.dumps(error_payload("tag: nope", "tag", 404)).encode()
    assert reshape(404, shaped, b"application/json", SCOPE) is None


# --- the middleware -------------------------------------------------------------------------


def run(app: Any, scope: Scope = SCOPE) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(ErrorShape(app)(scope, receive, send))
    return sent


def responder(status: int, chunks: list[bytes], content_type: bytes = b"application/json") -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", content_type), (b"x-kept", b"1")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            more = i < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


def test_middleware_rewrites_a_chunked_error_and_fixes_its_length() -> None:
    raw = json.dumps(PYDANTIC).encode()
    sent = run(responder(400, [raw[:10], raw[10:50], raw[50:]]))
    start, body = sent
    headers = dict(start["headers"])
    payload = json.loads(body["body"])
    assert_shape(payload)
    assert headers[b"content-length"] == str(len(body["body"])).encode()
    assert headers[b"x-kept"] == b"1" and start["status"] == 400


def test_middleware_streams_success_untouched() -> None:
    chunks = [b'{"a": ', b"1}"]
    sent = run(responder(200, chunks))
    assert [m.get("body") for m in sent[1:]] == chunks
    assert sent[1]["more_body"] is True


def test_middleware_answers_an_oversized_error_body_in_the_shape() -> None:
    """An error too large to hold is not sent: its status and a shaped summary are."""
    big = b"x" * (MAX_ERROR_BODY + 10)
    sent = run(responder(500, [big[:100], big[100:]], b"text/plain"))
    assert sent[0]["status"] == 500 and len(sent) == 2
    payload = json.loads(sent[1]["body"])
    assert_shape(payload)
    assert payload["error"].startswith("server: failed; the error report was over")
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_an_oversized_validation_error_keeps_its_count_and_first_problems() -> None:
    """What BentoML made of a 1 000 000-item batch of numbers: 149 MB; answered with the
    count and the first `MAX_DETAIL` problems, whatever the chunking."""
    item = {
        "type": "string_type",
        "loc": ["iq_b64_samples", 0],
        "msg": "Input should be a valid string",
    }
    items = [{**item, "loc": ["iq_b64_samples", i]} for i in range(20_000)]
    raw = json.dumps(
        {"error": "1000000 validation error for PredictBatchRequestIODescriptor", "detail": items}
    ).encode()
    assert len(raw) > MAX_ERROR_BODY
    sent = run(responder(400, [raw[i : i + 65536] for i in range(0, len(raw), 65536)]))
    assert len(sent) == 2 and sent[0]["status"] == 400
    payload = json.loads(sent[1]["body"])
    assert_shape(payload)
    assert payload["field"] == "iq_b64_samples[0]"
    assert len(payload["detail"]) == MAX_DETAIL + 1
    assert payload["detail"][-1]["msg"] == f"{1_000_000 - MAX_DETAIL} more problems not listed"
    assert "999999 more problems" in payload["error"]
    assert len(sent[1]["body"]) < 4096


def test_validation_detail_is_capped_with_a_count() -> None:
    items = [{"type": "string_type", "loc": ["x", i], "msg": "bad"} for i in range(500)]
    payload = validation_payload(items)
    assert_shape(payload)
    assert len(payload["detail"]) == MAX_DETAIL + 1
    assert payload["detail"][-1] == {
        "type": "too_many_errors",
        "loc": [],
        "msg": f"{500 - MAX_DETAIL} more problems not listed",
    }
    assert (
        payload["error"]
        == f"x[0]: bad (and 499 more problems; detail lists the first {MAX_DETAIL})"
    )


@pytest.mark.parametrize("key", ["k" * 300_000, "<script>alert(1)</script>", "a b", "é"])
def test_validation_never_echoes_a_key_that_is_no_field_name(key: str) -> None:
    """pydantic's `loc` holds an unknown key as sent: one that could not be a field name is
    `<key>`, and every message is cut, so an error stays small whatever the input."""
    payload = validation_payload(
        [
            {
                "type": "extra_forbidden",
                "loc": ["iq_data", key],
                "msg": "Extra inputs are not permitted",
            }
        ]
    )
    assert_shape(payload)
    assert key not in json.dumps(payload, ensure_ascii=False)
    assert payload["detail"][0]["loc"] == ["iq_data", "<key>"]
    assert len(encode_error(payload)) < 2 * MAX_ERROR


def test_path_and_method_are_not_echoed() -> None:
    scope = {**SCOPE, "method": "X" * 5000, "path": "/<script>alert(1)</script>" + "a" * 60_000}
    for status in (404, 405):
        payload = reshape(status, b"Not Found", b"text/plain", scope)
        assert payload is not None
        assert "<script>" not in payload["error"] and "XXXX" not in payload["error"]
        assert len(encode_error(payload)) < 300


def test_every_sender_spells_an_error_the_same() -> None:
    """One serializer: the API's responses, the ASGI layers' and the reshaped framework's."""
    payload = error_payload("confidence_level: é bad", "confidence_level", 400)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(send_error(send, 400, "confidence_level: é bad", "confidence_level"))
    via_api = error_body("confidence_level: é bad", "confidence_level", 400).body
    reshaped = run(responder(400, [json.dumps(PYDANTIC, indent=2).encode()]))[1]["body"]
    assert sent[1]["body"] == via_api == encode_error(payload)
    assert reshaped == encode_error(json.loads(reshaped))
    assert via_api.startswith(b'{"error":"confidence_level: \xc3\xa9 bad","field":')


def test_a_shaped_body_in_another_spelling_is_respelled() -> None:
    spaced = json.dumps([error_payload("tag: nope", "tag", 404)], indent=1).encode()
    sent = run(responder(404, [spaced]))
    assert sent[1]["body"] == encode_error(error_payload("tag: nope", "tag", 404))
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_no_message_names_a_framework_class() -> None:
    msg = "Input should be a valid dictionary or instance of PredictBatchRequestIODescriptor"
    payload = validation_payload([{"type": "model_type", "loc": [], "msg": msg}])
    assert payload["error"] == (
        "request body: Input should be a valid dictionary or instance of the request body"
    )
