"""How `/predict` and `/predict_batch` reach the one batched inference (`BATCH_DISPATCH`).

- `greedy` (default, `utils/serving/greedy.py`): dispatch at once when idle, batch what queued
  while busy, 503 with `Retry-After` only when the expected wait exceeds the wait budget. No
  memory of past load: a lone request after a burst is as fast as on a fresh server.
- `cork`: BentoML's own adaptive dispatcher (`CorkDispatcher`, the algorithm behind
  `batchable=True`) living in the worker, without the HTTP hop. Its wait estimate remembers past
  queueing, so a burst slows later lone requests for minutes (README, Batching); kept to compare.
  It lives in BentoML's private package and is imported only when selected: a BentoML that moves
  it fails loudly here (and in `tests/unit/test_greedy_batching.py`), not on the default path.
- `proxy`: no batcher here; the service calls its batchable `infer` API through
  `self.to_async.infer` (BentoML's documented route, CORK behind an in-process HTTP client).

`greedy` runs a batch on the worker's event loop or in a thread (`BATCH_ON_LOOP`,
`utils/serving/on_loop.py`); `cork` and `proxy` in a worker thread, so the event loop keeps
accepting requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import anyio.to_thread

from utils.serving.arrivals import Arrivals
from utils.serving.departure import Departure
from utils.serving.greedy import BatchRecord, GreedyBatcher

Dispatch = Literal["greedy", "cork", "proxy"]
#: Private BentoML symbol behind `cork`; a test imports it by this name.
CORK_DISPATCHER = "bentoml._internal.marshal.dispatcher.CorkDispatcher"


class Batcher(Protocol):
    async def submit(self, item: Any, departure: Departure | None = None) -> Any: ...

    async def shutdown(self) -> None: ...


def _in_thread(batch_fn: Callable[[list[Any]], list[Any]]) -> Callable[[list[Any]], Any]:
    async def run(items: list[Any]) -> list[Any]:
        return await anyio.to_thread.run_sync(batch_fn, list(items))

    return run


def _on_loop(batch_fn: Callable[[list[Any]], list[Any]]) -> Callable[[list[Any]], Any]:
    async def run(items: list[Any]) -> list[Any]:
        return batch_fn(list(items))

    return run


class Greedy:
    """`GreedyBatcher` around a synchronous batch function: batches of up to `on_loop` items
    on the event loop, larger ones in a worker thread (`set_on_loop` when a reload brings a
    new model)."""

    def __init__(
        self,
        batch_fn: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int,
        wait_budget_s: float,
        queue_delay_s: float,
        observer: Callable[[BatchRecord], None] | None,
        arrivals: Arrivals | None = None,
        on_loop: int = 0,
    ) -> None:
        self.on_loop = on_loop
        threaded, looped = _in_thread(batch_fn), _on_loop(batch_fn)

        async def run(items: list[Any]) -> list[Any]:
            return await (looped if len(items) <= self.on_loop else threaded)(items)

        self._batcher: GreedyBatcher[Any, Any] = GreedyBatcher(
            run,
            max_batch_size=max_batch_size,
            wait_budget_s=wait_budget_s,
            queue_delay_s=queue_delay_s,
            observer=observer,
            arrivals=arrivals,
        )

    @property
    def queue_delay_s(self) -> float:
        return self._batcher.queue_delay_s

    @property
    def max_batch_size(self) -> int:
        return self._batcher.max_batch_size

    @property
    def busy(self) -> bool:
        """A batch runs or items queue: a request submitted now would wait."""
        return self._batcher.busy or self._batcher.queued > 0

    def set_queue_delay(self, seconds: float) -> None:
        """A reloaded model brings its own `auto` wait (`utils/serving/queue_delay.py`)."""
        self._batcher.queue_delay_s = seconds

    def set_on_loop(self, on_loop: int) -> None:
        """A reloaded model brings its own `auto` choice (`utils/serving/on_loop.py`)."""
        self.on_loop = on_loop

    async def submit(self, item: Any, departure: Departure | None = None) -> Any:
        """`departure`: the item is dropped, unrun, if its client leaves while it queues."""
        return await self._batcher.submit(item, departure)

    async def shutdown(self) -> None:
        await self._batcher.shutdown(drain=True)


class Cork:
    """BentoML's `CorkDispatcher` in the worker (same 503-on-budget semantics as its APIs)."""

    def __init__(
        self,
        batch_fn: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int,
        max_latency_ms: int,
    ) -> None:
        from bentoml._internal.marshal.dispatcher import CorkDispatcher  # private: lazily
        from bentoml.exceptions import ServiceUnavailable

        def overloaded() -> Any:
            raise ServiceUnavailable("batch latency budget exceeded (BATCH_MAX_LATENCY_MS)")

        self._dispatcher = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=overloaded,
            get_batch_size=lambda _: 1,
            batch_dim=(0, 0),
        )
        self._submit = self._dispatcher(_in_thread(batch_fn))

    async def submit(self, item: Any, departure: Departure | None = None) -> Any:
        """CORK cannot drop a queued item: a departure is checked only before submitting."""
        return await self._submit(item)

    async def shutdown(self) -> None:
        self._dispatcher.shutdown()


def make_batcher(
    dispatch: Dispatch,
    batch_fn: Callable[[list[Any]], list[Any]],
    *,
    max_batch_size: int,
    max_latency_ms: int,
    wait_budget_s: float,
    queue_delay_s: float,
    observer: Callable[[BatchRecord], None] | None = None,
    arrivals: Arrivals | None = None,
    on_loop: int = 0,
) -> Batcher | None:
    """The in-worker batcher for `dispatch`; None for `proxy` (the `infer` API batches).
    `on_loop`: greedy runs batches of up to this many items on the event loop."""
    if dispatch == "greedy":
        return Greedy(
            batch_fn,
            max_batch_size=max_batch_size,
            wait_budget_s=wait_budget_s,
            queue_delay_s=queue_delay_s,
            observer=observer,
            arrivals=arrivals,
            on_loop=on_loop,
        )
    if dispatch == "cork":
        return Cork(batch_fn, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms)
    return None
