"""ASGI middleware refusing oversized request bodies with 413, before anything parses them.

Two budgets. Bytes, per route (`utils/api/body_limits.py`: a `/predict` needs far less than a
`/predict_batch`): a declared `Content-Length` over the limit is refused without reading a
byte; a chunked body is counted as it streams and refused as soon as it crosses the limit.
JSON values: parsed JSON costs the worker ~100 bytes of Python objects per number (a float and
its share of an `[I, Q]` list), 10-20x its text, so the separators are counted as the body
streams in and a body with more values than `max_json_values` is refused before the parse.
A body that declares fewer bytes than that cannot hold more separators than bytes, so it is
not counted at all: counting was a third of what these layers cost an `iq_b64` `/predict`
(130 of 440 µs for a 450 kB body).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.asgi.error_shape import CutShort, send_error

# path -> (limit in bytes, where the limit comes from), e.g. `RouteBodyLimits`
Limits = Callable[[str], tuple[int, str]]


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limits: Limits, max_json_values: int | None = None) -> None:
        self.app = app
        self.limits = limits
        self.max_json_values = max_json_values

    @staticmethod
    async def _reject(send: Send, message: str) -> None:
        # the rest of the body is never read: the connection cannot be reused
        await send_error(send, 413, message, headers=[(b"connection", b"close")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        max_bytes, why = self.limits(path)
        too_large = f"request body too large: {path} takes at most {max_bytes} bytes ({why})"
        declared: int | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > max_bytes:
                    await self._reject(send, too_large)
                    return
        # separators <= bytes: a body declared below the value limit cannot cross it
        count_values = self.max_json_values is not None and (
            declared is None or declared < 0 or declared >= self.max_json_values
        )
        received = 0
        separators = 0
        out = CutShort(send)

        async def limited_receive() -> Message:
            nonlocal received, separators
            if out.done:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                reason = None
                if count_values:  # (the server delivers no more bytes than declared)
                    separators += chunk.count(b",")
                    if separators >= self.max_json_values:  # type: ignore[operator]
                        reason = (
                            f"request body too large: more than {self.max_json_values} "
                            "JSON values (MAX_JSON_VALUES); send samples as iq_b64"
                        )
                if received > max_bytes or reason:
                    why = reason or too_large
                    return await out.cut(lambda real_send: self._reject(real_send, why))
            return message

        await self.app(scope, limited_receive, out.send)
