"""utils/serving/collector.py: the garbage collector's full collections kept off requests."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from utils.serving import collector


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Each test leaves the interpreter's collector as it found it."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_freezes_what_lives_and_defer_stops_automatic_full_collections(
    restore_gc: None,
) -> None:
    frozen = collector.settle()
    assert frozen == gc.get_freeze_count() > 1000  # this interpreter's modules at least
    before = collector.defer_full()
    assert gc.get_threshold() == (before[0], before[1], collector.NEVER)
    collector.watch()
    collector.drain()
    # young collections still run by themselves: allocate past the first threshold
    garbage = []
    for _ in range(3 * before[0]):
        cycle: list[object] = []
        cycle.append(cycle)
        garbage.append(cycle)
    del garbage
    gc.collect(0)
    paused = collector.drain()
    assert paused and all(generation in (0, 1) for generation, _ in paused)
    assert all(seconds >= 0 for _, seconds in paused)
    gc.collect()
    assert [g for g, _ in collector.drain()][-1] == 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.requests = 0
        self.busy = False


def collections_for(clock: Clock) -> collector.FullCollections:
    full = collector.FullCollections(
        lambda: clock.requests,
        lambda: not clock.busy,
        quiet_s=1.0,
        min_interval_s=10.0,
        max_interval_s=120.0,
    )
    full.last = 0.0
    full._quiet_since = 0.0
    return full


def test_a_full_collection_waits_for_a_quiet_worker_or_is_overdue() -> None:
    clock = Clock()
    full = collections_for(clock)
    assert full.due(5.0) is None  # quiet, but the last one was 5 s ago
    assert full.due(10.0) == "idle"  # quiet for 10 s, past the minimum interval
    full.last = 10.0
    # a request every 0.5 s: never quiet for a whole second
    for step in range(1, 300):
        clock.requests += 1
        now = 10.0 + 0.5 * step
        reason = full.due(now)
        if reason is not None:
            break
    assert reason == "overdue" and now == pytest.approx(130.0)
    # a worker busy with one long batch, no new request: not quiet either
    full.last = now
    clock.busy = True
    assert full.due(now + 20.0) is None
    clock.busy = False
    assert full.due(now + 20.5) is None  # quiet from now, not from before the batch
    assert full.due(now + 21.5) == "idle"


def test_full_collections_run_on_the_event_loop_and_stop() -> None:
    async def scenario() -> dict[str, int]:
        full = collector.FullCollections(
            lambda: 0, lambda: True, quiet_s=0.0, min_interval_s=0.0, check_s=0.01
        )
        full.start()
        for _ in range(1000):  # a full collection of a large test process takes a while
            if full.runs["idle"] >= 2:
                break
            await asyncio.sleep(0.01)
        await full.stop()
        return full.runs

    runs = asyncio.run(scenario())
    assert runs["idle"] >= 2 and runs["overdue"] == 0
