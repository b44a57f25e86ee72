"""ASGI middleware opening an arrival `Ticket` for each request to a batchable route.

The ticket sits in the scope (`utils.serving.arrivals.SCOPE_KEY`) for the pipeline to close
when the request reaches the batcher; whatever happens to the request (a cache hit, a 4xx, a
client gone), it is closed here when the response starts or the request ends, so a count never
leaks past the request's life.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.serving.arrivals import SCOPE_KEY, Arrivals


class ArrivalCount:
    def __init__(self, app: ASGIApp, arrivals: Arrivals, paths: tuple[str, ...]) -> None:
        self.app = app
        self.arrivals = arrivals
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        ticket = self.arrivals.arrive()
        scope[SCOPE_KEY] = ticket

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ticket.close()
            await send(message)

        try:
            await self.app(scope, receive, closing_send)
        finally:
            ticket.close()
