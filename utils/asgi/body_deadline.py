"""ASGI middleware bounding how long a client may take to send its request body (408).

A connection that trickles its body a byte at a time costs the server nothing per byte but
holds a socket, a task and a buffer for as long as it likes: 200 of them stayed open
indefinitely. The server (uvicorn) bounds idle keep-alive connections but not a body in
progress, and BentoML's `traffic.timeout` only starts to matter once the body has arrived.
So the whole body must arrive within `BODY_TIMEOUT_S` of the request's headers; otherwise the
client gets 408 and the connection is closed. To the app the client has gone away, and
whatever it answers to that is dropped.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.asgi.error_shape import CutShort, send_error

# a body that arrived in time but is read late (a busy event loop) still gets this long
_GRACE_S = 0.05


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = False
        out = CutShort(send)

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # after the body, receive() waits for a disconnect: no deadline
                return await receive()
            if out.done:
                return {"type": "http.disconnect"}
            try:  # a timer on this task, not a task per chunk as `wait_for` would start
                async with asyncio.timeout(max(deadline - loop.time(), _GRACE_S)):
                    message = await receive()
            except TimeoutError:
                return await out.cut(self._too_slow)
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, out.send)

    async def _too_slow(self, send: Send) -> None:
        await send_error(
            send,
            408,
            f"request body: not received within {self.timeout_s:g} s "
            "(BODY_TIMEOUT_S); the connection is closed",
            headers=[(b"connection", b"close")],
        )
