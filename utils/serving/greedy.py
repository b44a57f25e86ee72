"""Adaptive batching without a memory: dispatch when idle, batch what queued while busy.

BentoML's CORK dispatcher decides how long a lone request waits from the mean queue wait of
recent batches, a figure that includes time spent blocked behind the batch in flight and its
own deliberate waits: after a burst a lone request waits as long as the burst's requests did,
records that wait again, and the service stays slow for minutes (README, Batching). This policy
keeps no such history:

- **idle → at once**: when no batch is running, an arriving item starts a batch immediately;
  for models whose per-sample cost falls with batch size, it waits up to `queue_delay_s` for
  requests the worker has begun and not yet submitted (`utils/serving/arrivals.py`), never for
  requests that do not exist (a lone request does not wait);
- **busy → next batch**: items arriving while a batch runs queue up; when it finishes the queue
  leaves together, in arrival order, up to `max_batch_size` ("queued", or "full" when more wait);
- **overload → 503 early**: an item whose expected wait (batches ahead of it × the recent batch
  duration) exceeds `wait_budget_s` is refused at once with a retry hint, instead of timing out;
- **deliver, then batch**: a finished batch's callers get the event loop for a few passes
  before the next batch starts, so responses are not written in competition with it;
- **isolation**: a batch that raises is retried item by item, so one bad item fails alone; an
  item whose caller went away (cancelled) is dropped from the queue and never computed;
- **departed clients**: an item queued behind a busy model has its client watched
  (`utils/serving/departure.py`); one whose client has gone (one attribute read as the batch
  forms) is dropped too: its caller gets `ClientLeft`, the departure is marked `skipped`, and
  a batch holding only such items is never run.

Framework-free (asyncio only): unit-tested with a fake batch function and events, no server.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from utils.serving.arrivals import Arrivals
from utils.serving.departure import ClientLeft, Departure

T_IN = TypeVar("T_IN")
T_OUT = TypeVar("T_OUT")

Reason = Literal["idle", "queued", "full"]

#: Weight of the newest batch in the moving average of batch duration (overload estimate).
DURATION_SMOOTHING = 0.2
#: Event-loop passes given to a finished batch's callers before the next batch starts: one to
#: wake each caller's task, more for its response to pass the ASGI send chain.
DELIVERY_PASSES = 3


class Overloaded(Exception):
    """The item would wait longer than the budget; `retry_after_s` is the expected wait."""

    def __init__(self, expected_wait_s: float, budget_s: float) -> None:
        self.retry_after_s = expected_wait_s
        super().__init__(
            f"the batch queue is {expected_wait_s:.1f} s deep, over the "
            f"{budget_s:.1f} s wait budget"
        )


class BatcherClosed(Exception):
    """The batcher shut down before the item ran."""


@dataclass
class _Pending(Generic[T_IN, T_OUT]):
    item: T_IN
    future: asyncio.Future[T_OUT]
    departure: Departure | None = None
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchRecord:
    """What the observer hears about each batch."""

    size: int
    reason: Reason
    waits_s: tuple[float, ...]
    duration_s: float


class GreedyBatcher(Generic[T_IN, T_OUT]):
    """Batches `submit(item)` calls into `run_batch(items) -> results` (same order)."""

    def __init__(
        self,
        run_batch: Callable[[list[T_IN]], Any],
        *,
        max_batch_size: int,
        wait_budget_s: float,
        queue_delay_s: float = 0.0,
        observer: Callable[[BatchRecord], None] | None = None,
        arrivals: Arrivals | None = None,
    ) -> None:
        """`arrivals`: requests on their way to this batcher; with it, an idle batcher waits
        (at most `queue_delay_s`) only while some are, and no longer than until they are in.
        Without it, it waits `queue_delay_s` whenever it was idle."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch  # async callable: awaits the batch (e.g. in a thread)
        self.max_batch_size = max_batch_size
        self.wait_budget_s = wait_budget_s
        self.queue_delay_s = queue_delay_s
        self._observer = observer
        self._queue: collections.deque[_Pending[T_IN, T_OUT]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy_since: float | None = None
        self._batch_s: float | None = None  # moving average of batch duration
        self._idle_since = 0.0  # when the last batch finished: later arrivals found it idle
        self._closed = False
        self._arrivals = arrivals
        if arrivals is not None:
            arrivals.listen(self._on_arrival)

    def _on_arrival(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _company_coming(self) -> bool:
        return self._arrivals is None or self._arrivals.pending > 0

    # --- public -------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._busy_since is not None

    def expected_wait_s(self) -> float:
        """Wait of an item submitted now: the rest of the batch in flight plus one batch per
        `max_batch_size` items ahead of it, at the recent batch duration."""
        if self._busy_since is None and not self._queue:
            return 0.0
        per_batch = self._batch_s or 0.0
        ahead = math.ceil((len(self._queue) + 1) / self.max_batch_size)
        in_flight = 0.0
        if self._busy_since is not None:
            in_flight = max(0.0, per_batch - (time.perf_counter() - self._busy_since))
        return in_flight + ahead * per_batch

    async def submit(self, item: T_IN, departure: Departure | None = None) -> T_OUT:
        """The item's result; raises `Overloaded`, `BatcherClosed`, the item's own error, or
        `ClientLeft` when `departure` says its client went away before its batch formed."""
        if self._closed:
            raise BatcherClosed("the batcher is shut down")
        expected = self.expected_wait_s()
        if expected > self.wait_budget_s:
            raise Overloaded(expected, self.wait_budget_s)
        self._ensure_started()
        pending: _Pending[T_IN, T_OUT] = _Pending(
            item, asyncio.get_running_loop().create_future(), departure
        )
        if departure is not None and (self._busy_since is not None or self._queue):
            departure.watch()  # it will wait: notice if its client leaves meanwhile
        self._queue.append(pending)
        assert self._wake is not None
        self._wake.set()
        try:
            return await pending.future
        except asyncio.CancelledError:  # the caller went away: free its slot
            try:
                self._queue.remove(pending)
            except ValueError:
                pass  # already taken into a batch; its result is dropped
            raise

    async def shutdown(self, drain: bool = True) -> None:
        """Stop accepting; run what is queued (`drain`) or fail it with `BatcherClosed`."""
        self._closed = True
        if not drain:
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(BatcherClosed("the batcher shut down"))
        if self._task is not None:
            if self._wake is not None:
                self._wake.set()
            await self._task
            self._task = None

    # --- the loop -----------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            reason: Reason = "queued"
            if self._queue[0].enqueued >= self._idle_since:  # it arrived to an idle batcher
                reason = "idle"
                if (
                    self.queue_delay_s > 0
                    and len(self._queue) < self.max_batch_size
                    and self._company_coming()
                ):
                    await self._gather_for(self.queue_delay_s)
            batch = self._take_batch()
            if self._queue:
                reason = "full"
            if batch:  # never an empty batch: every item taken may have been dropped
                await self._run(batch, reason)
                await self._deliver()

    def _take_batch(self) -> list[_Pending[T_IN, T_OUT]]:
        """Up to `max_batch_size` items in arrival order, dropping on the way those whose
        caller was cancelled or whose client has gone (their caller gets `ClientLeft`)."""
        batch: list[_Pending[T_IN, T_OUT]] = []
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.popleft()
            if pending.future.done():
                continue
            departure = pending.departure
            if departure is not None and departure.gone:
                departure.skipped = True
                pending.future.set_exception(ClientLeft())
                continue
            batch.append(pending)
        return batch

    async def _deliver(self) -> None:
        """Let the finished batch's callers run before the next batch takes the GIL.

        Setting a result only schedules its caller; starting the next batch at once puts the
        batch thread in competition with those callers (response building, socket writes) for
        the GIL, which slowed throughput at c=64 by about a tenth and stretched the tail
        (README, Batching). A few passes of the event loop, each microseconds when nothing is
        ready, hand them the interpreter first; nothing is remembered and no clock is read."""
        for _ in range(DELIVERY_PASSES):
            await asyncio.sleep(0)

    async def _gather_for(self, delay_s: float) -> None:
        assert self._wake is not None
        deadline = time.perf_counter() + delay_s
        while len(self._queue) < self.max_batch_size and not self._closed:
            if not self._company_coming():  # everyone announced is in: go
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run(self, batch: Sequence[_Pending[T_IN, T_OUT]], reason: Reason) -> None:
        started = time.perf_counter()
        self._busy_since = started
        waits = tuple(started - p.enqueued for p in batch)
        try:
            results: list[Any] | None = list(await self._run_batch([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(batch)} items"
                )
            errors: list[BaseException | None] = [None] * len(batch)
        except Exception:  # isolate the culprit: each item alone
            results, errors = [], []
            for p in batch:
                try:
                    (one,) = await self._run_batch([p.item])
                    results.append(one)
                    errors.append(None)
                except Exception as exc:  # noqa: BLE001 - handed to that item's caller
                    results.append(None)
                    errors.append(exc)
        finished = time.perf_counter()
        duration = finished - started
        self._batch_s = (
            duration
            if self._batch_s is None
            else (1 - DURATION_SMOOTHING) * self._batch_s + DURATION_SMOOTHING * duration
        )
        self._busy_since = None
        self._idle_since = finished
        for p, result, error in zip(batch, results, errors, strict=True):
            if p.future.done():
                continue
            if error is not None:
                p.future.set_exception(error)
            else:
                p.future.set_result(result)
        if self._observer is not None:
            self._observer(BatchRecord(len(batch), reason, waits, duration))
