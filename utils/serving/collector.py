"""Python's garbage collector kept off the tail: start-up objects frozen, pauses measured.

CPython's full collection walks every tracked object of the process, with the event loop
stopped. A worker holds about 140 000 objects after start-up, and under load many more stay
alive for a minute: BentoML's request timeout (`TimeoutMiddleware`) schedules a 60 s timer per
request that it never cancels, and the timer keeps the request's context (its OpenTelemetry
span and all it holds) alive until it fires, about 20 objects a request. At c=32 on the demo
model that promoted enough objects for a full collection every 2-3 s per worker, 200-800 ms
each: it was the whole of the service's p99 (docs/tails.md). So:

- `settle` moves every object alive at the end of start-up into the permanent generation
  (`gc.freeze()`), which no collection walks;
- `defer_full` leaves the young generations to the interpreter, which collects them in about
  a millisecond, but stops it starting full collections itself; `FullCollections` runs them
  when the worker is idle, and under sustained load at most `max_interval_s` apart. The
  cyclic garbage a full collection frees meanwhile is small (about 1 000 objects a
  collection at c=32).

Reference counting still frees frozen objects that become unreachable; only a reference cycle
among frozen objects outlives its last user.

`watch` times each collection; `drain` hands the pauses to `rfloc_gc_pause_seconds`.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from collections.abc import Callable

#: `gc.set_threshold`'s third value with full collections deferred: never reached.
NEVER = 2**31 - 1

#: Pauses not yet reported: (generation, seconds). The collector's callback only appends here:
#: reporting to Prometheus from inside a collection could wait on the multiprocess metrics
#: lock that the interrupted code holds, so `drain` reports them later, from the event loop.
_pending: collections.deque[tuple[int, float]] = collections.deque(maxlen=1024)
_started = [0.0]


def settle() -> int:
    """Collect once, then freeze what survives; the number of objects frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pending.append((info["generation"], time.perf_counter() - _started[0]))


def watch() -> None:
    """Time every collection from now on (once per process)."""
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)


def drain() -> list[tuple[int, float]]:
    """The pauses timed since the last drain, oldest first."""
    out = []
    while _pending:
        out.append(_pending.popleft())
    return out


def defer_full() -> tuple[int, int, int]:
    """Young collections as before; full ones only when `FullCollections` runs them. The
    thresholds in force before."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], NEVER)
    return before


class FullCollections:
    """Full collections at moments that cost no request: once the worker has been quiet for
    `quiet_s` (no request begun, `activity()` unchanged, and `idle()`), at most every
    `min_interval_s`; under sustained load `max_interval_s` after the last."""

    def __init__(
        self,
        activity: Callable[[], int],
        idle: Callable[[], bool],
        *,
        quiet_s: float = 1.0,
        min_interval_s: float = 10.0,
        max_interval_s: float = 120.0,
        check_s: float = 0.25,
    ) -> None:
        self.activity = activity
        self.idle = idle
        self.quiet_s = quiet_s
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.check_s = check_s
        self.last = time.monotonic()
        self.runs = {"idle": 0, "overdue": 0}
        self._seen = activity()
        self._quiet_since = self.last
        self._task: asyncio.Task[None] | None = None

    def due(self, now: float) -> str | None:
        """Why a full collection should run now ("idle" or "overdue"), or None."""
        seen = self.activity()
        if seen != self._seen or not self.idle():
            self._seen, self._quiet_since = seen, now
        waited = now - self.last
        if waited >= self.max_interval_s:
            return "overdue"
        if waited >= self.min_interval_s and now - self._quiet_since >= self.quiet_s:
            return "idle"
        return None

    def collect(self, reason: str) -> None:
        gc.collect()
        self.last = time.monotonic()
        self.runs[reason] += 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            reason = self.due(time.monotonic())
            if reason is not None:
                self.collect(reason)

    def start(self) -> None:
        """On the worker's event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
