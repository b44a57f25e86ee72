"""utils/serving/on_loop.py and the greedy batcher's two places to run a batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from utils.config import Settings
from utils.model.batch_profile import BatchProfile
from utils.serving.batching import Greedy
from utils.serving.on_loop import MAX_LOOP_BATCH_S, batches_on_loop, full_batch_s

#: the demo model here: 0.6 ms a sample alone and in a batch
CHEAP = BatchProfile(single_s=0.0006, batch=8, batch_s=0.0048)
#: the ResNet-18 benchmark model: about 10 ms alone, 6 ms a sample at 8
COSTLY = BatchProfile(single_s=0.010, batch=8, batch_s=0.050)


def test_auto_puts_a_batch_on_the_loop_only_when_a_full_one_is_short() -> None:
    assert full_batch_s(CHEAP, 8) == pytest.approx(0.0048)
    assert batches_on_loop("auto", CHEAP, 8)
    assert not batches_on_loop("auto", CHEAP, 32)  # 19 ms: too long to hold the loop
    assert not batches_on_loop("auto", COSTLY, 8)
    assert not batches_on_loop("auto", None, 8)  # nothing measured: the thread
    assert full_batch_s(COSTLY, 1) > MAX_LOOP_BATCH_S / 2
    # the operator's choice wins either way
    assert batches_on_loop(True, COSTLY, 8) and not batches_on_loop(False, CHEAP, 8)


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), ("true", True), ("0", False)])
def test_batch_on_loop_setting(monkeypatch: pytest.MonkeyPatch, value: str, parsed: object) -> None:
    monkeypatch.setenv("BATCH_ON_LOOP", value)
    assert Settings(_env_file=None).batch_on_loop == parsed


def test_greedy_runs_its_batch_where_it_is_told_and_switches_on_reload() -> None:
    async def scenario() -> list[bool]:
        loop_thread = threading.get_ident()
        seen: list[bool] = []

        def batch(items: list[int]) -> list[int]:
            seen.append(threading.get_ident() == loop_thread)
            return [i * 2 for i in items]

        greedy = Greedy(
            batch,
            max_batch_size=4,
            wait_budget_s=10.0,
            queue_delay_s=0.0,
            observer=None,
            on_loop=True,
        )
        assert await greedy.submit(1) == 2
        greedy.set_on_loop(False)
        assert await asyncio.gather(*(greedy.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
        await greedy.shutdown()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] is True and seen[1:] and not any(seen[1:])
