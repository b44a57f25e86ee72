"""Prediction cache: Redis when `REDIS_URL` is set, else a bounded in-process LRU.

Fail-open by design: a cache is an optimisation, so Redis being down, slow or returning
garbage must never fail or stall a prediction. Every Redis call has short connect/socket
timeouts, one retry without backoff, and a hard `asyncio.wait_for` deadline; after a failure
the cache steps aside for `cooldown_s` (a small circuit breaker) so an outage costs one
timeout per worker per cool-down, not one per request. Errors are counted in Prometheus and
logged at most once per `log_every_s`.

Keys (docs/api.md §6): a digest of the model's sha256, the options that change the answer and the
canonical capture bytes, so a newly imported model never sees an older model's answers.
Values: the response without its per-request fields (timing, timestamp, cache flag, session),
as compact JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from utils.serving import metrics

log = logging.getLogger(__name__)

#: Fields of a PredictionResponse that belong to one request, not to the answer.
PER_REQUEST_FIELDS = ("inference_time_ms", "timestamp", "cache_hit", "session_id")


def cache_key(
    prefix: str,
    model_sha256: str,
    capture_bytes: bytes | memoryview,
    confidence_level: float,
    include_geojson: bool,
) -> str:
    """`prefix:model12:digest` over model identity, answer-changing options and sample bytes."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(model_sha256.encode())
    digest.update(f"|p={confidence_level!r}|g={int(include_geojson)}|".encode())
    digest.update(capture_bytes)
    return f"{prefix}:{model_sha256[:12]}:{digest.hexdigest()}"


def encode_value(response: dict[str, Any]) -> bytes:
    kept = {k: v for k, v in response.items() if k not in PER_REQUEST_FIELDS}
    return json.dumps(kept, separators=(",", ":")).encode()


def decode_value(raw: bytes | str) -> dict[str, Any]:
    """Parse a cached value; raises ValueError on anything that is not one of ours."""
    value = json.loads(raw)
    if not isinstance(value, dict) or "position" not in value or "ellipse" not in value:
        raise ValueError("not a cached prediction")
    return value


class PredictionCache(Protocol):
    backend: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...


class LRUCache:
    """Bounded in-process cache with TTL (one per worker process)."""

    backend = "memory"

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None or entry[0] < now:
                if entry is not None:
                    del self._data[key]
                out.append(None)
            else:
                self._data.move_to_end(key)
                out.append(entry[1])
        return out

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        expires = time.monotonic() + self.ttl_s
        for key, value in items:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


class RedisCache:
    """redis-py asyncio client over one blocking connection pool per worker process."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        timeout_s: float,
        max_connections: int = 32,
        cooldown_s: float = 1.0,
        log_every_s: float = 30.0,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.cooldown_s = cooldown_s
        self.log_every_s = log_every_s
        self._client: Any = None
        self._open_until = 0.0
        self._last_log = 0.0
        self._suppressed = 0

    async def start(self) -> None:
        """Create the pool on the running (worker) event loop; connects lazily."""
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        retry = Retry(NoBackoff(), 1)
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
            retry=retry,
        )
        self._client = Redis(connection_pool=pool, retry=retry)

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001 - closing a broken pool must not fail shutdown
                pass
            self._client = None

    def _available(self) -> bool:
        return self._client is not None and time.monotonic() >= self._open_until

    def _failed(self, op: str, exc: BaseException) -> None:
        metrics.CACHE_ERRORS.labels(op).inc()
        self._open_until = time.monotonic() + self.cooldown_s
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            extra = f" ({self._suppressed} similar errors not logged)" if self._suppressed else ""
            log.warning(
                "Redis cache %s failed, serving uncached for %.1f s: %s: %s%s",
                op,
                self.cooldown_s,
                type(exc).__name__,
                str(exc)[:200],
                extra,
            )
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1

    async def _bounded(self, op: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout=3 * self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - fail open on any client error
            self._failed(op, exc)
            return None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        values = await self._bounded("get", self._client.mget(list(keys)))
        if values is None or len(values) != len(keys):
            return [None] * len(keys)
        return [v if isinstance(v, bytes | type(None)) else None for v in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or not self._available():
            return
        pipe = self._client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, ex=self.ttl_s)
        await self._bounded("set", pipe.execute())


def make_cache(
    redis_url: str | None, ttl_s: int, max_entries: int, timeout_ms: int
) -> PredictionCache:
    if redis_url:
        return RedisCache(redis_url, ttl_s, timeout_ms / 1000.0)
    return LRUCache(max_entries, ttl_s)
