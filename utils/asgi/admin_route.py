"""ASGI middleware: an operator's route checks its token before anything reads the body.

`POST /model/reload` needs `Authorization: Bearer <ADMIN_TOKEN>` (`utils/api/model_reload.py`).
Checked in the API method only, the token came after BentoML had parsed and validated the body:
without a token, `{"tag": 5}` answered 400 naming `tag`, and an unknown key 400 naming that key,
instead of the documented 401. An unauthenticated client could read the route's schema from the
answers, and made the service parse whatever it sent. So the header is checked here, from the
request's headers alone, ahead of the body limits and of parsing: no or a malformed header is
401 (with `WWW-Authenticate: Bearer`), a wrong token 403, and with no `ADMIN_TOKEN` configured
the route says it is disabled (403). These answers go out before a byte of the body is read,
and the connection is closed (the unread body cannot be skipped cheaply). The API method checks
again, so a route left out of this layer stays closed.
"""

from __future__ import annotations

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from utils.api.errors import AdminRefused
from utils.api.model_reload import authorize
from utils.asgi.error_shape import send_error


def authorization(scope: Scope) -> str | None:
    """The request's one `Authorization` header; None when it is absent or sent twice."""
    headers = [v for k, v in scope.get("headers", []) if k == b"authorization"]
    return headers[0].decode("latin-1") if len(headers) == 1 else None


async def refuse(send: Send, refused: AdminRefused) -> None:
    """The 401/403 of an operator's route, the body left unread (so the connection closes)."""
    extra = [(b"connection", b"close")]
    if refused.status == 401:
        extra.append((b"www-authenticate", b"Bearer"))
    await send_error(send, refused.status, str(refused), "authorization", headers=extra)


class AdminRoutes:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...], token: SecretStr | None) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            authorize(authorization(scope), self.token)
        except AdminRefused as exc:
            await refuse(send, exc)
            return
        await self.app(scope, receive, send)
