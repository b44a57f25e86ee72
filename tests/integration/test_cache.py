"""Prediction cache and service metrics: real Redis servers, real `bentoml serve` processes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from tests.support.model_factory import register_onnx_model, toy_model
from tests.support.redis_server import PrivateRedis, require_redis_server
from tests.support.registry import make_settings
from tests.support.serving import Server, free_port, import_demo_model, start_server
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.serving.cache import (
    MAC_BYTES,
    MAX_VALUE_BYTES,
    LRUCache,
    RedisCache,
    cache_key,
    encode_value,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"
TIMING_FIELDS = ("inference_time_ms", "timestamp", "cache_hit")


def body_of(capture: np.ndarray, **options: object) -> dict:
    return {"iq_b64": encode_capture(capture), **options}


def post(server: Server, body: dict, path: str = "/predict", timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=timeout)


def metric(server: Server, name: str, labels: str = "") -> float:
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def wait_metric(server: Server, name: str, labels: str, expected: float) -> bool:
    """The metric reaches `expected` (workers may serve `/metrics` from a read a second old)."""
    deadline = time.monotonic() + 5.0
    while metric(server, name, labels) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return metric(server, name, labels) == expected


def strip(response: dict) -> dict:
    """The answer without the fields a hit gets afresh."""
    return {k: v for k, v in response.items() if k not in (*TIMING_FIELDS, "session_id")}


# --- framework-free -------------------------------------------------------------------------


def test_keys_change_with_model_options_and_samples() -> None:
    base = cache_key("p", "a" * 64, b"samples", 0.95, False)
    assert base.startswith("p:aaaaaaaaaaaa:")
    assert cache_key("p", "b" * 64, b"samples", 0.95, False) != base
    assert cache_key("p", "a" * 64, b"samples!", 0.95, False) != base
    assert cache_key("p", "a" * 64, b"samples", 0.5, False) != base
    assert cache_key("p", "a" * 64, b"samples", 0.95, True) != base
    assert cache_key("p", "a" * 64, b"samples", 0.95, False) == base


def test_values_drop_per_request_fields() -> None:
    response = {
        "position": {"latitude": 1.0},
        "ellipse": {},
        "inference_time_ms": 3.0,
        "timestamp": "t",
        "cache_hit": False,
        "session_id": "s",
        "model_version": "1",
    }
    value = json.loads(encode_value(response))
    assert value == {"position": {"latitude": 1.0}, "ellipse": {}, "model_version": "1"}


def test_lru_is_bounded_and_expires() -> None:
    async def scenario() -> None:
        cache = LRUCache(max_entries=2, ttl_s=0.2)
        await cache.set_many([("a", b"1"), ("b", b"2")])
        assert await cache.get_many(["a"]) == [b"1"]  # touch a: b is now the oldest
        await cache.set_many([("c", b"3")])
        assert await cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
        await asyncio.sleep(0.25)
        assert await cache.get_many(["a", "c"]) == [None, None]

    asyncio.run(scenario())


def test_redis_cache_round_trip_and_ttl() -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(SHARED_REDIS)

    async def scenario() -> None:
        cache = RedisCache(SHARED_REDIS, ttl_s=77, timeout_s=0.2)
        await cache.start()
        await cache.set_many([(f"{prefix}:k1", b"v1")])
        assert await cache.get_many([f"{prefix}:k1", f"{prefix}:k2"]) == [b"v1", None]
        await cache.close()

    try:
        asyncio.run(scenario())
        assert 0 < client.ttl(f"{prefix}:k1") <= 77
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_a_huge_or_foreign_value_costs_a_bounded_read() -> None:
    """A value someone else wrote is read up to one byte past the cap, so that it shows as too
    large without being transferred; a key of another type is a miss, not a Redis failure."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(SHARED_REDIS)
    client.set(f"{prefix}:huge", b"x" * (4 * 1024 * 1024))
    client.rpush(f"{prefix}:list", b"v")
    client.set(f"{prefix}:empty", b"")

    async def scenario() -> list[bytes | None]:
        cache = RedisCache(SHARED_REDIS, ttl_s=60, timeout_s=0.5)
        await cache.start()
        try:
            keys = [f"{prefix}:{k}" for k in ("huge", "list", "empty", "none")]
            values = await cache.get_many(keys)
            assert cache.state == "closed"  # no failure counted, the breaker stays closed
            return values
        finally:
            await cache.close()

    try:
        huge, listed, empty, none = asyncio.run(scenario())
        assert huge is not None and len(huge) == MAX_VALUE_BYTES + 1
        assert listed is None and empty is None and none is None
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_unreachable_redis_fails_open_fast() -> None:
    async def scenario() -> float:
        cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=10, timeout_s=0.1)
        await cache.start()
        started = time.perf_counter()
        assert await cache.get_many(["k"]) == [None]
        await cache.set_many([("k", b"v")])
        assert await cache.get_many(["k"]) == [None]  # breaker open: not even tried
        await cache.close()
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 2.0  # hang guard, not a benchmark


# --- through the service ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    value = f"test-{uuid.uuid4().hex[:8]}"
    yield value
    client = redis.Redis.from_url(SHARED_REDIS)
    for key in client.scan_iter(f"{value}:*"):
        client.delete(key)


@pytest.fixture(scope="module")
def cached_server(home: Path, prefix: str) -> Iterator[Server]:
    server = start_server(
        home,
        home / "cached.log",
        env={
            "REDIS_URL": SHARED_REDIS,
            "CACHE_KEY_PREFIX": prefix,
            "CACHE_TTL_SECONDS": "120",
            "SERVICE_WORKERS": "2",
        },
    )
    yield server
    server.stop()


def test_repeat_is_a_hit_with_the_same_answer(cached_server: Server, prefix: str) -> None:
    capture = generate_scenes(1, seed=901, spec=FeatureSpec()).iq[0]
    first = post(cached_server, body_of(capture, session_id="a")).json()
    second = post(cached_server, body_of(capture, session_id="a")).json()
    assert first["cache_hit"] is False and second["cache_hit"] is True
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_FIELDS}  # noqa: E731
    assert strip(first) == strip(second)
    # other options change the answer: a different key, so a miss
    assert post(cached_server, body_of(capture, confidence_level=0.5)).json()["cache_hit"] is False
    geo = post(cached_server, body_of(capture, include_geojson=True)).json()
    assert geo["cache_hit"] is False and geo["ellipse"]["geojson"] is not None
    assert post(cached_server, body_of(capture, include_geojson=True)).json()["cache_hit"] is True
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(f"{prefix}:*"))
    assert len(keys) == 3
    for key in keys:
        assert 0 < client.ttl(key) <= 120


def test_bypass_and_batch_hits(cached_server: Server, prefix: str) -> None:
    captures = generate_scenes(3, seed=902, spec=FeatureSpec()).iq
    client = redis.Redis.from_url(SHARED_REDIS)
    before = len(list(client.scan_iter(f"{prefix}:*")))
    bypass0 = metric(cached_server, "rfloc_cache_bypass_total")
    r = post(cached_server, body_of(captures[0], cache_enabled=False)).json()
    assert r["cache_hit"] is False
    assert len(list(client.scan_iter(f"{prefix}:*"))) == before  # nothing written
    assert metric(cached_server, "rfloc_cache_bypass_total") == bypass0 + 1
    post(cached_server, body_of(captures[1]))  # cache one of the three
    batch = post(
        cached_server,
        {"iq_b64_samples": [body_of(c)["iq_b64"] for c in captures]},
        path="/predict_batch",
    ).json()
    assert [p["cache_hit"] for p in batch["predictions"]] == [False, True, False]
    again = post(
        cached_server,
        {"iq_b64_samples": [body_of(c)["iq_b64"] for c in captures]},
        path="/predict_batch",
    ).json()
    assert [p["cache_hit"] for p in again["predictions"]] == [True, True, True]
    assert [p["position"] for p in again["predictions"]] == [
        p["position"] for p in batch["predictions"]
    ]
    off = post(
        cached_server,
        {"iq_b64_samples": [body_of(c)["iq_b64"] for c in captures], "cache_enabled": False},
        path="/predict_batch",
    ).json()
    assert [p["cache_hit"] for p in off["predictions"]] == [False, False, False]


def test_a_new_model_never_gets_old_answers(
    cached_server: Server, home: Path, prefix: str, tmp_path: Path
) -> None:
    capture = generate_scenes(1, seed=903, spec=FeatureSpec()).iq[0]
    post(cached_server, body_of(capture))
    assert post(cached_server, body_of(capture)).json()["cache_hit"] is True
    # a second model (different bytes) registered and imported next to the first
    settings = make_settings(tmp_path / "registry")
    settings.local_registry_dir.mkdir()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    register_onnx_model(
        client,
        str(client.create_experiment("toy", artifact_location=(tmp_path / "art").as_uri())),
        "localization_model",
        toy_model(),
        FeatureSpec(),
        alias=None,
    )
    # its own BENTOML_HOME: servers sharing one also share (and reset) the Prometheus
    # multiprocess folder, which would blank the first server's metrics
    other_home = tmp_path / "home2"
    shutil.copytree(home / "models", other_home / "models")
    tag = import_demo_model(other_home, settings.local_registry_dir)
    other = start_server(
        other_home,
        tmp_path / "other.log",
        env={
            "REDIS_URL": SHARED_REDIS,
            "CACHE_KEY_PREFIX": prefix,
            "BENTO_MODEL_TAG": tag,
            "SERVICE_WORKERS": "1",
        },
    )
    try:
        answer = post(other, body_of(capture)).json()
        assert answer["cache_hit"] is False
        assert (
            answer["model_version"] != post(cached_server, body_of(capture)).json()["model_version"]
        )
        assert post(other, body_of(capture)).json()["cache_hit"] is True
    finally:
        other.stop()


def test_custom_metrics_with_two_workers(cached_server: Server) -> None:
    """Counters are aggregated over both workers: a burst's predictions all add up."""
    body = body_of(generate_scenes(1, seed=904, spec=FeatureSpec()).iq[0], cache_enabled=False)
    assert post(cached_server, {"iq_b64": "###"}).status_code == 400  # an error to count
    workers: set[str] = set()
    for _ in range(3):  # until both workers have served part of a burst
        before = metric(cached_server, "rfloc_predictions_total", 'endpoint="predict"')
        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(lambda _: post(cached_server, body).status_code, range(48)))
        assert codes == [200] * 48
        after = metric(cached_server, "rfloc_predictions_total", 'endpoint="predict"')
        assert after == before + 48
        text = httpx.get(f"{cached_server.url}/metrics", timeout=10).text
        workers = {
            line.split('pid="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("rfloc_worker_predictions{") and float(line.rsplit(" ", 1)[1]) > 0
        }
        if len(workers) == 2:
            break
    assert len(workers) == 2
    for name in (
        "rfloc_cache_hits_total",
        "rfloc_cache_misses_total",
        "rfloc_cache_bypass_total",
        "rfloc_model_inferences_total",
        'rfloc_stage_seconds_count{stage="decode"}',
        'rfloc_stage_seconds_count{stage="preprocess"}',
        'rfloc_stage_seconds_count{stage="model"}',
        "rfloc_model_info{",
        "rfloc_request_seconds_bucket",
        'rfloc_errors_total{type="invalid_input"}',
    ):
        assert name in text, name
    assert 'sha256="' in text and 'version="1"' in text
    info = httpx.get(f"{cached_server.url}/model/info", timeout=10).json()
    hits = metric(cached_server, "rfloc_cache_hits_total")
    misses = metric(cached_server, "rfloc_cache_misses_total")
    assert info["cache_hit_rate"] == pytest.approx(hits / (hits + misses))
    assert info["inference_count"] == metric(cached_server, "rfloc_model_inferences_total")
    assert info["avg_latency_ms"] > 0


def test_redis_killed_mid_test_fails_open(home: Path, tmp_path: Path) -> None:
    require_redis_server()
    port = free_port()
    private = PrivateRedis(port, tmp_path)
    private.start()
    # its own BENTOML_HOME: one shared with the module's server would reset its metrics
    own_home = tmp_path / "home-failopen"
    shutil.copytree(home / "models", own_home / "models")
    server = start_server(
        own_home,
        tmp_path / "failopen.log",
        env={
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "REDIS_TIMEOUT_MS": "100",
            "SERVICE_WORKERS": "1",
        },
    )
    capture = generate_scenes(1, seed=905, spec=FeatureSpec()).iq[0]
    try:
        assert post(server, body_of(capture)).json()["cache_hit"] is False
        assert post(server, body_of(capture)).json()["cache_hit"] is True

        for fault in ("stop", "kill"):
            errors0 = metric(server, "rfloc_cache_errors_total")
            if fault == "stop":
                private.signal(signal.SIGSTOP)  # slow: accepts nothing, answers nothing
            else:
                private.signal(signal.SIGCONT)
                private.kill()
            phase_started = time.perf_counter()
            for _ in range(6):
                started = time.perf_counter()
                r = post(server, body_of(capture), timeout=10)
                assert r.status_code == 200 and r.json()["cache_hit"] is False
                # one 100 ms timeout at most, then the breaker steps aside: a request waits
                # for Redis once, never for a client's default seconds
                assert time.perf_counter() - started < 0.5
                time.sleep(0.3)
            errors = metric(server, "rfloc_cache_errors_total") - errors0
            # the README's breaker: one timeout per worker per cool-down (1 s), not per request
            assert 0 < errors <= math.ceil(time.perf_counter() - phase_started) + 1, errors
            assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200

        private.start()  # an empty Redis on the same port: a miss, then hits resume
        time.sleep(1.2)  # the breaker's cool-down
        assert post(server, body_of(capture)).json()["cache_hit"] is False
        assert post(server, body_of(capture)).json()["cache_hit"] is True

        # garbage under our key: served uncached and counted, then overwritten
        client = redis.Redis(port=port)
        for key in client.scan_iter("*"):
            client.set(key, b"\x00garbage")
        json0 = metric(server, "rfloc_cache_rejected_total", 'reason="json"')
        assert post(server, body_of(capture)).json()["cache_hit"] is False
        assert wait_metric(server, "rfloc_cache_rejected_total", 'reason="json"', json0 + 1)
        assert post(server, body_of(capture)).json()["cache_hit"] is True
        log = server.log()
        assert log.count("Redis cache") <= 4, "failures are logged sparingly"
    finally:
        server.stop()
        private.kill()


# --- forged values at the service's real keys (a Redis others can write to) ------------------


def genuine_entry(server: Server, prefix: str, capture: np.ndarray) -> tuple[dict, str, bytes]:
    """A fix answered uncached, and the key and value the service stored for it (found by SCAN,
    and checked against the key computed the way the service computes it)."""
    client = redis.Redis.from_url(SHARED_REDIS)
    before = set(client.scan_iter(f"{prefix}:*"))
    first = post(server, body_of(capture)).json()
    assert first["cache_hit"] is False and first["quality"] == "fix", first
    (key,) = set(client.scan_iter(f"{prefix}:*")) - before
    sha256 = httpx.get(f"{server.url}/model/info", timeout=10).json()["sha256"]
    canonical = np.ascontiguousarray(capture, dtype=np.complex64)
    assert key.decode() == cache_key(prefix, sha256, canonical.data, 0.95, False)
    value = client.get(key)
    assert value is not None
    return first, key.decode(), value


def _edit(path: str, new: object) -> Callable[[dict], None]:
    def change(value: dict) -> None:
        *parents, last = path.split(".")
        for name in parents:
            value = value[name]
        value[last] = new

    return change


def _new_york(value: dict) -> None:
    value["position"] = {"latitude": 40.7128, "longitude": -74.006}


#: issue 28: (name, change to the genuine value or raw bytes, reason counted)
FORGED: list[tuple[str, Callable[[dict], None] | bytes, str]] = [
    ("nested 990 deep", b"[" * 990 + b"]" * 990, "json"),
    ("garbage", b"\x00garbage", "json"),
    ("New York as a fix", _new_york, "bounds"),
    ("latitude 999", _edit("position.latitude", 999.0), "bounds"),
    ("sigma_x -5", _edit("uncertainty.sigma_x", -5.0), "bounds"),
    ("NaN latitude", _edit("position.latitude", math.nan), "bounds"),
    ("confidence 7.5", _edit("confidence", 7.5), "bounds"),
    ("another model_version", _edit("model_version", "9+0123456789ab"), "model"),
    ("unrequested GeoJSON", _edit("ellipse.geojson", "GEOJSON"), "options"),
    ("50 MB of warnings", _edit("warnings", ["x" * 50_000_000]), "size"),
]


@pytest.fixture(scope="module")
def genuine(cached_server: Server, prefix: str) -> tuple[dict, str, bytes, dict]:
    capture = generate_scenes(1, seed=906, spec=FeatureSpec()).iq[0]
    first, key, value = genuine_entry(cached_server, prefix, capture)
    drawn = post(cached_server, body_of(capture, include_geojson=True)).json()
    return first, key, value, drawn["ellipse"]["geojson"]


@pytest.mark.parametrize(("change", "reason"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_a_forged_value_at_a_real_key_is_a_counted_miss_and_overwritten(
    cached_server: Server,
    genuine: tuple[dict, str, bytes, dict],
    change: Callable[[dict], None] | bytes,
    reason: str,
) -> None:
    first, key, value, drawn = genuine
    capture = generate_scenes(1, seed=906, spec=FeatureSpec()).iq[0]
    if isinstance(change, bytes):
        forged = value[:-1] + b',"x":' + change + b"}" if change.startswith(b"[") else change
    else:
        edited = json.loads(value)
        change(edited)
        forged = json.dumps(edited, separators=(",", ":")).replace('"GEOJSON"', json.dumps(drawn))
        forged = forged.encode()
    client = redis.Redis.from_url(SHARED_REDIS)
    client.set(key, forged, ex=120)
    before = metric(cached_server, "rfloc_cache_rejected_total", f'reason="{reason}"')
    answer = post(cached_server, body_of(capture, session_id="s"))
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["cache_hit"] is False and strip(answer.json()) == strip(first)
    assert json.loads(client.get(key) or b"") == json.loads(value)  # overwritten
    assert wait_metric(
        cached_server, "rfloc_cache_rejected_total", f'reason="{reason}"', before + 1
    )
    if reason == "json":  # the batch route reads the same entry
        client.set(key, forged, ex=120)
        batch = post(
            cached_server, {"iq_b64_samples": [body_of(capture)["iq_b64"]]}, "/predict_batch"
        )
        assert batch.status_code == 200, batch.text[:300]
        (item,) = batch.json()["predictions"]
        assert item["cache_hit"] is False and strip(item) == strip(first)
    assert post(cached_server, body_of(capture)).json()["cache_hit"] is True


def test_without_a_signing_key_a_copied_answer_is_served(
    cached_server: Server, prefix: str
) -> None:
    """The trust model (docs/api.md §6): another capture's genuine answer under this capture's
    key passes every check. A plausible but false answer: only CACHE_SIGNING_KEY prevents it."""
    one, other = generate_scenes(2, seed=907, spec=FeatureSpec()).iq
    _, key, _ = genuine_entry(cached_server, prefix, one)
    other_answer, _, other_value = genuine_entry(cached_server, prefix, other)
    redis.Redis.from_url(SHARED_REDIS).set(key, other_value, ex=120)
    served = post(cached_server, body_of(one)).json()
    assert served["cache_hit"] is True and served["position"] == other_answer["position"]


def test_with_a_signing_key_only_signed_values_are_served(
    home: Path, prefix: str, tmp_path: Path
) -> None:
    secret = "test-signing-key-" + uuid.uuid4().hex
    signed_prefix = f"{prefix}s"
    # its own BENTOML_HOME: one shared with the module's server would reset its metrics
    own_home = tmp_path / "home-signed"
    shutil.copytree(home / "models", own_home / "models")
    server = start_server(
        own_home,
        tmp_path / "signed.log",
        env={
            "REDIS_URL": SHARED_REDIS,
            "CACHE_KEY_PREFIX": signed_prefix,
            "CACHE_SIGNING_KEY": secret,
            "SERVICE_WORKERS": "1",
        },
    )
    client = redis.Redis.from_url(SHARED_REDIS)
    try:
        one, other = generate_scenes(2, seed=908, spec=FeatureSpec()).iq
        first, key, value = genuine_entry(server, signed_prefix, one)
        _, _, other_value = genuine_entry(server, signed_prefix, other)
        mac, payload = value[:MAC_BYTES], value[MAC_BYTES:]
        message = len(key).to_bytes(4, "big") + key.encode() + payload
        assert mac == hmac.new(secret.encode(), message, hashlib.sha256).digest()
        assert json.loads(payload)["position"] == first["position"]
        assert post(server, body_of(one)).json()["cache_hit"] is True

        near = json.loads(payload)
        near["position"]["latitude"] += 0.001  # plausible: passes every check but the MAC
        forged = {
            "another capture's signed answer": other_value,
            "the genuine answer unsigned": payload,
            "a plausible answer unsigned": json.dumps(near, separators=(",", ":")).encode(),
            "signed with another key": hmac.new(b"k" * 16, message, hashlib.sha256).digest()
            + payload,
        }
        for name, raw in forged.items():
            client.set(key, raw, ex=120)
            before = metric(server, "rfloc_cache_rejected_total", 'reason="signature"')
            answer = post(server, body_of(one))
            assert answer.status_code == 200, name
            assert answer.json()["cache_hit"] is False, name
            assert strip(answer.json()) == strip(first), name
            assert client.get(key) == value, name  # overwritten by the signed answer
            assert wait_metric(
                server, "rfloc_cache_rejected_total", 'reason="signature"', before + 1
            ), name
    finally:
        server.stop()
        for stale in client.scan_iter(f"{signed_prefix}:*"):
            client.delete(stale)
