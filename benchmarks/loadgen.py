"""A small closed-loop HTTP load generator (aiohttp): N clients, each sending back to back.

The same generator drives every server the benchmarks compare, so their figures differ only
by the server. Payloads are serialised once, before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    statuses: Counter[int]
    errors: int
    abandoned: int = 0  # requests in flight when an `abandon` run stopped (connections closed)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 1),
            "p95_ms": round(self.percentile(95), 1),
            "p99_ms": round(self.percentile(99), 1),
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            **({"abandoned": self.abandoned} if self.abandoned else {}),
        }


async def _run(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    total: int,
    timeout_s: float,
    seconds: float | None = None,
    abandon: bool = False,
) -> LoadResult:
    """`total` requests, or as many as fit in `seconds` when it is given; with `abandon`, at
    `seconds` the clients stop as a stopped load generator does: requests in flight are given
    up and their connections closed, not awaited."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stop_at = time.perf_counter() + seconds if seconds is not None else None

        def more() -> bool:
            if stop_at is not None:
                return time.perf_counter() < stop_at
            return issued < total

        async def client(worker: int) -> None:
            nonlocal issued, errors
            while more():
                body = bodies[issued % len(bodies)]
                issued += 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                        if resp.status >= 400:
                            errors += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    statuses[0] += 1
                    errors += 1
                latencies.append(1000.0 * (time.perf_counter() - start))

        started = time.perf_counter()
        tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
        left: set[asyncio.Task[None]] = set()
        if abandon and seconds is not None:
            _, left = await asyncio.wait(tasks, timeout=seconds)
            for task in left:  # each is waiting for an answer: give it up
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=bool(left))
        elapsed = time.perf_counter() - started
    return LoadResult(
        concurrency, len(latencies), elapsed, latencies, statuses, errors, abandoned=len(left)
    )


def run_load(
    url: str,
    payloads: list[dict[str, Any]] | list[bytes],
    concurrency: int,
    total: int,
    timeout_s: float = 120.0,
) -> LoadResult:
    bodies = [p if isinstance(p, bytes) else json.dumps(p).encode() for p in payloads]
    return asyncio.run(_run(url, bodies, concurrency, total, timeout_s))


async def run_for(
    url: str,
    payloads: list[dict[str, Any]] | list[bytes],
    concurrency: int,
    seconds: float,
    timeout_s: float = 120.0,
    abandon: bool = False,
) -> LoadResult:
    """Closed-loop load for `seconds` (awaitable, so several loads can run at once); with
    `abandon`, the requests in flight at the end are dropped and their connections closed."""
    bodies = [p if isinstance(p, bytes) else json.dumps(p).encode() for p in payloads]
    return await _run(url, bodies, concurrency, 0, timeout_s, seconds, abandon)
