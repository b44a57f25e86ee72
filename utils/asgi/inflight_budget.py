"""ASGI middleware bounding the request body bytes one worker holds at once (503 beyond it).

`BodySizeLimit` bounds each body, not how many arrive together: 32 concurrent legal 64 MiB
`/predict_batch` bodies took two workers past 4 GB, over the pod's memory limit, and a worker's
memory follows the bodies it is reading, parsing and answering (several times their size:
the chunks, the joined body, the parsed field, the decoded captures). So each worker admits a
request only while the bodies it already holds, plus this one, fit in `max_bytes`
(`MAX_INFLIGHT_BYTES`); beyond it the request is answered at once with 503, `Retry-After` and
the one error shape, its body unread (the connection is closed, as for a 413). A declared
`Content-Length` is reserved when the request arrives; a chunked body is counted as it
streams in and refused when it crosses the budget. The bytes are held until the response
has been sent. A request is always admitted when the worker holds no other body, so every
body `BodySizeLimit` accepts can be served; requests without a body (probes, `/metrics`)
never wait. `exempt` paths are not counted (`/infer`, whose body is a copy of a predict
request's captures, already counted). A client that declares a large body and sends it
slowly holds its share for at most `BODY_TIMEOUT_S` (`BodyDeadline`).

Freed memory is not returned to the system by itself: the chunks of concurrent bodies
interleave on the C heap, and a worker kept about 1 GB after 16 large bodies had been answered.
So when a worker that held a large body (`TRIM_AFTER_BYTES`) holds none any more, it calls
glibc's `malloc_trim` on a thread, after the response (it took 1-40 ms, median 12, after the
loads of `benchmarks/memory.py`), and a worker went back from ~330 MB to ~200 MB.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.asgi.error_shape import CutShort, send_error
from utils.serving import metrics

RETRY_AFTER_S = 1
# a worker that held a body at least this large gives its freed heap back once it holds none
TRIM_AFTER_BYTES = 8 * 1024 * 1024


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`: returns the free pages in the middle of the C heap to the
    system, which freeing alone does not (None where there is no glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


MALLOC_TRIM = _malloc_trim()


class InflightBudget:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        exempt: Iterable[str] = (),
        retry_after_s: int = RETRY_AFTER_S,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)
        self.retry_after_s = retry_after_s
        self.held = 0  # body bytes of the requests this worker is serving (one event loop)

    def _fits(self, size: int, own: int = 0) -> bool:
        """Whether `size` more bytes fit, for a request already holding `own` of them: always
        when no other request holds any."""
        return self.held == own or self.held + size <= self.max_bytes

    async def _refuse(self, send: Send, size: int | None) -> None:
        metrics.INFLIGHT_REFUSED.inc()
        what = f"a {size}-byte body" if size is not None else "this body"
        await send_error(
            send,
            503,
            f"overloaded: this worker holds {self.held} bytes of request bodies; {what} "
            f"would exceed its {self.max_bytes}-byte budget (MAX_INFLIGHT_BYTES); retry after "
            f"{self.retry_after_s} s",
            headers=[
                (b"retry-after", str(self.retry_after_s).encode()),
                # the body is never read: the connection cannot be reused
                (b"connection", b"close"),
            ],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_bytes or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = max(0, int(value))
                except ValueError:
                    declared = None
        if declared is not None and not self._fits(declared):
            await self._refuse(send, declared)
            return
        reserved = declared or 0
        self.held += reserved
        out = CutShort(send)

        async def counted_receive() -> Message:
            nonlocal reserved
            if out.done:
                return {"type": "http.disconnect"}
            message = await receive()
            if declared is None and message["type"] == "http.request":
                size = len(message.get("body", b""))
                if not self._fits(size, reserved):
                    return await out.cut(lambda real_send: self._refuse(real_send, None))
                self.held += size
                reserved += size
            return message

        try:
            await self.app(scope, counted_receive, out.send)
        finally:
            self.held -= reserved
            if self.held == 0 and reserved >= TRIM_AFTER_BYTES and MALLOC_TRIM is not None:
                # after the response; on a thread: it took 1-40 ms with 2 workers' heaps
                await asyncio.get_running_loop().run_in_executor(None, MALLOC_TRIM)
