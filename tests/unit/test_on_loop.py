"""utils/serving/on_loop.py and the greedy batcher's two places to run a batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from utils.config import Settings
from utils.model.batch_profile import BatchProfile
from utils.serving.batching import Greedy
from utils.serving.on_loop import MAX_LOOP_BATCH_S, batches_on_loop, full_batch_s, where

#: the demo model here: 0.6 ms a sample alone and in a batch
CHEAP = BatchProfile(single_s=0.0006, batch=8, batch_s=0.0048)
#: the ResNet-18 benchmark model: 5.4 ms alone, 3.4 ms a sample at 8
COSTLY = BatchProfile(single_s=0.0054, batch=8, batch_s=0.027)
#: a model whose one inference alone holds the loop too long
HEAVY = BatchProfile(single_s=0.030, batch=8, batch_s=0.120)


def test_auto_holds_the_loop_at_most_the_limit_at_a_time() -> None:
    assert full_batch_s(CHEAP, 8) == pytest.approx(0.0048)
    assert batches_on_loop("auto", CHEAP, 8) == 8  # every batch on the loop
    assert batches_on_loop("auto", CHEAP, 32) == 1  # 19 ms for 32: only a lone request
    assert batches_on_loop("auto", COSTLY, 8) == 1
    assert batches_on_loop("auto", HEAVY, 8) == 0  # 30 ms alone: all in the thread
    assert batches_on_loop("auto", None, 8) == 0  # nothing measured: the thread
    assert HEAVY.single_s > MAX_LOOP_BATCH_S >= COSTLY.single_s
    # the operator's choice wins either way
    assert batches_on_loop(True, HEAVY, 8) == 8 and batches_on_loop(False, CHEAP, 8) == 0
    assert where(8, 8) == "batches on the event loop"
    assert where(1, 8).startswith("a lone request on the event loop")
    assert where(0, 8) == "batches in a worker thread"


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("true", True), ("0", False)])
def test_batch_on_loop_setting(monkeypatch: pytest.MonkeyPatch, value: str, parsed: object) -> None:
    monkeypatch.setenv("BATCH_ON_LOOP", value)
    assert Settings(_env_file=None).batch_on_loop == parsed


def test_greedy_runs_its_batch_where_it_is_told_and_switches_on_reload() -> None:
    async def scenario() -> list[tuple[int, bool]]:
        loop_thread = threading.get_ident()
        seen: list[tuple[int, bool]] = []

        def batch(items: list[int]) -> list[int]:
            seen.append((len(items), threading.get_ident() == loop_thread))
            return [i * 2 for i in items]

        greedy = Greedy(
            batch,
            max_batch_size=4,
            wait_budget_s=10.0,
            queue_delay_s=0.0,
            observer=None,
            on_loop=4,
        )
        assert await greedy.submit(1) == 2
        assert await asyncio.gather(*(greedy.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
        greedy.set_on_loop(1)  # a reload: lone requests only
        assert await greedy.submit(2) == 4
        assert await asyncio.gather(*(greedy.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
        greedy.set_on_loop(0)
        assert await greedy.submit(3) == 6
        await greedy.shutdown()
        return seen

    seen = asyncio.run(scenario())
    on_loop_all, lone_only, thread = seen[:3], seen[3:6], seen[6:]
    assert all(looped for _, looped in on_loop_all)  # 1, then 1 + 4 queued
    assert [looped for size, looped in lone_only] == [size == 1 for size, _ in lone_only]
    assert any(size > 1 for size, _ in lone_only)
    assert thread == [(1, False)]
