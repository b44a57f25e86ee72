"""ASGI middleware answering `GET` and `HEAD` on chosen BentoML API routes (which only accept
POST).

The contract says `GET /model/info`; BentoML API methods are POST endpoints. Rewriting a GET
(or a HEAD: the server sends the answer's headers without its body) on those paths into a POST
with an empty JSON body keeps one implementation, one OpenAPI entry and BentoML's own metrics
and error handling for every verb. Any other method there is answered 405 by the framework;
its `Allow` header then names every method the route answers (`GET, HEAD, POST`), not only
the framework's `POST`.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW = b"GET, HEAD, POST"


class GetAsPost:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, _allowing(send))
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


def _allowing(send: Send) -> Send:
    """`send` with a 405's `Allow` header naming GET and HEAD beside POST."""

    async def allowing(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 405:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
            message = {**message, "headers": [*headers, (b"allow", ALLOW)]}
        await send(message)

    return allowing
