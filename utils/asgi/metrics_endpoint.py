"""`GET /metrics` from one shared read of every worker's files, the read off the event loop.

BentoML answers `/metrics` by parsing every worker's Prometheus files (twice per scrape), once
per request: 16 clients polling it took a `/predict` client's p50 from 7 to 100+ ms. This
layer answers `GET` and `HEAD /metrics` itself from `SNAPSHOTS` (`utils/serving/metrics.py`):
requests arriving together share one read, which runs in a worker thread, one at a time per
worker, spaced to take at most `METRICS_READ_SHARE` of a core. Every answer was read after its
request arrived; the text is what BentoML's endpoint gives (same families, same order).
"""

from __future__ import annotations

import asyncio

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from utils.serving.metrics_snapshot import Coalesced, Snapshot


class MetricsEndpoint:
    def __init__(self, app: ASGIApp, snapshots: Coalesced[Snapshot], path: str = "/metrics"):
        self.app = app
        self.snapshots = snapshots
        self.path = path
        self._gate: asyncio.Lock | None = None  # one waiting thread per worker, not one a request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if (
            scope["type"] != "http"
            or scope.get("path") != self.path
            or method not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        asked = self.snapshots.now()
        if self._gate is None:
            self._gate = asyncio.Lock()
        async with self._gate:
            snapshot = self.snapshots.since(asked)
            if snapshot is not None and snapshot.has_text:
                body = snapshot.text()  # written already: no thread needed
            else:
                body = await anyio.to_thread.run_sync(self._text, asked)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body if method == "GET" else b""})

    def _text(self, asked: float) -> bytes:
        return self.snapshots.get(asked).text()
