"""Prediction cache: Redis when `REDIS_URL` is set, else a bounded in-process LRU.

Fail-open by design: a cache is an optimisation, so Redis being down, slow or returning
garbage must never fail or stall a prediction: whatever goes wrong is served uncached.

A circuit breaker per worker (one `RedisCache` per worker process and event loop) keeps an
outage to about one counted failure (`rfloc_cache_errors_total{op}`) per worker per second,
whatever the concurrency, and keeps requests from waiting on Redis more than once:

- closed: calls go to Redis.
- A call not answered within `timeout_s` (`REDIS_TIMEOUT_MS`) is *late*: its request goes on
  uncached, and so do the other calls in flight, given up at once (they wait on the same Redis).
  The late call runs on alone, every other call skipping Redis, until it ends:
  - no answer within `limit_s` (1 s, or 10 x `timeout_s` if longer), or an error: a failure;
  - answered late while the previous call to end was late as well: a failure (Redis is slow);
  - answered late after calls answered in time: a hiccup, not counted; closed again.
- A failure (also any error of a call answered in time) is counted once and logged at most
  once per `log_every_s`; every call in flight is given up uncounted and the breaker opens:
  calls skip Redis for `cooldown_s`.
- Then half-open: the next call is the one probe sent to Redis, the others still skip it; the
  probe answered in time closes the breaker, otherwise it is judged as above.

Why a late answer is forgiven once, and why "in time" is measured on the loop's own clock: on a
saturated CPU (measured on 2 cores: 32 clients and a busy process per core), a healthy Redis
answered 64 of about 1400 calls after more than 100 ms and the slowest after 360 ms, because
Redis and the workers are both starved. redis-py's socket timeouts counted those as failures
(5 `set` timeouts per 20 s at `REDIS_TIMEOUT_MS=100`). Here the request still waits no more
than `timeout_s`, but a failure needs an answer that never comes within `limit_s` (sized for a
saturated machine, with 3x headroom over that slowest answer) or lateness that persists; an
isolated late answer only makes the cache step aside until it arrives.

`timeout_s` itself counts only the time the worker's event loop was listening: a loop starved
by a saturated CPU or a long callback reads late what Redis sent on time. Each call is watched
by a ticker of period `timeout_s / 4` on the loop; a tick that fires at most half a period late
credits a period, a later one nothing (the answer may be sitting unread in the socket). A call
is late once credited `timeout_s`, or after `5 x timeout_s` of wall time when the loop is too
starved to credit any; both deadlines are confirmed by a few loop turns that read whatever had
arrived. redis-py's own timeouts sit above `limit_s`, as a backstop.

Keys (docs/api.md §6): a digest of the model's sha256, the options that change the answer and the
canonical capture bytes, so a newly imported model never sees an older model's answers.
Values: the response without its per-request fields (timing, timestamp, cache flag, session),
as compact JSON; with a signing key, preceded by an HMAC-SHA256 over key and value (`seal_value`).
Whoever can write to the Redis can put any bytes under any key, so a value read back is opened
here (size, then MAC) and checked by `utils/api/cached_answers.py` before it is served.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
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


#: Largest stored value read back, MAC included. An answer takes about 0.4 KB, 3.5 KB with its
#: GeoJSON ring (65 vertices), a little more for a ring cut at the antimeridian and warnings
#: naming receivers: anything larger is not one this service wrote, and is refused unparsed.
MAX_VALUE_BYTES = 32 * 1024
#: Length of the HMAC-SHA256 that precedes a value when a signing key is set.
MAC_BYTES = 32


class RefusedValue(ValueError):
    """A cached value that must not be served; `reason` labels `rfloc_cache_rejected_total`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def value_mac(secret: bytes, key: str, payload: bytes) -> bytes:
    """HMAC-SHA256 over the key (length-prefixed) and the value, so that a genuine value
    copied under another key does not verify there."""
    key_bytes = key.encode()
    mac = hmac.new(secret, len(key_bytes).to_bytes(4, "big"), hashlib.sha256)
    mac.update(key_bytes)
    mac.update(payload)
    return mac.digest()


def seal_value(payload: bytes, key: str, secret: bytes | None) -> bytes:
    """What is stored under `key`: the payload, preceded by its MAC when a key is set."""
    return payload if secret is None else value_mac(secret, key, payload) + payload


def open_value(raw: bytes, key: str, secret: bytes | None) -> bytes:
    """The payload of a stored value, or `RefusedValue`: too large to be ours (checked before
    anything reads it), or, with a signing key, a MAC that does not verify for this key."""
    if len(raw) > MAX_VALUE_BYTES:
        raise RefusedValue("size", f"{len(raw)} bytes, at most {MAX_VALUE_BYTES}")
    if secret is None:
        return raw
    mac, payload = raw[:MAC_BYTES], raw[MAC_BYTES:]
    if len(mac) < MAC_BYTES or not hmac.compare_digest(mac, value_mac(secret, key, payload)):
        raise RefusedValue("signature")
    return payload


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


#: Ticks of the responsive-loop clock per timeout, and loop turns that confirm a deadline.
TICKS_PER_TIMEOUT = 4
CONFIRM_TURNS = 5


class _Deadline:
    """The two deadlines of one Redis call (module docstring): `on_late()` once it has waited
    `timeout_s` of responsive event-loop time (or `late_cap_s` of wall time, whichever comes
    first), then `on_limit()` at `limit_s` of wall time. Each is confirmed by a few loop turns,
    each of which polls the sockets, so an answer that had arrived is read first."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        late_cap_s: float,
        limit_s: float,
        on_late: Callable[[], None],
        on_limit: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.timeout_s, self.late_cap_s, self.limit_s = timeout_s, late_cap_s, limit_s
        self.on_late, self.on_limit = on_late, on_limit
        self.period = timeout_s / TICKS_PER_TIMEOUT
        self.started = loop.time()
        self.credited = 0.0
        self.due = self.started + self.period
        self.handle: asyncio.Handle = loop.call_at(self.due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        if now - self.due <= self.period / 2:  # the loop was listening: Redis's time
            self.credited += self.period
        if self.credited >= self.timeout_s * (1 - 1e-9) or now - self.started >= self.late_cap_s:
            self.handle = self.loop.call_soon(self._confirm, CONFIRM_TURNS, self._late)
        else:
            self.due = now + self.period
            self.handle = self.loop.call_at(self.due, self._tick)

    def _late(self) -> None:
        self.handle = self.loop.call_at(self.started + self.limit_s, self._limit)
        self.on_late()

    def _limit(self) -> None:
        self.handle = self.loop.call_soon(self._confirm, CONFIRM_TURNS, self.on_limit)

    def _confirm(self, turns: int, then: Callable[[], None]) -> None:
        if turns > 0:
            self.handle = self.loop.call_soon(self._confirm, turns - 1, then)
        else:
            then()

    def cancel(self) -> None:
        self.handle.cancel()


class _Call:
    """One Redis call: its task, its request's wait and how it ended."""

    __slots__ = ("op", "probe", "task", "released", "late", "dropped", "deadline")

    def __init__(self, op: str, probe: bool, released: asyncio.Future[tuple[bool, Any]]) -> None:
        self.op, self.probe, self.released = op, probe, released
        self.late = False  # its request was released without an answer; it runs on
        self.dropped = False  # abandoned or expired: its end means nothing any more
        self.task: asyncio.Task[Any]
        self.deadline: _Deadline


class RedisCache:
    """redis-py asyncio client over one blocking connection pool per worker process, behind
    the circuit breaker of the module docstring."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        timeout_s: float,
        max_connections: int = 32,
        cooldown_s: float = 1.0,
        log_every_s: float = 30.0,
        limit_s: float | None = None,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.late_cap_s = 5 * timeout_s
        self.limit_s = limit_s if limit_s is not None else max(1.0, 10 * timeout_s)
        self.max_connections = max_connections
        self.cooldown_s = cooldown_s
        self.log_every_s = log_every_s
        self._client: Any = None
        self._open_until = 0.0  # 0: closed; else open until then, half-open after
        self._probing = False  # half-open: the one probe is in flight
        self._late: _Call | None = None  # a late call runs on: every other call skips Redis
        self._late_before = False  # the last call to end was late (answered or not)
        self._inflight: set[_Call] = set()
        self._last_log = 0.0
        self._suppressed = 0

    async def start(self) -> None:
        """Create the pool on the running (worker) event loop; connects lazily."""
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # one retry for a connection Redis closed (a restart); redis-py's timeouts are only a
        # backstop above `limit_s`: the calls' deadlines are ours (`_Deadline`)
        backstop = self.limit_s + self.timeout_s
        retry = Retry(NoBackoff(), 1)
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=backstop,
            socket_connect_timeout=backstop,
            socket_timeout=backstop,
            retry=retry,
        )
        self._client = Redis(connection_pool=pool, retry=retry)

    async def close(self) -> None:
        self._abandon_all()
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001 - closing a broken pool must not fail shutdown
                pass
            self._client = None

    @property
    def state(self) -> str:
        """`closed`, `late` (a late call runs on), `open` or `half-open` (tests and logs)."""
        if self._late is not None:
            return "late"
        if not self._open_until:
            return "closed"
        return "open" if time.monotonic() < self._open_until else "half-open"

    # --- the breaker ------------------------------------------------------------------------
    def _admit(self) -> bool | None:
        """None: skip Redis; False: a call of a closed breaker; True: the half-open probe."""
        if self._client is None or self._late is not None:
            return None
        if not self._open_until:
            return False
        if self._probing or time.monotonic() < self._open_until:
            return None
        self._probing = True
        return True

    def _release(self, call: _Call, answer: tuple[bool, Any]) -> None:
        """Let the call's request go on, with Redis's answer or without one."""
        if call.probe:
            self._probing = False
        if not call.released.done():
            call.released.set_result(answer)

    def _drop(self, call: _Call) -> None:
        call.dropped = True
        call.deadline.cancel()
        self._inflight.discard(call)
        self._release(call, (False, None))
        call.task.cancel()

    def _abandon_all(self, keep: _Call | None = None) -> None:
        """Every call in flight but `keep` is given up: they wait on the same Redis."""
        for call in list(self._inflight):
            if call is not keep:
                self._drop(call)

    def _failure(self, op: str, exc: BaseException) -> None:
        """Counted once: the breaker opens for `cooldown_s`, every call in flight is dropped."""
        self._late = None
        self._late_before = True
        self._open_until = time.monotonic() + self.cooldown_s
        self._abandon_all()
        metrics.CACHE_ERRORS.labels(op).inc()
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

    def _on_late(self, call: _Call) -> None:
        """No answer in `timeout_s`: its request goes on uncached, so do the others in flight,
        and the call runs on alone (the others skip Redis) until it ends or `limit_s`."""
        if call.dropped or call.task.done():
            return
        call.late = True
        self._late = call
        self._abandon_all(keep=call)
        self._release(call, (False, None))

    def _on_limit(self, call: _Call) -> None:
        if call.dropped or call.task.done():
            return
        self._drop(call)
        self._failure(call.op, TimeoutError(f"no answer in {self.limit_s:.1f} s"))

    def _ended(self, call: _Call) -> None:
        """The call's task is done (done callback)."""
        task = call.task
        error = None if task.cancelled() else task.exception()  # also marks it retrieved
        if call.dropped:
            return
        call.deadline.cancel()
        self._inflight.discard(call)
        if error is not None:
            self._failure(call.op, error)
            self._release(call, (False, None))
        elif not call.late:  # answered in time
            self._late_before = False
            if call.probe:
                self._open_until = 0.0  # closed again
            self._release(call, (True, task.result()))
        elif self._late_before:  # late again: Redis is slow, not just a hiccup
            self._failure(call.op, TimeoutError(f"late twice in a row (> {self.timeout_s} s)"))
        else:  # an isolated late answer: a hiccup (a saturated CPU starves Redis too)
            self._late = None
            self._late_before = True
            self._open_until = 0.0

    async def _call(self, op: str, fn: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """(True, result), or (False, None) when Redis was skipped, failed or was late."""
        probe = self._admit()
        if probe is None:
            return False, None
        loop = asyncio.get_running_loop()
        call = _Call(op, probe, loop.create_future())
        call.task = loop.create_task(fn())
        call.deadline = _Deadline(
            loop,
            self.timeout_s,
            self.late_cap_s,
            self.limit_s,
            on_late=lambda: self._on_late(call),
            on_limit=lambda: self._on_limit(call),
        )
        call.task.add_done_callback(lambda _: self._ended(call))
        self._inflight.add(call)
        try:
            return await asyncio.shield(call.released)
        except asyncio.CancelledError:  # the request went away: so does its call, uncounted
            if not call.released.done():
                self._drop(call)
            raise

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """At most `MAX_VALUE_BYTES + 1` bytes of each value (GETRANGE, not MGET): a huge value
        written by someone else costs no more to read than that, and shows as too large. A
        missing key, an empty value or a key of another type is None."""
        if not keys:
            return []

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.getrange(key, 0, MAX_VALUE_BYTES)
            return list(await pipe.execute(raise_on_error=False))

        ok, values = await self._call("get", read)
        if not ok or not isinstance(values, list) or len(values) != len(keys):
            return [None] * len(keys)
        return [v if isinstance(v, bytes) and v else None for v in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return

        async def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, ex=self.ttl_s)
            await pipe.execute()

        await self._call("set", write)


def make_cache(
    redis_url: str | None, ttl_s: int, max_entries: int, timeout_ms: int
) -> PredictionCache:
    if redis_url:
        return RedisCache(redis_url, ttl_s, timeout_ms / 1000.0)
    return LRUCache(max_entries, ttl_s)
