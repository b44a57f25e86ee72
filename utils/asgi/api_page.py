"""`GET /`: BentoML's Swagger UI without the third-party tracker, behind a strict CSP.

BentoML 1.4.40 writes Google Tag Manager (`GTM-WNPGWRM`) into the page that serves its Swagger
UI, and it loads in every visitor's browser even with `BENTOML_DO_NOT_TRACK`: an operator's API
page inside an organisation must not call a third party. This middleware serves BentoML's own
page with every `<script>` and `<noscript>` that reaches googletagmanager removed, and adds a
`Content-Security-Policy` that lets the page load nothing from another origin (Swagger UI's
files are BentoML's own, under `/static_content/`), so a tracker that moved would be blocked
rather than loaded, and that no other site may frame (`frame-ancestors 'none'`, with
`X-Frame-Options: DENY` and `X-Content-Type-Options: nosniff`). Tested in a real browser:
every request the page makes stays on the service.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_TRACKERS = [
    re.compile(
        rb"<script\b[^>]*>(?:(?!</script>).)*googletagmanager(?:(?!</script>).)*</script>", re.S
    ),
    re.compile(
        rb"<noscript\b[^>]*>(?:(?!</noscript>).)*googletagmanager(?:(?!</noscript>).)*</noscript>",
        re.S,
    ),
    re.compile(rb"<!-- (?:End )?Google Tag Manager[^>]*-->"),
]
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-src 'none'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
#: no other site may frame the page (clickjacking: `frame-ancestors` above, `X-Frame-Options`
#: for browsers without CSP 2), and no answer is sniffed into another type than it declares
HARDENING = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff")]


def without_trackers(html: bytes) -> bytes:
    for pattern in _TRACKERS:
        html = pattern.sub(b"", html)
    return html


class APIPage:
    """Rewrites the answer to `GET /` (the docs page); every other request passes untouched."""

    def __init__(self, app: ASGIApp, path: str = "/") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != self.path
            or scope.get("method") not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            assert start is not None
            body = without_trackers(b"".join(chunks))
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower()
                not in (b"content-length", b"content-security-policy", *(n for n, _ in HARDENING))
            ]
            if scope.get("method") == "GET":
                headers.append((b"content-length", str(len(body)).encode()))
            headers += [(b"content-security-policy", CSP.encode()), *HARDENING]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)
