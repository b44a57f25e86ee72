"""The ASGI middlewares in utils/asgi/, driven in-process through an ASGI client (no server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import httpx
import pytest
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.asgi import call
from utils.api.errors import ERROR_TYPES
from utils.asgi.arrival_count import ArrivalCount
from utils.asgi.body_size_limit import BodySizeLimit
from utils.asgi.get_as_post import GetAsPost
from utils.asgi.json_only import JSONOnly
from utils.asgi.openapi_fix import ERROR_SCHEMA, INFO, OpenAPIFix, nullable_fields
from utils.serving.arrivals import Arrivals

# --------------------------------------------------------------------------- helpers


@dataclass
class Received:
    """What the inner app saw of one request."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    disconnected: bool = False
    then: str = ""  # the message type of one more receive() after a disconnect


@dataclass
class Echo:
    """A bare ASGI app recording every request and answering 200 with what it received.

    If it is told the client went away mid-body it asks once more (a gone client must stay
    gone), then still answers (200, "late"), so a test can check that the answer is dropped.
    """

    calls: list[Received] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        seen = Received(
            scope["method"],
            scope["path"],
            scope.get("query_string", b""),
            list(scope.get("headers", [])),
        )
        self.calls.append(seen)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen.disconnected = True
                seen.then = (await receive())["type"]
                break
            seen.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        body = json.dumps(
            {
                "late": seen.disconnected,
                "method": seen.method,
                "path": seen.path,
                "body_len": len(seen.body),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in seen.headers],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@dataclass
class Static:
    """A bare ASGI app serving fixed responses by path, the body sent in the given chunks."""

    routes: dict[str, tuple[int, list[tuple[bytes, bytes]], list[bytes]]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, headers, chunks = self.routes[scope["path"]]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1}
            )


def streamed(chunks: list[bytes], pulled: list[int]) -> AsyncIterator[bytes]:
    """A chunked request body (no Content-Length); `pulled` counts the chunks read from it."""

    async def gen() -> AsyncIterator[bytes]:
        for chunk in chunks:
            pulled.append(len(chunk))
            yield chunk

    return gen()


def error(message: str, status: int) -> dict[str, Any]:
    """The one error shape (docs/api.md §1.3) of an error with no single field at fault."""
    return {
        "error": message,
        "field": None,
        "detail": [{"type": ERROR_TYPES[status], "loc": [], "msg": message}],
    }


def header_values(response: httpx.Response, name: str) -> list[str]:
    return response.headers.get_list(name)


# --------------------------------------------------------------------------- BodySizeLimit

MAX_BYTES = 64
MAX_VALUES = 10


def limits(path: str) -> tuple[int, str]:
    return MAX_BYTES, "MAX_REQUEST_BYTES"


def too_large_bytes(path: str = "/predict") -> dict[str, Any]:
    return error(
        f"request body too large: {path} takes at most {MAX_BYTES} bytes (MAX_REQUEST_BYTES)", 413
    )


def too_many_values() -> dict[str, Any]:
    return error(
        f"request body too large: more than {MAX_VALUES} JSON values "
        "(MAX_JSON_VALUES); send samples as iq_b64",
        413,
    )


def assert_413(response: httpx.Response, expected: dict[str, Any]) -> None:
    assert response.status_code == 413
    assert response.json() == expected
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert header_values(response, "content-length") == [str(len(response.content))]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"x" * MAX_BYTES,  # exactly the byte limit
        json.dumps(list(range(MAX_VALUES))).encode(),  # exactly MAX_VALUES values
        b"\x00\xff" * 8 + b'{"a": [1.5, -2]}',  # arbitrary bytes, kept exact
    ],
)
def test_body_size_limit_passes_bodies_within_both_limits_unchanged(body: bytes) -> None:
    inner = Echo()
    response = call(
        BodySizeLimit(inner, limits, MAX_VALUES),
        "POST",
        "/predict",
        content=body,
        headers={"x-trace": "1"},
    )
    assert response.status_code == 200
    assert response.json()["late"] is False
    assert len(inner.calls) == 1
    seen = inner.calls[0]
    assert (seen.method, seen.path, seen.body, seen.disconnected) == (
        "POST",
        "/predict",
        body,
        False,
    )
    assert (b"x-trace", b"1") in seen.headers


def test_body_size_limit_passes_streamed_body_within_limit() -> None:
    inner = Echo()
    pulled: list[int] = []
    chunks = [b"a" * 20, b"b" * 20, b"c" * 24]  # 64 bytes: at the limit
    response = call(
        BodySizeLimit(inner, limits, MAX_VALUES),
        "POST",
        "/predict",
        content=streamed(chunks, pulled),
    )
    assert response.status_code == 200
    assert inner.calls[0].body == b"".join(chunks)
    assert not any(k == b"content-length" for k, _ in inner.calls[0].headers)


def test_body_size_limit_refuses_declared_length_without_calling_app() -> None:
    inner = Echo()
    response = call(
        BodySizeLimit(inner, limits, MAX_VALUES),
        "POST",
        "/predict",
        content=b"x" * (MAX_BYTES + 1),
    )
    assert_413(response, too_large_bytes())
    assert inner.calls == []


def test_body_size_limit_refuses_declared_length_before_reading_the_body() -> None:
    inner = Echo()
    pulled: list[int] = []
    response = call(
        BodySizeLimit(inner, limits, MAX_VALUES),
        "POST",
        "/predict",
        content=streamed([b"x"], pulled),
        headers={"content-length": str(10**9)},
    )
    assert_413(response, too_large_bytes())
    assert inner.calls == []
    assert pulled == []  # not one byte was read


def test_body_size_limit_refuses_chunked_body_crossing_limit_mid_stream() -> None:
    inner = Echo()
    pulled: list[int] = []
    chunks = [b"x" * 20] * 6  # 20, 40, 60, 80 > 64: 4th
    response = call(
        BodySizeLimit(inner, limits, MAX_VALUES),
        "POST",
        "/predict",
        content=streamed(chunks, pulled),
    )
    assert_413(response, too_large_bytes())
    assert len(inner.calls) == 1
    seen = inner.calls[0]
    assert seen.disconnected is True  # the app was told the client left
    assert seen.then == "http.disconnect"  # ... and it stays gone
    assert seen.body == b"x" * 60  # never got the crossing chunk
    assert pulled == [20, 20, 20, 20]  # stopped reading at the crossing
    assert b"late" not in response.content  # the app's own answer dropped


def test_body_size_limit_counts_body_when_content_length_is_malformed() -> None:
    inner = Echo()
    response = call(
        BodySizeLimit(inner, limits, MAX_VALUES),
        "POST",
        "/predict",
        content=b"x" * (MAX_BYTES + 1),
        headers={"content-length": "lots"},
    )
    assert_413(response, too_large_bytes())
    assert inner.calls[0].disconnected is True


@pytest.mark.parametrize("stream", [False, True])
def test_body_size_limit_refuses_too_many_json_values(stream: bool) -> None:
    body = json.dumps(list(range(MAX_VALUES + 1)), separators=(",", ":")).encode()
    assert len(body) < MAX_BYTES  # only the value budget is hit
    pulled: list[int] = []
    # streamed one byte at a time, so commas are counted across chunks
    content = streamed([body[i : i + 1] for i in range(len(body))], pulled) if stream else body
    inner = Echo()
    response = call(BodySizeLimit(inner, limits, MAX_VALUES), "POST", "/predict", content=content)
    assert_413(response, too_many_values())
    assert len(inner.calls) == 1 and inner.calls[0].disconnected is True
    assert inner.calls[0].then == "http.disconnect"
    assert b"late" not in response.content
    if stream:  # refused at the 10th comma
        assert len(pulled) == body.index(b",10") + 1


def test_body_size_limit_without_value_budget_ignores_commas() -> None:
    inner = Echo()
    body = b"," * MAX_BYTES
    response = call(BodySizeLimit(inner, limits), "POST", "/predict", content=body)
    assert response.status_code == 200
    assert inner.calls[0].body == body


# --------------------------------------------------------------------------- JSONOnly

JSON_PATHS = ("/predict", "/model/info")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;charset=utf-8",
        "",
    ],
)
def test_json_only_accepts_json_or_no_content_type(content_type: str | None) -> None:
    inner = Echo()
    body = b'{"iq": [[1, 2]]}'
    headers = {} if content_type is None else {"content-type": content_type}
    response = call(
        JSONOnly(inner, paths=JSON_PATHS), "POST", "/predict", content=body, headers=headers
    )
    assert response.status_code == 200
    assert len(inner.calls) == 1 and inner.calls[0].body == body


@pytest.mark.parametrize(
    ("content_type", "reported"),
    [
        ("multipart/form-data; boundary=abc", "multipart/form-data"),
        ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
        ("text/plain", "text/plain"),
        ("application/octet-stream", "application/octet-stream"),
        ("application/python-pickle", "application/python-pickle"),
        ("application/json-patch+json", "application/json-patch+json"),
        ("TEXT/JSON ; q=1", "text/json"),
        ("application/" + "x" * 200, ("application/" + "x" * 200)[:100]),
    ],
)
def test_json_only_refuses_other_media_types_with_415(content_type: str, reported: str) -> None:
    inner = Echo()
    response = call(
        JSONOnly(inner, paths=JSON_PATHS),
        "POST",
        "/model/info",
        content=b"{}",
        headers={"content-type": content_type},
    )
    assert response.status_code == 415
    # the header's value is not repeated (docs/api.md §1.3: no error echoes its input)
    assert response.json() == error("Content-Type: must be application/json", 415)
    assert reported not in response.text
    assert response.headers["content-type"] == "application/json"
    assert header_values(response, "content-length") == [str(len(response.content))]
    assert inner.calls == []


@pytest.mark.parametrize(
    "encodings", [["gzip"], ["deflate"], ["br"], ["identity, gzip"], ["identity", "x" * 300]]
)
def test_json_only_refuses_a_coded_body_with_415(encodings: list[str]) -> None:
    """Nothing decodes gzip here: such a body was parsed as it came (a gzip body got
    "invalid JSON", a plain one labelled gzip was taken)."""
    inner = Echo()
    response = call(
        JSONOnly(inner, paths=JSON_PATHS),
        "POST",
        "/predict",
        content=b"{}",
        headers=[("content-encoding", e) for e in encodings],
    )
    assert response.status_code == 415 and inner.calls == []
    assert response.json() == error(
        "Content-Encoding: not supported; send the body uncompressed (identity), as "
        "application/json",
        415,
    )


@pytest.mark.parametrize("encodings", [[], ["identity"], ["IDENTITY"], [""]])
def test_json_only_takes_an_uncoded_body(encodings: list[str]) -> None:
    inner = Echo()
    response = call(
        JSONOnly(inner, paths=JSON_PATHS),
        "POST",
        "/predict",
        content=b"{}",
        headers=[("content-encoding", e) for e in encodings],
    )
    assert response.status_code == 200 and len(inner.calls) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/upload"),
        ("POST", "/predict/"),
        ("PUT", "/predict"),
        ("PATCH", "/predict"),
    ],
)
def test_json_only_leaves_unlisted_paths_and_non_post_methods_alone(method: str, path: str) -> None:
    inner = Echo()
    body = b"--abc\r\n\r\nnot json\r\n--abc--"
    response = call(
        JSONOnly(inner, paths=JSON_PATHS),
        method,
        path,
        content=body,
        headers={"content-type": "multipart/form-data; boundary=abc"},
    )
    assert response.status_code == 200
    seen = inner.calls[0]
    assert (seen.method, seen.path, seen.body) == (method, path, body)


@pytest.mark.parametrize("path", ["/predict", "/upload"])  # every POST route, listed or not
@pytest.mark.parametrize(
    "types",
    [
        ["application/json", "multipart/form-data; boundary=abc"],
        ["multipart/form-data; boundary=abc", "application/json"],
        ["application/json", "application/json"],
    ],
)
def test_json_only_refuses_duplicated_content_type_with_400(types: list[str], path: str) -> None:
    inner = Echo()
    response = call(
        JSONOnly(inner, paths=JSON_PATHS),
        "POST",
        path,
        content=b"{}",
        headers=[("content-type", t) for t in types],
    )
    assert response.status_code == 400
    assert response.json() == error(
        "Content-Type: sent 2 times; send the header once (application/json)", 400
    )
    assert response.headers["content-type"] == "application/json"
    assert inner.calls == []


def test_json_only_counts_every_duplicated_content_type() -> None:
    inner = Echo()
    response = call(
        JSONOnly(inner, paths=JSON_PATHS),
        "POST",
        "/predict",
        content=b"{}",
        headers=[("content-type", "application/json")] * 3,
    )
    assert response.status_code == 400
    assert response.json() == error(
        "Content-Type: sent 3 times; send the header once (application/json)", 400
    )
    assert inner.calls == []


# --------------------------------------------------------------------------- GetAsPost


def test_get_as_post_rewrites_get_on_listed_path_to_post_with_empty_json() -> None:
    inner = Echo()
    response = call(
        GetAsPost(inner, paths=("/model/info",)),
        "GET",
        "/model/info?x=1",
        headers={"content-type": "text/plain", "x-trace": "7"},
    )
    assert response.status_code == 200
    seen = inner.calls[0]
    assert (seen.method, seen.path, seen.query, seen.body) == ("POST", "/model/info", b"x=1", b"{}")
    assert [v for k, v in seen.headers if k == b"content-type"] == [b"application/json"]
    assert [v for k, v in seen.headers if k == b"content-length"] == [b"2"]
    assert (b"x-trace", b"7") in seen.headers


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/health", b""),
        ("GET", "/model/info/", b""),
        ("HEAD", "/health", b""),
        ("POST", "/model/info", b'{"verbose": true}'),
    ],
)
def test_get_as_post_leaves_other_paths_and_methods_alone(
    method: str, path: str, body: bytes
) -> None:
    inner = Echo()
    response = call(
        GetAsPost(inner, paths=("/model/info",)),
        method,
        path,
        content=body,
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 200
    seen = inner.calls[0]
    assert (seen.method, seen.path, seen.body) == (method, path, body)
    assert [v for k, v in seen.headers if k == b"content-type"] == [b"text/plain"]


def test_get_as_post_lets_a_post_only_starlette_route_answer_get() -> None:
    async def info(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "method": request.method,
                "body": (await request.body()).decode(),
                "type": request.headers.get("content-type"),
            }
        )

    app = Starlette(routes=[Route("/model/info", info, methods=["POST"])])
    assert call(app, "GET", "/model/info").status_code == 405  # control: GET alone is refused
    response = call(GetAsPost(app, paths=("/model/info",)), "GET", "/model/info")
    assert response.status_code == 200
    assert response.json() == {"method": "POST", "body": "{}", "type": "application/json"}


def test_get_as_post_answers_head_like_get_and_names_every_method_in_allow() -> None:
    """HEAD is a GET without the body (the server drops it); a 405 there names GET and HEAD
    beside the framework's POST (it said `Allow: POST`, though GET works)."""

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"method": request.method})

    app = Starlette(routes=[Route("/model/info", info, methods=["POST"])])
    wrapped = GetAsPost(app, paths=("/model/info",))
    refused = call(app, "PUT", "/model/info")
    assert (refused.status_code, refused.headers["allow"]) == (405, "POST")  # control
    head = call(wrapped, "HEAD", "/model/info")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(b'{"method":"POST"}')
    for method in ("PUT", "DELETE", "PATCH"):
        response = call(wrapped, method, "/model/info")
        assert response.status_code == 405
        assert header_values(response, "allow") == ["GET, HEAD, POST"]
    assert call(wrapped, "PUT", "/other").status_code == 404  # other paths untouched


# --------------------------------------------------------------------------- OpenAPIFix

SPEC_IN: dict[str, Any] = {
    "openapi": "3.0.2",
    "info": {"title": "t", "version": "1"},
    "components": {
        "schemas": {
            "PredictRequest": {
                "title": "PredictRequest",
                "type": "object",
                "properties": {
                    "snr": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100.5},
                    "flag": {"type": "number", "minimum": 1, "exclusiveMinimum": True},
                    "session_id": {
                        "anyOf": [{"type": "string", "title": "Inner"}, {"type": "null"}],
                        "default": None,
                        "title": "Session Id",
                    },
                    "gain": {
                        "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]
                    },
                    "ellipse": {
                        "anyOf": [{"$ref": "#/components/schemas/Ellipse"}, {"type": "null"}],
                        "default": None,
                    },
                    "value": {"oneOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
                    "plain": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                },
            },
            "PredictionResponseIODescriptor": {
                "title": "PredictionResponseIODescriptor",
                "type": "object",
                "properties": {"confidence": {"type": "number"}, "x": {"type": "number"}},
            },
            "Other": {
                "title": "Other",
                "type": "object",
                "properties": {"confidence": {"type": "number"}},
            },
            "InvalidArgument": {
                "title": "InvalidArgument",
                "type": "object",
                "properties": {"detail": {"type": "string", "title": "Detail"}},
            },
        }
    },
}

SPEC_OUT: dict[str, Any] = {
    "openapi": "3.0.2",
    "info": {"version": "1", **INFO},  # ours: no badges loaded from third parties
    "components": {
        "schemas": {
            "PredictRequest": {
                "title": "PredictRequest",
                "type": "object",
                "properties": {
                    "snr": {
                        "type": "number",
                        "minimum": 0,
                        "exclusiveMinimum": True,
                        "maximum": 100.5,
                        "exclusiveMaximum": True,
                    },
                    "flag": {"type": "number", "minimum": 1, "exclusiveMinimum": True},
                    "session_id": {
                        "type": "string",
                        "nullable": True,
                        "default": None,
                        "title": "Session Id",
                    },
                    "gain": {
                        "type": "number",
                        "minimum": 0,
                        "exclusiveMinimum": True,
                        "nullable": True,
                    },
                    "ellipse": {
                        "allOf": [{"$ref": "#/components/schemas/Ellipse"}],
                        "nullable": True,
                        "default": None,
                    },
                    "value": {"oneOf": [{"type": "integer"}, {"type": "string"}], "nullable": True},
                    "plain": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                },
            },
            "PredictionResponseIODescriptor": {
                "title": "PredictionResponseIODescriptor",
                "type": "object",
                "properties": {
                    "confidence": {"type": "number", "nullable": True},
                    "x": {"type": "number"},
                },
            },
            "Other": {
                "title": "Other",
                "type": "object",
                "properties": {"confidence": {"type": "number"}},
            },
            "InvalidArgument": {**ERROR_SCHEMA, "description": ""},
        }
    },
}

NULLABLE = {"PredictionResponseIODescriptor": {"confidence", "absent"}}


def spec_app(
    status: int, body: bytes, chunk: int = 50, extra: list[tuple[bytes, bytes]] | None = None
) -> Static:
    """/docs.json and /other both answering `body` in `chunk`-byte pieces."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    return Static(
        {
            "/docs.json": (status, headers, chunks),
            "/other": (status, headers, chunks),
            "/docs.json/": (status, headers, chunks),
        }
    )


def test_openapi_fix_rewrites_docs_json_and_corrects_content_length() -> None:
    raw = json.dumps(SPEC_IN, indent=1).encode()
    response = call(
        OpenAPIFix(spec_app(200, raw, extra=[(b"x-served-by", b"bento")]), nullable=NULLABLE),
        "GET",
        "/docs.json",
    )
    assert response.status_code == 200
    assert response.json() == SPEC_OUT
    assert header_values(response, "content-length") == [str(len(response.content))]
    assert len(response.content) != len(raw)  # the length did change
    assert response.headers["x-served-by"] == "bento"  # other headers kept


def test_openapi_fix_answers_later_gets_from_its_first_fixed_document() -> None:
    """The document is fixed for the process's life: BentoML builds it and it is rewritten
    once; an error or a body that is not JSON is never kept."""
    raw = json.dumps(SPEC_IN).encode()
    served: list[str] = []
    inner = spec_app(200, raw)

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        served.append(scope["method"])
        await inner(scope, receive, send)

    app = OpenAPIFix(counting, nullable=NULLABLE)
    first, second = call(app, "GET", "/docs.json"), call(app, "GET", "/docs.json")
    assert call(app, "HEAD", "/docs.json").status_code == 200
    assert served == ["GET"]  # later requests never reached BentoML
    assert first.json() == second.json() == SPEC_OUT
    assert second.headers["content-length"] == str(len(second.content))
    for status, body in ((200, b"not json"), (500, raw)):
        calls: list[str] = []
        other = spec_app(status, body)

        async def counted(
            scope: Scope, receive: Receive, send: Send, app: Any = other, seen: Any = calls
        ) -> None:
            seen.append(scope["method"])
            await app(scope, receive, send)

        kept = OpenAPIFix(counted, nullable=NULLABLE)
        assert [call(kept, "GET", "/docs.json").status_code for _ in range(2)] == [status] * 2
        assert calls == ["GET", "GET"]


@pytest.mark.parametrize("path", ["/other", "/docs.json/"])
def test_openapi_fix_passes_other_responses_byte_for_byte(path: str) -> None:
    raw = json.dumps(SPEC_IN, indent=1).encode()
    inner = spec_app(200, raw, extra=[(b"x-served-by", b"bento")])
    direct = call(inner, "GET", path)
    response = call(OpenAPIFix(inner, nullable=NULLABLE), "GET", path)
    assert response.status_code == 200
    assert response.content == raw
    assert response.headers.raw == direct.headers.raw


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, json.dumps(SPEC_IN).encode()),  # not a 200: left as served
        (200, b"<html>not json</html>"),  # not JSON: left as served
        (200, b"\x1f\x8b\x08\x00binary"),  # not UTF-8: left as served
    ],
)
def test_openapi_fix_leaves_non_200_and_non_json_docs_bodies_alone(
    status: int, body: bytes
) -> None:
    response = call(
        OpenAPIFix(spec_app(status, body, chunk=7), nullable=NULLABLE), "GET", "/docs.json"
    )
    assert response.status_code == status
    assert response.content == body
    assert header_values(response, "content-length") == [str(len(body))]


def test_openapi_fix_turns_a_pydantic_schema_into_openapi_30() -> None:
    class Inner(BaseModel):
        a: int

    class Model(BaseModel):
        snr: float = Field(gt=0, lt=60)
        confidence: Optional[float] = None  # noqa: UP045
        session_id: str | None = None
        inner: Inner | None = None
        either: Union[int, str, None] = None  # noqa: UP007
        count: int = Field(ge=1)

    schema = Model.model_json_schema(ref_template="#/components/schemas/{model}")
    spec = {"openapi": "3.0.2", "components": {"schemas": {**schema.pop("$defs"), "Model": schema}}}
    response = call(
        OpenAPIFix(spec_app(200, json.dumps(spec).encode()), nullable=nullable_fields([Model])),
        "GET",
        "/docs.json",
    )
    props = response.json()["components"]["schemas"]["Model"]["properties"]
    text = json.dumps(props)
    assert '{"type": "null"}' not in text
    assert {k: v for k, v in props["snr"].items() if k != "title"} == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 60,
        "exclusiveMaximum": True,
    }
    assert props["count"]["minimum"] == 1 and "exclusiveMinimum" not in props["count"]
    assert props["confidence"]["type"] == "number" and props["confidence"]["nullable"] is True
    assert props["session_id"]["type"] == "string" and props["session_id"]["nullable"] is True
    assert props["inner"]["allOf"] == [{"$ref": "#/components/schemas/Inner"}]
    assert props["inner"]["nullable"] is True
    assert props["either"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert props["either"]["nullable"] is True


def test_nullable_fields_reads_optional_annotations() -> None:
    class Reply(BaseModel):
        a: Optional[float] = None  # noqa: UP045
        b: int | None = None
        c: Union[str, None] = None  # noqa: UP007
        d: Union[int, str] = 0  # noqa: UP007
        e: float = 0.0
        f: list[int | None] = []

    class Empty(BaseModel):
        x: int = 0

    assert nullable_fields([Reply, Empty]) == {
        "Reply": {"a", "b", "c"},
        "ReplyIODescriptor": {"a", "b", "c"},
        "Empty": set(),
        "EmptyIODescriptor": set(),
    }


# --------------------------------------------------------------------------- all of them

MIDDLEWARES: dict[str, Callable[[ASGIApp], ASGIApp]] = {
    "BodySizeLimit": lambda app: BodySizeLimit(app, limits, MAX_VALUES),
    "JSONOnly": lambda app: JSONOnly(app, paths=JSON_PATHS),
    "GetAsPost": lambda app: GetAsPost(app, paths=("/model/info",)),
    "OpenAPIFix": lambda app: OpenAPIFix(app, nullable=NULLABLE),
}


def run_lifespan(app: ASGIApp) -> list[str]:
    """Drive the ASGI lifespan protocol (startup, then shutdown); return what was sent back."""

    async def go() -> list[str]:
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        replies: list[str] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            replies.append(message["type"])

        await asyncio.wait_for(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send), timeout=5
        )
        return replies

    return asyncio.run(go())


@pytest.mark.parametrize("name", list(MIDDLEWARES))
def test_lifespan_passes_through(name: str) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    replies = run_lifespan(MIDDLEWARES[name](Starlette(lifespan=lifespan)))
    assert events == ["startup", "shutdown"]
    assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# --------------------------------------------------------------------------- ArrivalCount


def test_arrival_count_opens_a_ticket_per_batchable_request_and_closes_it() -> None:
    arrivals = Arrivals()
    seen: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(arrivals.pending)
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(arrivals.pending)  # closed when the response starts
        await send({"type": "http.response.body", "body": b"ok"})

    counted = ArrivalCount(app, arrivals=arrivals, paths=("/predict", "/boom"))
    assert call(counted, "POST", "/predict", content=b"{}").status_code == 200
    assert seen == [1, 0] and arrivals.pending == 0
    seen.clear()
    assert call(counted, "POST", "/other", content=b"{}").status_code == 200
    assert seen == [0, 0]  # not a batchable route: not counted
    with pytest.raises(RuntimeError):
        call(counted, "POST", "/boom", content=b"{}")
    assert arrivals.pending == 0  # closed however the request ended
