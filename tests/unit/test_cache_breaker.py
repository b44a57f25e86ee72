"""The Redis cache's circuit breaker (utils/serving/cache.py) against a real redis-server that
is stalled with SIGSTOP, and a real closed port: failures are counted from
`rfloc_cache_errors_total`, never timed."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from tests.support.redis_server import PrivateRedis
from tests.support.redis_server import private_redis as start_private_redis
from tests.support.serving import free_port
from utils.serving.cache import RedisCache

TIMEOUT_S = 0.05
COOLDOWN_S = 0.3


def cache_errors() -> float:
    return sum(
        REGISTRY.get_sample_value("rfloc_cache_errors_total", {"op": op}) or 0.0
        for op in ("get", "set")
    )


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    with start_private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture()
def redis_url(private_redis: PrivateRedis) -> Iterator[str]:
    yield f"redis://127.0.0.1:{private_redis.port}/0"
    private_redis.signal(signal.SIGCONT)  # whatever a test left stalled


def new_cache(url: str, limit_s: float = 0.25) -> RedisCache:
    return RedisCache(url, ttl_s=60, timeout_s=TIMEOUT_S, cooldown_s=COOLDOWN_S, limit_s=limit_s)


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait for the breaker to reach a state (a hang guard, not a timing)."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.01)


async def clients(cache: RedisCache, n: int, seconds: float) -> tuple[int, int]:
    """`n` concurrent request loops (lookup, then fill) for `seconds`: (requests, hits).
    The keys they use are filled first."""
    await cache.set_many([(f"breaker-test:{i}:{k}", b"v") for i in range(n) for k in range(5)])
    done = hits = 0
    stop = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal done, hits
        while time.monotonic() < stop:
            key = f"breaker-test:{i}:{done % 5}"
            (value,) = await cache.get_many([key])
            hits += value == b"v"
            await cache.set_many([(key, b"v")])
            done += 1
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(i) for i in range(n)))
    return done, hits


def test_a_stalled_redis_costs_one_failure_per_cool_down(
    private_redis: PrivateRedis, redis_url: str
) -> None:
    """24 clients when Redis stops answering: the first call that is late releases the 23
    others uncounted and runs on alone; unanswered, it is one failure; then one probe per
    cool-down. Before, each call in flight timed out and counted (about 24 per cool-down)."""

    async def scenario() -> tuple[float, int, int, int]:
        cache = new_cache(redis_url)
        await cache.start()
        assert (await clients(cache, 24, 0.2))[1] > 0  # connections up, hits served
        errors0 = cache_errors()
        private_redis.signal(signal.SIGSTOP)
        started = time.monotonic()
        requests, _ = await clients(cache, 24, 1.5)
        elapsed = time.monotonic() - started
        errors = cache_errors() - errors0
        private_redis.signal(signal.SIGCONT)
        await until(lambda: cache.state in ("half-open", "closed"))
        _, hits_after = await clients(cache, 4, 0.2)  # the probe answers: closed again
        await cache.close()
        return errors, math.ceil(elapsed / COOLDOWN_S), requests, hits_after

    errors, windows, requests, hits_after = asyncio.run(scenario())
    assert requests > 24  # every request was answered (uncached), none hung
    assert 1 <= errors <= windows + 1, (errors, windows)
    assert hits_after > 0


def test_a_late_call_runs_alone_then_one_probe_per_cool_down(
    private_redis: PrivateRedis, redis_url: str
) -> None:
    async def scenario() -> None:
        cache = new_cache(redis_url)
        await cache.start()
        await cache.set_many([("breaker-test:probe", b"v")])
        private_redis.signal(signal.SIGSTOP)
        errors0 = cache_errors()
        assert await cache.get_many(["breaker-test:probe"]) == [None]  # late: released
        assert cache.state == "late" and cache_errors() == errors0  # not judged yet
        others = await asyncio.gather(*(cache.get_many(["breaker-test:probe"]) for _ in range(20)))
        assert others == [[None]] * 20  # skipped Redis
        await until(lambda: cache.state == "open")  # unanswered in limit_s: one failure
        assert cache_errors() == errors0 + 1

        await until(lambda: cache.state == "half-open")
        probe = asyncio.create_task(cache.get_many(["breaker-test:probe"]))
        await asyncio.sleep(0)  # the probe is in flight
        others = await asyncio.gather(*(cache.get_many(["breaker-test:probe"]) for _ in range(20)))
        assert others == [[None]] * 20
        assert not probe.done()  # the others skipped Redis, they did not wait for the probe
        assert await probe == [None]
        await until(lambda: cache.state == "open")
        assert cache_errors() == errors0 + 2  # the probe, the others not at all

        # a probe whose request goes away frees the half-open slot, uncounted
        await until(lambda: cache.state == "half-open")
        probe = asyncio.create_task(cache.get_many(["breaker-test:probe"]))
        await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert cache_errors() == errors0 + 2 and cache.state == "half-open"
        private_redis.signal(signal.SIGCONT)
        assert await cache.get_many(["breaker-test:probe"]) == [b"v"]  # the next probe
        assert cache.state == "closed"
        await cache.close()

    asyncio.run(scenario())


def test_an_isolated_late_answer_is_forgiven_a_repeated_one_is_not(
    private_redis: PrivateRedis, redis_url: str
) -> None:
    """Redis paused shorter than `limit_s`: the request goes on uncached at the timeout; the
    answer arrives late. Once after answers in time, a hiccup; twice in a row, a failure."""

    async def hiccup(cache: RedisCache) -> None:
        private_redis.signal(signal.SIGSTOP)
        assert await cache.get_many(["breaker-test:late"]) == [None]  # released, uncached
        assert cache.state == "late"
        private_redis.signal(signal.SIGCONT)
        await until(lambda: cache.state != "late")

    async def scenario() -> None:
        cache = new_cache(redis_url, limit_s=5.0)
        await cache.start()
        await cache.set_many([("breaker-test:late", b"v")])
        errors0 = cache_errors()
        await hiccup(cache)
        assert cache.state == "closed" and cache_errors() == errors0  # forgiven
        await hiccup(cache)
        assert cache.state == "open" and cache_errors() == errors0 + 1  # late twice in a row
        await until(lambda: cache.state == "half-open")
        assert await cache.get_many(["breaker-test:late"]) == [b"v"]  # in time: closed
        await hiccup(cache)
        assert cache.state == "closed" and cache_errors() == errors0 + 1  # forgiven again
        await cache.close()

    asyncio.run(scenario())


def test_a_closed_port_costs_one_failure_per_cool_down() -> None:
    async def scenario() -> None:
        cache = new_cache(f"redis://127.0.0.1:{free_port()}/0")
        await cache.start()
        errors0 = cache_errors()
        for _ in range(3):  # each round: 20 concurrent calls, then the breaker's cool-down
            results = await asyncio.gather(*(cache.get_many(["k"]) for _ in range(20)))
            assert results == [[None]] * 20
            await cache.set_many([("k", b"v")])
            await asyncio.sleep(COOLDOWN_S)
        assert cache_errors() == errors0 + 3
        await cache.close()

    asyncio.run(scenario())


def test_a_starved_event_loop_does_not_fake_timeouts(redis_url: str) -> None:
    """A healthy Redis and a worker whose loop is blocked 3 timeouts long every few ms (as a
    saturated CPU does to it): answers arrive on time but are read late. None is a failure."""

    async def scenario() -> tuple[float, int, int]:
        cache = RedisCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)  # the default limit_s
        await cache.start()
        await clients(cache, 4, 0.1)
        loop = asyncio.get_running_loop()
        hogging = True

        def hog() -> None:
            time.sleep(3 * TIMEOUT_S)  # CPU-bound work on the loop, or the OS not running it
            if hogging:
                loop.call_later(0.01, hog)

        errors0 = cache_errors()
        loop.call_soon(hog)
        requests, hits = await clients(cache, 16, 2.0)
        hogging = False
        await cache.close()
        return cache_errors() - errors0, requests, hits

    errors, requests, hits = asyncio.run(scenario())
    assert requests > 16 and hits > 0
    assert errors == 0
