"""ASGI middleware refusing oversized request bodies with 413, before anything parses them.

Two budgets. Bytes: a declared `Content-Length` over the limit is refused without reading a
byte; a chunked body is counted as it streams and refused as soon as it crosses the limit.
JSON values: parsed JSON costs the worker ~100 bytes of Python objects per number (a float and
its share of an `[I, Q]` list), 10-20x its text, so the separators are counted as the body
streams in and a body with more values than `max_json_values` is refused before the parse.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_json_values: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_values = max_json_values

    async def _reject(self, send: Send, reason: str | None = None) -> None:
        message = reason or (
            f"request body too large: the limit is {self.max_bytes} bytes (MAX_REQUEST_BYTES)"
        )
        body = json.dumps({"error": message, "field": None}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        separators = 0
        started = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused, separators
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                reason = None
                if self.max_json_values is not None:
                    separators += chunk.count(b",")
                    if separators >= self.max_json_values:
                        reason = (
                            f"request body too large: more than {self.max_json_values} "
                            "JSON values (MAX_JSON_VALUES); send samples as iq_b64"
                        )
                if received > self.max_bytes or reason:
                    # answer now; to the app the client has gone away, and whatever it
                    # answers to that is dropped below
                    if not started:
                        await self._reject(send, reason)
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
