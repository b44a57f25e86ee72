"""Requests a worker has begun but not yet handed to its batcher: whether company is coming.

A greedy batcher that finds itself idle can start at once or wait for company (`queue_delay`).
Waiting blind costs every lone request the whole wait: at c=1 there is never company. But the
worker knows better: a request whose headers it has read and that has not yet reached the
batcher (its body arriving, being parsed, decoded, looked up in the cache) is company on its
way. An ASGI middleware (`utils/asgi/arrival_count.py`) opens a `Ticket` per batchable
request and the pipeline closes it just before it submits; the batcher waits only while some
ticket is open, and stops waiting the moment the last one closes.
"""

from __future__ import annotations

from collections.abc import Callable

SCOPE_KEY = "rfloc.arrival"


class Arrivals:
    """Counts open tickets; tells listeners (the batcher) whenever one closes."""

    def __init__(self) -> None:
        self.pending = 0
        self.total = 0  # every ticket ever opened: unchanged means no request began
        self._listeners: list[Callable[[], None]] = []

    def arrive(self) -> Ticket:
        self.pending += 1
        self.total += 1
        return Ticket(self)

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _left(self) -> None:
        self.pending -= 1
        for callback in self._listeners:
            callback()


class Ticket:
    """One request on its way to the batcher; `close` is idempotent."""

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals: Arrivals | None = arrivals

    def close(self) -> None:
        if self._arrivals is not None:
            arrivals, self._arrivals = self._arrivals, None
            arrivals._left()
