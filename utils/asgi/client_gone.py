"""ASGI middleware: a client that goes away before its answer is a client's doing, not a fault.

A client that closes its connection mid-body (or before the answer) made BentoML log an ERROR
traceback (`ClientDisconnect`), write status 500 to the access log and add one to
`bentoml_service_request_total{http_response_code="500"}`: an operator's 5xx alert fired on
clients' behaviour (200 slow clients, 200 tracebacks). Outermost of the service's middlewares,
this one watches the server's own `receive`: when it reports the client gone before a response
started, whatever the service answers is dropped, one INFO line is logged, the departure is
counted in `rfloc_client_disconnects_total{phase}`, and a 499 ("client closed request", as
nginx names it) is passed out to BentoML's access log and request metrics, which sit outside
and record it; the server drops it, as it drops anything sent to a closed connection. The
framework's `ClientDisconnect` traceback is dropped by `utils/serving/log_filters.py`.

A body cut short by the service itself (a 413 from `BodySizeLimit`, a 408 from `BodyDeadline`)
is not a departure: those answer first, and the client is still there to read it.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.asgi.error_shape import send_error
from utils.serving import metrics

log = logging.getLogger("bentoml.service.localization")

#: Status recorded for a request whose client left before the answer (never sent to anyone).
CLIENT_CLOSED = 499


class ClientGone:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        body_complete = False
        started = False
        phase: str | None = None  # set once the client is gone before a response started

        async def watched_receive() -> Message:
            nonlocal received, body_complete, phase
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = body_complete or not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not started and phase is None:
                phase = "response" if body_complete else "body"
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if phase is not None:
                return  # nobody to answer: the answer to a departed client is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, watched_receive, guarded_send)
        except Exception as exc:
            if phase is None or type(exc).__name__ != "ClientDisconnect":
                raise
        if phase is None:
            return
        metrics.CLIENT_DISCONNECTS.labels(phase).inc()
        log.info(
            "client %s went away %s: %s %s after %d body bytes; not answered (%d)",
            _client(scope),
            "mid-body" if phase == "body" else "before the answer",
            scope.get("method", ""),
            scope.get("path", ""),
            received,
            CLIENT_CLOSED,
        )
        await send_error(
            send, CLIENT_CLOSED, "client closed request: the client went away before the answer"
        )


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "_"
