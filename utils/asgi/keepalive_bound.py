"""ASGI middleware bounding how long a keep-alive connection serves: `Connection: close` after
`max_requests` requests or `max_age_s` seconds on it.

The workers share one listening socket and the kernel hands each new connection to one of
them; a keep-alive connection then stays with its worker for as long as the client keeps it
busy. When a worker dies (`kill -9`, the OOM killer), its clients reconnect to the survivors,
and its replacement, up seconds later, finds every client already connected elsewhere: with 16
keep-alive clients it served nothing for 22 s, and throughput stayed at the one survivor's.
uvicorn bounds only idle connections (`--timeout-keep-alive`, 5 s) and BentoML exposes no
per-connection bound, so this middleware marks the response that ends a connection's term
with `Connection: close` (uvicorn then closes the connection once that response is sent; the
client sees it, so no request is lost) and the client's next connection goes to whichever
worker accepts it first, the restarted one included.

A connection is known by its client address and port (`scope["client"]`), the one
per-connection identity ASGI gives. Its entry is dropped when the connection is told to close
and forgotten after `STALE_S` without a request (uvicorn has closed it long before); a new
connection that reuses an old port within that time inherits a count and closes early, which
costs a reconnect and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

STALE_S = 120.0
PRUNE_ABOVE = 1024  # entries before a sweep of stale ones


@dataclass
class _Connection:
    opened: float
    last: float
    requests: int = 0


class KeepAliveBound:
    def __init__(
        self,
        app: ASGIApp,
        max_requests: int = 0,
        max_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.max_requests = max_requests
        self.max_age_s = max_age_s
        self.clock = clock
        self.connections: dict[tuple[object, ...], _Connection] = {}

    def _prune(self, now: float) -> None:
        if len(self.connections) > PRUNE_ABOVE:
            for key in [k for k, c in self.connections.items() if now - c.last > STALE_S]:
                del self.connections[key]

    def _ends_term(self, connection: _Connection, now: float) -> bool:
        if self.max_requests and connection.requests >= self.max_requests:
            return True
        return bool(self.max_age_s) and now - connection.opened >= self.max_age_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client or not (self.max_requests or self.max_age_s):
            await self.app(scope, receive, send)
            return
        key = (*client, *(scope.get("server") or ()))
        now = self.clock()
        connection = self.connections.get(key)
        if connection is None or now - connection.last > STALE_S:
            self._prune(now)
            connection = self.connections[key] = _Connection(opened=now, last=now)
        connection.requests += 1
        connection.last = now

        async def bounding_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                now = self.clock()
                connection.last = now
                if self._ends_term(connection, now):
                    self.connections.pop(key, None)
                    headers = list(message.get("headers", []))
                    if not any(
                        k.lower() == b"connection" and b"close" in v.lower() for k, v in headers
                    ):
                        headers.append((b"connection", b"close"))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, bounding_send)
