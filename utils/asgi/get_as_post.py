"""ASGI middleware answering `GET` on chosen BentoML API routes (which only accept POST).

The contract says `GET /model/info`; BentoML API methods are POST endpoints. Rewriting a GET on
those paths into a POST with an empty JSON body keeps one implementation, one OpenAPI entry
and BentoML's own metrics and error handling for both verbs.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class GetAsPost:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "GET"
            or scope.get("path") not in self.paths
        ):
            await self.app(scope, receive, send)
            return
        headers = [
            (k, v)
            for k, v in scope.get("headers", [])
            if k not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"2")]
        sent = False

        async def empty_json() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}

        rewritten: dict[str, Any] = {**scope, "method": "POST", "headers": headers}
        await self.app(rewritten, empty_json, send)
