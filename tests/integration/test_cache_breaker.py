"""The Redis cache's circuit breaker through a real `bentoml serve` with two workers and a
private redis-server: a stalled Redis costs about one counted failure per worker per second
whatever the load, and a healthy Redis under full CPU load costs none. Counted from
`rfloc_cache_errors_total`, never timed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.test_cache import metric
from tests.support.redis_server import PrivateRedis
from tests.support.redis_server import private_redis as start_private_redis
from tests.support.serving import Server, start_server
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

WORKERS = 2
COOLDOWN_S = 1.0  # RedisCache's default cool-down


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    with start_private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def server(home: Path, private_redis: PrivateRedis) -> Iterator[Server]:
    served = start_server(
        home,
        home / "breaker.log",
        env={
            "REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/0",
            "REDIS_TIMEOUT_MS": "100",
            "SERVICE_WORKERS": str(WORKERS),
        },
    )
    yield served
    served.stop()


@pytest.fixture(scope="module")
def capture() -> np.ndarray:
    return generate_scenes(1, seed=931, spec=FeatureSpec()).iq[0]


def cache_errors(server: Server) -> float:
    return metric(server, "rfloc_cache_errors_total", 'op="get"') + metric(
        server, "rfloc_cache_errors_total", 'op="set"'
    )


def load(server: Server, clients: int, seconds: float, body: Callable[[int], dict]) -> list[int]:
    """`clients` keep-alive clients posting `/predict` back to back for `seconds`: the status
    of every request (599 for a transport error)."""
    statuses: list[int] = []
    lock = threading.Lock()
    stop = [0.0]  # set once every client is ready: creating 16 clients can take a second
    ready = threading.Barrier(
        clients, action=lambda: stop.__setitem__(0, time.monotonic() + seconds)
    )

    def client(c: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            ready.wait()
            n = 0
            while time.monotonic() < stop[0]:
                try:
                    status = http.post("/predict", json=body(c * 1_000_000 + n)).status_code
                except httpx.HTTPError:
                    status = 599
                with lock:
                    statuses.append(status)
                n += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def cpu_busy_share(sample: Callable[[], None]) -> float:
    """The machine's busy CPU share while `sample()` runs (from /proc/stat; nan without it)."""

    def ticks() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except OSError:
            return None
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    before = ticks()
    sample()
    after = ticks()
    if before is None or after is None or after[1] == before[1]:
        return math.nan
    return (after[0] - before[0]) / (after[1] - before[1])


def test_a_stalled_redis_costs_about_one_failure_per_worker_per_second(
    server: Server, private_redis: PrivateRedis, capture: np.ndarray, report: list[str]
) -> None:
    """16 clients while Redis is SIGSTOPped for ~6 s: the calls in flight when it stopped are
    one failure per worker, then one probe per worker per cool-down; no request fails."""
    bodies = [{"iq_b64": encode_capture(capture * (1 + 1e-3 * i))} for i in range(8)]
    assert set(load(server, 16, 1.0, lambda n: bodies[n % 8])) == {200}  # warm: all cached
    errors0 = cache_errors(server)
    private_redis.signal(signal.SIGSTOP)
    try:
        stalled = time.monotonic()
        statuses = load(server, 16, 6.0, lambda n: bodies[n % 8])
        seconds = time.monotonic() - stalled
    finally:
        private_redis.signal(signal.SIGCONT)
    # a probe still waiting when Redis resumes is answered late, and counted then: read the
    # count once the cool-down after the stall has passed
    time.sleep(COOLDOWN_S + 0.2)
    errors = cache_errors(server) - errors0
    allowed = WORKERS * (math.ceil(seconds / COOLDOWN_S) + 1)
    report.append(
        f"cache breaker, Redis stalled {seconds:.1f} s under 16 clients, {WORKERS} workers: "
        f"{errors:.0f} failures counted (allowed {allowed}), {len(statuses)} requests, "
        f"{sum(s != 200 for s in statuses)} failed"
    )
    assert [s for s in statuses if s != 200] == []
    assert len(statuses) > 16
    assert 1 <= errors <= allowed, (errors, allowed)

    # Redis back: after the cool-down each worker's probe answers and the cache serves again
    body = {"iq_b64": encode_capture(capture * 0.5)}
    hits = [httpx.post(f"{server.url}/predict", json=body, timeout=30).json()["cache_hit"]]
    for _ in range(10):
        hits.append(httpx.post(f"{server.url}/predict", json=body, timeout=30).json()["cache_hit"])
    assert hits[0] is False and True in hits
    assert cache_errors(server) - errors0 == errors  # nothing more once it answers


def test_a_healthy_redis_under_full_cpu_load_costs_no_failure(
    server: Server, capture: np.ndarray, report: list[str]
) -> None:
    """32 clients, every request a new capture (a lookup, an inference and a fill), plus one
    busy process per core, for ~6 s: Redis answers on time but the workers' event loops are
    starved; no call may count as a failure."""
    errors0 = cache_errors(server)
    misses0 = metric(server, "rfloc_cache_misses_total")
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    statuses: list[int] = []
    try:

        def run() -> None:
            def body(n: int) -> dict:
                sample = capture.copy()
                row, column = divmod(n, sample.shape[1])  # n is unique: so is the pair
                sample[0, column] *= 1.001
                sample[1, row % sample.shape[1]] *= 1.001
                return {"iq_b64": encode_capture(sample)}

            statuses.extend(load(server, 32, 6.0, body))

        busy = cpu_busy_share(run)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(timeout=10)
    errors = cache_errors(server) - errors0
    misses = metric(server, "rfloc_cache_misses_total") - misses0
    report.append(
        f"cache breaker, healthy Redis, 32 clients + {len(burners)} busy processes for 6 s "
        f"(CPU {100 * busy:.0f} % busy): {len(statuses)} requests, {errors:.0f} cache failures"
    )
    assert [s for s in statuses if s != 200] == []
    assert misses == len(statuses)  # every request looked up, missed, and filled
    assert errors == 0
