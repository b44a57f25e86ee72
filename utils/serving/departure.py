"""Whether a request's client is still there: work for a client who left is skipped.

After a burst whose clients closed their connections (a load generator stopped, a client timed
out), their requests stayed queued and were computed for nobody: the next lone request waited
behind them (c=1 p99 243 ms against 11 ms fresh). The ASGI layer that watches the connection
(`utils/asgi/client_gone.py`) puts a `Departure` in the request's scope; once asked to `watch`,
it marks it `gone` the moment the server reports the client left. The greedy batcher asks when
it queues an item behind a busy model (a request that runs at once is not watched: a watcher
task costs about 10-30 µs, paid only by requests that wait anyway), and checks the flag when it
forms a batch; the pipeline checks it before decoding and before dispatch. What skips work
marks it `skipped`, so the departure is counted once, as phase `queued`.

Framework-free: a flag read with one attribute access, cheap enough for every batch item.
"""

from __future__ import annotations

from collections.abc import Callable

#: Scope key of the request's `Departure` (set by `utils/asgi/client_gone.py`).
SCOPE_KEY = "rfloc.departure"


class ClientLeft(Exception):
    """The request's client went away before its work ran; nobody reads the answer."""

    def __init__(self) -> None:
        super().__init__("client closed request: the client went away before inference")


class Departure:
    """One request's client: `gone` once it left (noticed after `watch`), `skipped` once work
    was dropped for that."""

    __slots__ = ("_watch", "gone", "skipped")

    def __init__(self, watch: Callable[[], None] | None = None) -> None:
        """`watch`: starts noticing the departure (the ASGI layer's watcher); called once."""
        self._watch = watch
        self.gone = False
        self.skipped = False

    def watch(self) -> None:
        """The request will wait: notice from now on if its client leaves (idempotent)."""
        if self._watch is not None:
            start, self._watch = self._watch, None
            start()

    def check(self) -> None:
        """Raise `ClientLeft` (and record the skip) if the client has gone."""
        if self.gone:
            self.skipped = True
            raise ClientLeft


def check(departure: Departure | None) -> None:
    """`Departure.check` for a request that may have none (no watching layer, e.g. tests)."""
    if departure is not None:
        departure.check()
