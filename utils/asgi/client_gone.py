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

On the routes it is told to `watch` (the predictions), it also notices a client that leaves
while its request waits for inference: nothing in the app reads `receive()` once the body is
in, so the request's `Departure` (`utils/serving/departure.py`, in the scope) can start a
watcher task that awaits the server's `receive()`, which answers `http.disconnect` when the
connection closes (uvicorn sets the cycle's `disconnected` flag and wakes its waiters). The
greedy batcher starts it for a request that has to queue; it marks the `Departure` `gone`, and
the batcher drops the request's queued items unrun (the pipeline skips decoding and dispatch
too). Such a departure is counted as phase `queued`; one whose work had already run stays
`response`. The watcher ends with the request.

A body cut short by the service itself (a 413 from `BodySizeLimit`, a 408 from `BodyDeadline`)
is not a departure: those answer first, and the client is still there to read it. Nor is a body
the server found malformed mid-request (a bad chunk): the connection answered it 400 and closed
(`http_protocol.py`, which logs it), and that 400 is what is recorded here.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.asgi.error_shape import send_error
from utils.asgi.http_protocol import PROTOCOL_ERROR, ProtocolError
from utils.serving import metrics
from utils.serving.departure import SCOPE_KEY, Departure

log = logging.getLogger("bentoml.service.localization")

#: Status recorded for a request whose client left before the answer (never sent to anyone).
CLIENT_CLOSED = 499
#: The log's words for each `rfloc_client_disconnects_total` phase.
WHEN = {
    "body": "mid-body",
    "response": "before the answer",
    "queued": "before inference (skipped)",
}


class ClientGone:
    def __init__(self, app: ASGIApp, watch: tuple[str, ...] = ()) -> None:
        """`watch`: paths whose requests get a `Departure` and a watcher once the body is in."""
        self.app = app
        self.watch = frozenset(watch)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        body_complete = False
        started = False
        phase: str | None = None  # set once the client is gone before a response started
        departure: Departure | None = None
        watcher: asyncio.Task[None] | None = None

        def start_watcher() -> None:  # once the body is in, before any answer
            nonlocal watcher
            if watcher is None and body_complete and not started:
                watcher = asyncio.get_running_loop().create_task(watch_for_departure())

        if scope.get("path") in self.watch:
            departure = scope[SCOPE_KEY] = Departure(start_watcher)

        def left() -> None:
            nonlocal phase
            if not started and phase is None:
                phase = "response" if body_complete else "body"
                if departure is not None:
                    departure.gone = True

        async def watch_for_departure() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            left()

        async def watched_receive() -> Message:
            nonlocal received, body_complete
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = body_complete or not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                left()
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
        finally:
            if watcher is not None:
                watcher.cancel()
        if phase is None:
            return
        answered = scope.get(PROTOCOL_ERROR)
        if isinstance(answered, ProtocolError) and answered.status is not None:
            await send_error(send, answered.status, answered.message)  # recorded, not sent
            return
        if departure is not None and departure.skipped:
            phase = "queued"  # left while its request waited: its inference was skipped
        metrics.CLIENT_DISCONNECTS.labels(phase).inc()
        log.info(
            "client %s went away %s: %s %s after %d body bytes; not answered (%d)",
            _client(scope),
            WHEN[phase],
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
