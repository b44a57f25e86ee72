"""The greedy batcher without a server: a fake batch function gated by events, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from utils.serving.arrivals import Arrivals
from utils.serving.departure import ClientLeft, Departure
from utils.serving.greedy import BatcherClosed, BatchRecord, GreedyBatcher, Overloaded


class Gate:
    """A batch function that records its batches and holds each until released."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_on = fail_on or set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        await self.release.wait()
        if self.fail_on & set(items):
            raise ValueError(f"bad item in {items}")
        return [i * 10 for i in items]


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


def test_idle_item_is_dispatched_at_once() -> None:
    async def scenario() -> None:
        gate = Gate()
        records: list[BatchRecord] = []
        batcher = GreedyBatcher(gate, max_batch_size=8, wait_budget_s=10, observer=records.append)
        task = asyncio.create_task(batcher.submit(1))
        await asyncio.wait_for(gate.started.wait(), 1)  # started with nothing else queued
        assert gate.batches == [[1]]
        gate.release.set()
        assert await task == 10
        assert records[0].reason == "idle" and records[0].size == 1

    run(scenario)


def test_busy_items_queue_and_leave_together_in_order() -> None:
    async def scenario() -> None:
        gate = Gate()
        records: list[BatchRecord] = []
        batcher = GreedyBatcher(gate, max_batch_size=4, wait_budget_s=10, observer=records.append)
        first = asyncio.create_task(batcher.submit(0))
        await gate.started.wait()
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
        await until(lambda: batcher.queued == 6)
        gate.release.set()
        assert await first == 0
        assert [await t for t in rest] == [10, 20, 30, 40, 50, 60]
        assert gate.batches == [[0], [1, 2, 3, 4], [5, 6]]
        assert [r.reason for r in records] == ["idle", "full", "queued"]
        assert [r.size for r in records] == [1, 4, 2]

    run(scenario)


def test_a_finished_batch_reaches_its_callers_before_the_next_batch_starts() -> None:
    async def scenario() -> None:
        events: list[str] = []

        async def run_batch(items: list[int]) -> list[int]:
            events.append(f"batch {items}")
            await asyncio.sleep(0)  # hand the loop over, as a thread would
            return items

        batcher = GreedyBatcher(run_batch, max_batch_size=2, wait_budget_s=10)

        async def caller(i: int) -> None:
            await batcher.submit(i)
            events.append(f"answered {i}")

        await asyncio.gather(*(caller(i) for i in range(4)))
        assert events == [
            "batch [0, 1]",
            "answered 0",
            "answered 1",
            "batch [2, 3]",
            "answered 2",
            "answered 3",
        ]

    run(scenario)


def test_a_failing_item_does_not_fail_its_neighbours() -> None:
    async def scenario() -> None:
        gate = Gate(fail_on={3})
        batcher = GreedyBatcher(gate, max_batch_size=8, wait_budget_s=10)
        blocker = asyncio.create_task(batcher.submit(0))
        await gate.started.wait()
        tasks = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
        await until(lambda: batcher.queued == 3)
        gate.release.set()
        await blocker
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] == 20 and results[2] == 40
        assert isinstance(results[1], ValueError)
        assert gate.batches[1:] == [[2, 3, 4], [2], [3], [4]]  # retried one by one

    run(scenario)


def test_a_caller_that_goes_away_frees_its_slot() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = GreedyBatcher(gate, max_batch_size=8, wait_budget_s=10)
        blocker = asyncio.create_task(batcher.submit(0))
        await gate.started.wait()
        gone = asyncio.create_task(batcher.submit(1))
        stays = asyncio.create_task(batcher.submit(2))
        await until(lambda: batcher.queued == 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued == 1
        gate.release.set()
        await blocker
        assert await stays == 20
        assert gate.batches == [[0], [2]]  # the departed item was never computed

    run(scenario)


def test_items_whose_client_left_while_queued_are_dropped_unrun_and_marked() -> None:
    async def scenario() -> None:
        gate = Gate()
        records: list[BatchRecord] = []
        batcher = GreedyBatcher(gate, max_batch_size=2, wait_budget_s=10, observer=records.append)
        blocker = asyncio.create_task(batcher.submit(0))
        await gate.started.wait()
        left, stays = Departure(), Departure()
        # request `left` queued two captures, around two requests whose clients stay
        tasks = [
            asyncio.create_task(batcher.submit(item, departure))
            for item, departure in ((1, left), (2, None), (3, left), (4, stays))
        ]
        await until(lambda: batcher.queued == 4)
        left.gone = True  # the server reported the connection closed
        gate.release.set()
        await blocker
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], ClientLeft) and isinstance(results[2], ClientLeft)
        assert results[1] == 20 and results[3] == 40
        # never computed, and they took no slot: the two that stay left as one full batch
        assert gate.batches == [[0], [2, 4]]
        assert [r.size for r in records] == [1, 2]
        assert left.skipped and not stays.skipped  # counted as a skipped departure

    run(scenario)


def test_only_an_item_that_has_to_queue_asks_for_its_client_to_be_watched() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = GreedyBatcher(gate, max_batch_size=8, wait_budget_s=10)
        watched: list[int] = []
        alone = Departure(lambda: watched.append(0))
        first = asyncio.create_task(batcher.submit(0, alone))
        await gate.started.wait()  # ran at once: nothing to watch
        queued = Departure(lambda: watched.append(1))
        second = asyncio.create_task(batcher.submit(1, queued))
        await until(lambda: batcher.queued == 1)
        assert watched == [1]
        queued.watch()  # asked again (another capture of the same request): started once
        assert watched == [1]
        gate.release.set()
        assert (await first, await second) == (0, 10)

    run(scenario)


def test_a_batch_of_only_departed_items_is_never_run() -> None:
    async def scenario() -> None:
        gate = Gate()
        records: list[BatchRecord] = []
        batcher = GreedyBatcher(gate, max_batch_size=8, wait_budget_s=10, observer=records.append)
        blocker = asyncio.create_task(batcher.submit(0))
        await gate.started.wait()
        everyone = [Departure() for _ in range(3)]
        tasks = [asyncio.create_task(batcher.submit(i, d)) for i, d in enumerate(everyone, 1)]
        await until(lambda: batcher.queued == 3)
        for departure in everyone:
            departure.gone = True
        gate.release.set()
        await blocker
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, ClientLeft) for r in results)
        assert all(d.skipped for d in everyone)
        assert gate.batches == [[0]] and len(records) == 1  # no empty batch ran
        assert batcher.queued == 0
        # the batcher goes on: the next item finds it idle and runs at once
        gate.release.set()
        assert await batcher.submit(5) == 50
        assert gate.batches == [[0], [5]] and records[-1].reason == "idle"

    run(scenario)


def test_overload_is_refused_early_with_the_expected_wait() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = GreedyBatcher(gate, max_batch_size=2, wait_budget_s=2.5)
        batcher._batch_s = 1.0  # a measured batch duration: 1 s per batch of 2
        blocker = asyncio.create_task(batcher.submit(0))
        await gate.started.wait()
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await until(lambda: batcher.queued == 2)
        # in flight ~1 s + two batches ahead (3 items / 2) = ~3 s > 2.5 s
        with pytest.raises(Overloaded) as info:
            await batcher.submit(3)
        assert 2.5 < info.value.retry_after_s <= 3.0
        gate.release.set()
        await asyncio.gather(blocker, *queued)
        assert batcher.expected_wait_s() == 0.0  # idle again: nothing remembered

    run(scenario)


def test_shutdown_drains_or_cancels() -> None:
    async def scenario() -> None:
        gate = Gate()
        batcher = GreedyBatcher(gate, max_batch_size=8, wait_budget_s=10)
        blocker = asyncio.create_task(batcher.submit(0))
        await gate.started.wait()
        queued = asyncio.create_task(batcher.submit(1))
        await until(lambda: batcher.queued == 1)
        gate.release.set()
        await batcher.shutdown(drain=True)
        assert (await blocker, await queued) == (0, 10)
        with pytest.raises(BatcherClosed):
            await batcher.submit(2)

        gate2 = Gate()
        cancelling = GreedyBatcher(gate2, max_batch_size=8, wait_budget_s=10)
        running = asyncio.create_task(cancelling.submit(0))
        await gate2.started.wait()
        waiting = asyncio.create_task(cancelling.submit(1))
        await until(lambda: cancelling.queued == 1)
        stop = asyncio.create_task(cancelling.shutdown(drain=False))
        with pytest.raises(BatcherClosed):
            await waiting
        gate2.release.set()
        await stop
        assert await running == 0  # the batch in flight completes

    run(scenario)


def test_queue_delay_gathers_items_when_asked() -> None:
    async def scenario() -> None:
        gate = Gate()
        gate.release.set()
        batcher = GreedyBatcher(gate, max_batch_size=3, wait_budget_s=10, queue_delay_s=5.0)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [0, 10, 20]
        assert gate.batches == [[0, 1, 2]]  # full before the delay ran out: left at once

    run(scenario)


def test_a_lone_item_does_not_wait_for_company_that_is_not_coming() -> None:
    """With arrivals counted, queue_delay is spent only on requests the worker has begun."""

    async def scenario() -> None:
        gate = Gate()
        gate.release.set()
        arrivals = Arrivals()
        batcher = GreedyBatcher(
            gate, max_batch_size=8, wait_budget_s=10, queue_delay_s=5.0, arrivals=arrivals
        )
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(batcher.submit(1), 1) == 10  # not after 5 s
        assert asyncio.get_running_loop().time() - started < 1
        assert gate.batches == [[1]]

    run(scenario)


def test_an_idle_batcher_waits_for_requests_on_their_way_and_no_longer() -> None:
    async def scenario() -> None:
        gate = Gate()
        gate.release.set()
        arrivals = Arrivals()
        batcher = GreedyBatcher(
            gate, max_batch_size=8, wait_budget_s=10, queue_delay_s=5.0, arrivals=arrivals
        )
        coming = [arrivals.arrive() for _ in range(2)]  # two requests still being decoded
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)
        assert gate.batches == []  # waiting: company is on its way
        coming[0].close()
        second = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.05)
        assert gate.batches == []
        coming[1].close()  # a cache hit: it never reaches the batcher, so stop waiting
        coming[1].close()  # idempotent
        assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [10, 20]
        assert gate.batches == [[1, 2]] and arrivals.pending == 0

    run(scenario)


def test_no_hangover_after_a_burst() -> None:
    """After any burst, the next lone item is dispatched as an idle one, immediately."""

    async def scenario() -> None:
        gate = Gate()
        gate.release.set()
        records: list[BatchRecord] = []
        batcher = GreedyBatcher(gate, max_batch_size=4, wait_budget_s=100, observer=records.append)
        await asyncio.gather(*(batcher.submit(i) for i in range(50)))
        records.clear()
        assert await batcher.submit(99) == 990
        assert records[0].reason == "idle" and records[0].size == 1

    run(scenario)


def test_cork_is_bentomls_private_dispatcher_imported_only_when_chosen() -> None:
    """`cork` rides on a private BentoML symbol: an upgrade that moves it fails here, loudly;
    the default path never imports it."""
    import importlib
    import subprocess
    import sys

    from utils.serving.batching import CORK_DISPATCHER, Cork, Greedy, make_batcher

    module, name = CORK_DISPATCHER.rsplit(".", 1)
    assert isinstance(getattr(importlib.import_module(module), name), type)
    assert isinstance(
        make_batcher(
            "cork",
            lambda items: items,
            max_batch_size=4,
            max_latency_ms=1000,
            wait_budget_s=1,
            queue_delay_s=0,
        ),
        Cork,
    )
    assert isinstance(
        make_batcher(
            "greedy",
            lambda items: items,
            max_batch_size=4,
            max_latency_ms=1000,
            wait_budget_s=1,
            queue_delay_s=0,
        ),
        Greedy,
    )
    assert (
        make_batcher(
            "proxy",
            lambda items: items,
            max_batch_size=4,
            max_latency_ms=1000,
            wait_budget_s=1,
            queue_delay_s=0,
        )
        is None
    )
    probe = f"import sys, bentoml, utils.serving.batching; sys.exit(int({module!r} in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_greedy_runs_a_synchronous_function_in_a_thread() -> None:
    import threading

    from utils.serving.batching import make_batcher

    main = threading.get_ident()
    seen: list[int] = []

    def batch(items: list[int]) -> list[int]:
        seen.append(threading.get_ident())
        return [i + 1 for i in items]

    async def scenario() -> list[int]:
        batcher = make_batcher(
            "greedy", batch, max_batch_size=4, max_latency_ms=1000, wait_budget_s=1, queue_delay_s=0
        )
        assert batcher is not None
        out = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        await batcher.shutdown()
        return list(out)

    assert run(scenario) == [1, 2, 3, 4, 5, 6]
    assert seen and all(t != main for t in seen)
