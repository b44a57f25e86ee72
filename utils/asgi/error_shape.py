"""ASGI middleware giving every error response the service's one shape (docs/api.md §1.3).

The service's own errors are built in that shape (`utils/api/errors.py`), but the framework
answers some requests before the service sees them, each in a shape of its own:
pydantic's validation errors through BentoML (`{"error": "1 validation error for
PredictRequestIODescriptor", "detail": [...]}`, naming an internal class and no field), its
other exceptions (`{"error": ...}`, once wrapped in a list by a BentoML 1.4.40 slip), and
Starlette's plain-text `Not Found` / `Method Not Allowed`. A client should need one parser for
every error, so this middleware rewrites error responses (status >= 400) that are not already
in the shape on their way out. Success responses stream through untouched; error bodies are
small, and one larger than `MAX_ERROR_BODY` is not passed on: it is answered in the shape
with what its first `MAX_ERROR_BODY` bytes tell (pydantic's problem count and first problems),
and the rest is dropped. No answer here repeats the request's path or method: a path is the
client's text (`/<script>...`, or 60 KB of it).

`send_error` is how the other middlewares answer in the same shape, and `CutShort` how one of
them ends a request whose body it stops reading.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.api.errors import (
    MAX_DETAIL,
    WHOLE_BODY,
    encode_error,
    error_payload,
    validation_payload,
)

MAX_ERROR_BODY = 256 * 1024
_SHAPE = {"error", "field", "detail"}
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
# BentoML's answer to a pydantic ValidationError: `{"error": "<n> validation error for ...`
_VALIDATION = re.compile(rb'\A\s*\{\s*"error"\s*:\s*"(\d+) validation errors? for ')
_DETAIL = re.compile(rb'"detail"\s*:\s*\[')
_COMMA = re.compile(r"\s*,\s*")


async def send_error(
    send: Send,
    status: int,
    message: str,
    field: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    error_type: str | None = None,
) -> None:
    """Answer with one error in the service's shape (and close nothing: see the callers)."""
    body = encode_error(error_payload(message, field, status, error_type))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class CutShort:
    """The send side of a layer that may stop reading a request's body (413, 408, 503).

    Once `cut`, the layer's own error answer goes out, unless the app had already begun its
    own; the app is told the client has gone away, and whatever it answers to that is
    dropped. `BodySizeLimit`, `InflightBudget` and `BodyDeadline` each wrap `send` in one.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False  # the app has sent its response start
        self.done = False  # the layer has ended the request

    async def send(self, message: Message) -> None:
        if self.done:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def cut(self, answer: Callable[[Send], Awaitable[None]]) -> Message:
        """End the request: `answer` on the real `send` if nothing was sent yet; returns the
        message the app's `receive` should now see."""
        if not self.started:
            await answer(self._send)
        self.done = True
        return {"type": "http.disconnect"}


def reshape(status: int, body: bytes, content_type: bytes, scope: Scope) -> dict[str, Any] | None:
    """The shaped payload for an error body, or None when it already has the shape."""
    data: Any = None
    if content_type.startswith(b"application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML 1.4.40 sends its 4xx exceptions as `({"error": ...},)`
    if isinstance(data, dict):
        if _SHAPE <= data.keys():
            return None
        detail = data.get("detail")
        if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
            return validation_payload(detail)
        if isinstance(data.get("error"), str):
            field = data.get("field")
            return error_payload(data["error"], field if isinstance(field, str) else None, status)
    if status == 404:
        return error_payload("path: no route at this path", None, 404)
    if status == 405:
        method = scope.get("method", "")
        method = method if method in _METHODS else "this method"
        return error_payload(f"method: {method} is not allowed on this route", None, 405)
    text = body.decode("utf-8", errors="replace").strip()[:200] or f"HTTP {status}"
    return error_payload(text, None, status)


def oversized(status: int, head: bytes) -> dict[str, Any]:
    """The shaped payload for an error body over `MAX_ERROR_BODY`, from its first bytes: a
    BentoML validation error keeps its count and the first problems that fit in `head`."""
    count = _VALIDATION.match(head)
    found = _DETAIL.search(head)
    if count is not None and found is not None:
        text = head[found.end() :].decode("utf-8", errors="ignore")
        decoder, items = json.JSONDecoder(), []
        at = len(text) - len(text.lstrip())
        while len(items) < MAX_DETAIL:
            try:
                item, at = decoder.raw_decode(text, at)
            except ValueError:
                break
            if not isinstance(item, dict):
                break
            items.append(item)
            comma = _COMMA.match(text, at)
            if comma is None:
                break
            at = comma.end()
        if items:
            return validation_payload(items, total=int(count.group(1)))
    what = f"{WHOLE_BODY}: refused" if status < 500 else "server: failed"
    return error_payload(
        f"{what}; the error report was over {MAX_ERROR_BODY} bytes and is not sent", None, status
    )


class ErrorShape:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        passing = False
        dropping = False  # an oversized error was answered: the rest of it goes nowhere

        async def shaping_send(message: Message) -> None:
            nonlocal start, size, passing, dropping
            if passing:
                await send(message)
                return
            if dropping:
                return
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    passing = True
                    await send(message)
                else:
                    start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_ERROR_BODY:  # too large to send: its gist, in the shape
                dropping = True
                head = b"".join(chunks)[:MAX_ERROR_BODY]
                chunks.clear()
                await _send_payload(send, start, oversized(start["status"], head))
                return
            if message.get("more_body", False):
                return
            await _send_shaped(send, start, b"".join(chunks), scope)

        await self.app(scope, receive, shaping_send)


async def _send_shaped(send: Send, start: Message, body: bytes, scope: Scope) -> None:
    headers = [(k.lower(), v) for k, v in start.get("headers", [])]
    content_type = next((v for k, v in headers if k == b"content-type"), b"")
    payload = reshape(start["status"], body, content_type.lower(), scope)
    if payload is None:  # in the shape already: in its one spelling too, whoever wrote it
        payload = json.loads(body)
        if isinstance(payload, list):  # BentoML's `({"error": ...},)`, already shaped
            payload = payload[0]
        if encode_error(payload) == body:
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
    await _send_payload(send, start, payload)


async def _send_payload(send: Send, start: Message, payload: dict[str, Any]) -> None:
    """`start`'s status and headers (but its body's type and length) with `payload`."""
    body = encode_error(payload)
    headers = [
        (k, v)
        for k, v in ((k.lower(), v) for k, v in start.get("headers", []))
        if k not in (b"content-type", b"content-length")
    ]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})
