"""ASGI middleware giving every error response the service's one shape (docs/api.md §1.3).

The service's own errors are built in that shape (`utils/api/errors.py`), but the framework
answers some requests before the service sees them, each in a shape of its own:
pydantic's validation errors through BentoML (`{"error": "1 validation error for
PredictRequestIODescriptor", "detail": [...]}`, naming an internal class and no field), its
other exceptions (`{"error": ...}`, once wrapped in a list by a BentoML 1.4.40 slip), and
Starlette's plain-text `Not Found` / `Method Not Allowed`. A client should need one parser for
every error, so this middleware rewrites error responses (status >= 400) that are not already
in the shape on their way out. Success responses stream through untouched; error bodies are
small, and one larger than `MAX_ERROR_BODY` passes through as it is.

`send_error` is how the other middlewares answer in the same shape, and `CutShort` how one of
them ends a request whose body it stops reading.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.api.errors import error_payload, validation_payload

MAX_ERROR_BODY = 256 * 1024
_SHAPE = {"error", "field", "detail"}


async def send_error(
    send: Send,
    status: int,
    message: str,
    field: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with one error in the service's shape (and close nothing: see the callers)."""
    body = json.dumps(error_payload(message, field, status)).encode()
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
            return error_payload(data["error"], data.get("field"), status)
    method, path = scope.get("method", ""), scope.get("path", "")
    if status == 404:
        return error_payload(f"path: no route {method} {path}", None, 404)
    if status == 405:
        return error_payload(f"method: {method} is not allowed on {path}", None, 405)
    text = body.decode("utf-8", errors="replace").strip()[:500] or f"HTTP {status}"
    return error_payload(text, None, status)


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

        async def shaping_send(message: Message) -> None:
            nonlocal start, size, passing
            if passing:
                await send(message)
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
            if size > MAX_ERROR_BODY:  # not an error body this middleware knows: as it is
                passing = True
                await send(start)
                await send({**message, "body": b"".join(chunks)})
                return
            if message.get("more_body", False):
                return
            await _send_shaped(send, start, b"".join(chunks), scope)

        await self.app(scope, receive, shaping_send)


async def _send_shaped(send: Send, start: Message, body: bytes, scope: Scope) -> None:
    headers = [(k.lower(), v) for k, v in start.get("headers", [])]
    content_type = next((v for k, v in headers if k == b"content-type"), b"")
    payload = reshape(start["status"], body, content_type.lower(), scope)
    if payload is not None:
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})
