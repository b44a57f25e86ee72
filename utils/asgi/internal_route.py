"""ASGI middleware: `/infer` is the service's own door, not a public one.

`/infer` is the batchable API `BATCH_DISPATCH=proxy` calls through BentoML's in-process HTTP
client (`self.to_async.infer`). Open to the network it bypassed every limit of the predict
routes: 2 400 captures in one 65 MB request, or captures of 100 000 samples, answered 200.
So a request to an internal path is served only when

- the service itself made it: the call runs inside `internal_call`, which marks its task's
  context; the in-process client runs the app in that same task, so the mark reaches this
  middleware, and no network request can carry it (uvicorn starts each request's task from
  the server's context); or
- an operator sends `Authorization: Bearer <ADMIN_TOKEN>`, checked as `POST /model/reload`
  checks it (`utils/api/model_reload.authorize`), for diagnostics.

Anyone else gets 401 (no or a malformed header, with `WWW-Authenticate: Bearer`) or 403 (a
wrong token, or no `ADMIN_TOKEN` configured) before a byte of the body is read, and the
connection is closed (the unread body cannot be skipped cheaply).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from utils.api.errors import AdminRefused
from utils.api.model_reload import authorize
from utils.asgi.admin_route import authorization, refuse

P = ParamSpec("P")
R = TypeVar("R")

#: True inside `internal_call`: the request being made is the service's own.
_INTERNAL: ContextVar[bool] = ContextVar("rfloc_internal_call", default=False)


async def internal_call(fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
    """Await `fn(...)` (an in-process client call) as the service's own request."""
    token = _INTERNAL.set(True)
    try:
        return await fn(*args, **kwargs)
    finally:
        _INTERNAL.reset(token)


def is_internal() -> bool:
    return _INTERNAL.get()


class InternalRoutes:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...], token: SecretStr | None) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.paths or _INTERNAL.get():
            await self.app(scope, receive, send)
            return
        try:
            if self.token is None:
                raise AdminRefused(
                    403,
                    f"{path} is internal to the service (BATCH_DISPATCH=proxy); with no "
                    "ADMIN_TOKEN configured it takes no outside requests: use /predict_batch",
                )
            authorize(authorization(scope), self.token)
        except AdminRefused as exc:
            await refuse(send, exc)
            return
        await self.app(scope, receive, send)
