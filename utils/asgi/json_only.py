"""ASGI middleware: the JSON APIs accept `application/json` bodies only (else 415).

BentoML would try to parse a multipart or pickle body for a JSON API and fail with a 500
(found by schemathesis); refusing every other media type up front also guarantees that no
client-sent bytes ever reach a code-executing deserialiser.

A request with more than one `Content-Type` header is refused with 400 on every POST route:
Starlette and BentoML read the first of duplicates, other proxies the last, so a doubled header
could be checked here as JSON and parsed downstream as multipart (it was: a 500). Refusing the
ambiguity is the only reading that cannot disagree with the framework's.

A body with a `Content-Encoding` other than `identity` is refused with 415 on the JSON routes:
nothing here decodes gzip or any other coding, so such a body would be parsed as it came
(a gzip body got a misleading "invalid JSON", and a plain body labelled gzip was taken).
Neither answer repeats the header's value.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from utils.asgi.error_shape import send_error


class JSONOnly:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            types = [value for name, value in scope.get("headers", []) if name == b"content-type"]
            if len(types) > 1:
                await send_error(
                    send,
                    400,
                    f"Content-Type: sent {len(types)} times; send the "
                    "header once (application/json)",
                )
                return
            content_type = types[0].split(b";")[0].strip().lower() if types else b""
            if scope.get("path") in self.paths and content_type not in (b"application/json", b""):
                await send_error(send, 415, "Content-Type: must be application/json")
                return
            codings = [
                coding.strip().lower()
                for name, value in scope.get("headers", [])
                if name == b"content-encoding"
                for coding in value.split(b",")
            ]
            if scope.get("path") in self.paths and any(
                c not in (b"identity", b"") for c in codings
            ):
                await send_error(
                    send,
                    415,
                    "Content-Encoding: not supported; send the body uncompressed "
                    "(identity), as application/json",
                )
                return
        await self.app(scope, receive, send)
