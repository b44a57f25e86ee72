"""ASGI middleware: the JSON APIs accept `application/json` bodies only (else 415).

BentoML would try to parse a multipart or pickle body for a JSON API and fail with a 500
(found by schemathesis); refusing every other media type up front also guarantees that no
client-sent bytes ever reach a code-executing deserialiser.
"""

from __future__ import annotations

import json

from utils.limits import ASGIApp, Receive, Scope, Send


class JSONOnly:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and \
                scope.get("path") in self.paths:
            content_type = b""
            for name, value in scope.get("headers", []):
                if name == b"content-type":
                    content_type = value.split(b";")[0].strip().lower()
            if content_type not in (b"application/json", b""):
                body = json.dumps({
                    "error": f"Content-Type must be application/json, got "
                             f"{content_type.decode(errors='replace')[:100]}",
                    "field": None}).encode()
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
