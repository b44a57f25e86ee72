"""Cached values are served only when they are answers this service could have written under
their key (utils/api/cached_answers.py): every forged value of issue 28 through the real
pipeline on a toy ONNX model and the in-process cache, and the optional MAC."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from prometheus_client import REGISTRY

from tests.support.model_factory import toy_model
from utils.api.cached_answers import CachedAnswers
from utils.api.decoding import encode_capture
from utils.api.pipeline import Pipeline, infer_batch
from utils.api.schemas import PredictBatchRequest, PredictionResponse, PredictRequest
from utils.dsp.synthetic import generate_scenes
from utils.model.runtime import ModelRuntime
from utils.model.served import ServedModel, StoredModel
from utils.serving import metrics
from utils.serving.cache import MAC_BYTES, MAX_VALUE_BYTES, LRUCache, cache_key

PREFIX = "t"
SECRET = b"0123456789abcdef-test-secret"
PER_REQUEST = ("inference_time_ms", "timestamp", "cache_hit", "session_id")


def runtime_for(folder: Path, model: onnx.ModelProto) -> ModelRuntime:
    onnx.save(model, folder / "model.onnx")
    return ModelRuntime(
        folder, {}, intra_threads=1, inter_threads=1, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    return runtime_for(tmp_path_factory.mktemp("toy"), toy_model(confidence=0.7))


@pytest.fixture(scope="module")
def scenes(runtime: ModelRuntime) -> list[np.ndarray]:
    return list(generate_scenes(2, seed=21, spec=runtime.spec).iq)


def served_model(runtime: ModelRuntime, version: str = "1") -> ServedModel:
    stored = StoredModel(f"toy:{version}", "toy", version, Path("."), {}, "2026-01-01T00:00:00")
    return ServedModel(runtime, stored, runtime.version_label(version), "2026-01-01T00:00:00")


async def dispatch(
    model: ServedModel, captures: list[np.ndarray], _verbatim: str | None, _departure: Any = None
) -> list[dict[str, Any]]:
    return infer_batch(model.runtime, captures)


def pipeline(runtime: ModelRuntime, signing_key: bytes | None = None) -> Pipeline:
    return Pipeline(
        served_model(runtime),
        LRUCache(100, 60),
        dispatch,
        cache_prefix=PREFIX,
        max_samples=65_536,
        max_batch_items=10,
        signing_key=signing_key,
    )


def key_of(runtime: ModelRuntime, scene: np.ndarray, level: float = 0.95, geo: bool = False) -> str:
    """The key the pipeline uses: computed as it does, from the canonical capture bytes."""
    canonical = np.ascontiguousarray(scene, dtype=np.complex64)
    return cache_key(PREFIX, runtime.sha256, canonical.data, level, geo)


def ask(pipe: Pipeline, scene: np.ndarray, **options: Any) -> PredictionResponse:
    req = PredictRequest(iq_b64=encode_capture(scene), **options)
    return asyncio.run(pipe.predict_one(req, 0.0))


def stored(pipe: Pipeline, key: str) -> bytes | None:
    return asyncio.run(pipe.cache.get_many([key]))[0]


def put(pipe: Pipeline, key: str, value: bytes) -> None:
    asyncio.run(pipe.cache.set_many([(key, value)]))


def answer(response: PredictionResponse) -> dict[str, Any]:
    return response.model_dump(mode="json", exclude=set(PER_REQUEST))


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("rfloc_cache_rejected_total", {"reason": reason}) or 0.0


def edited(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def forge(genuine: bytes) -> bytes:
        value = json.loads(genuine)
        change(value)
        return json.dumps(value, separators=(",", ":")).encode()

    return forge


def _set(path: str, new: Any) -> Callable[[dict[str, Any]], None]:
    def change(value: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for name in parents:
            value = value[name]
        value[last] = new

    return change


def _new_york(value: dict[str, Any]) -> None:
    value["position"] = {"latitude": 40.7128, "longitude": -74.006}


def _wider(value: dict[str, Any]) -> None:
    value["ellipse"]["semi_major_m"] *= 2
    value["ellipse"]["area_m2"] *= 2


#: (name, forge(genuine value) -> stored bytes, reason counted)
FORGED: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("nested 990 deep", lambda g: g[:-1] + b',"x":' + b"[" * 990 + b"]" * 990 + b"}", "json"),
    ("garbage", lambda g: b"\x00garbage", "json"),
    ("New York as a fix", edited(_new_york), "bounds"),
    ("latitude 999", edited(_set("position.latitude", 999.0)), "bounds"),
    ("sigma_x -5", edited(_set("uncertainty.sigma_x", -5.0)), "bounds"),
    ("NaN latitude", edited(_set("position.latitude", math.nan)), "bounds"),
    ("infinite sigma", edited(_set("uncertainty.sigma_y", math.inf)), "bounds"),
    ("confidence 7.5", edited(_set("confidence", 7.5)), "bounds"),
    ("confidence null", edited(_set("confidence", None)), "bounds"),
    ("rho 1", edited(_set("uncertainty.rho", 1.0)), "bounds"),
    ("ellipse not the covariance's", edited(_wider), "bounds"),
    ("a no_fix", edited(_set("quality", "no_fix")), "bounds"),
    ("ten warnings", edited(_set("warnings", ["w"] * 10)), "bounds"),
    ("another model_version", edited(_set("model_version", "7+0123456789ab")), "model"),
    ("another confidence_level", edited(_set("ellipse.confidence_level", 0.5)), "options"),
    ("unrequested GeoJSON", edited(_set("ellipse.geojson", {"type": "Feature"})), "options"),
    ("50 MB of warnings", edited(_set("warnings", ["x" * 50_000_000])), "size"),
    ("a number as a string", edited(_set("position.latitude", "45.1")), "schema"),
    ("an unknown field", edited(_set("extra", 1)), "schema"),
    ("an unknown nested field", edited(_set("position.altitude", 3.0)), "schema"),
    ("a field missing", lambda g: g.replace(b'"quality":"fix",', b""), "schema"),
]


@pytest.mark.parametrize(("forge", "reason"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
def test_a_forged_value_is_a_counted_miss_and_overwritten(
    runtime: ModelRuntime,
    scenes: list[np.ndarray],
    forge: Callable[[bytes], bytes],
    reason: str,
) -> None:
    pipe = pipeline(runtime)
    first = ask(pipe, scenes[0])
    key = key_of(runtime, scenes[0])
    genuine = stored(pipe, key)
    assert first.quality == "fix" and genuine is not None
    assert ask(pipe, scenes[0]).cache_hit  # the genuine value is served
    put(pipe, key, forge(genuine))
    before = rejected(reason)
    again = ask(pipe, scenes[0], session_id="s")
    assert not again.cache_hit and answer(again) == answer(first)
    assert rejected(reason) == before + 1
    assert json.loads(stored(pipe, key) or b"") == json.loads(genuine)  # overwritten
    assert ask(pipe, scenes[0]).cache_hit


def test_a_deep_value_in_a_batch_is_a_miss(runtime: ModelRuntime, scenes: list[np.ndarray]) -> None:
    pipe = pipeline(runtime)
    key = key_of(runtime, scenes[1])
    ask(pipe, scenes[1])
    put(pipe, key, b'{"position":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    req = PredictBatchRequest(iq_b64_samples=[encode_capture(s) for s in scenes])
    answers = asyncio.run(pipe.predict_many(req, 0.0))
    assert [a.cache_hit for a in answers] == [False, False]
    assert answers[1].quality == "fix"


def test_geojson_is_served_only_as_drawn(runtime: ModelRuntime, scenes: list[np.ndarray]) -> None:
    pipe = pipeline(runtime)
    first = ask(pipe, scenes[0], include_geojson=True)
    key = key_of(runtime, scenes[0], geo=True)
    genuine = stored(pipe, key) or b""
    assert first.ellipse.geojson is not None
    assert len(genuine) * 4 < MAX_VALUE_BYTES  # the cap leaves room for the largest answer
    assert ask(pipe, scenes[0], include_geojson=True).cache_hit

    def shifted(value: dict[str, Any]) -> None:
        ring = value["ellipse"]["geojson"]["geometry"]["coordinates"][0]
        ring[3] = [ring[3][0] + 0.5, ring[3][1]]

    for forge in (edited(shifted), edited(_set("ellipse.geojson", None))):
        before = rejected("bounds")
        put(pipe, key, forge(genuine))
        again = ask(pipe, scenes[0], include_geojson=True)
        assert not again.cache_hit and answer(again) == answer(first)
        assert rejected("bounds") == before + 1


def test_a_model_without_confidence_refuses_one(tmp_path: Path, scenes: list[np.ndarray]) -> None:
    plain = runtime_for(tmp_path, toy_model())
    pipe = pipeline(plain)
    first = ask(pipe, scenes[0])
    key = key_of(plain, scenes[0])
    assert first.confidence is None
    put(pipe, key, edited(_set("confidence", 0.5))(stored(pipe, key) or b""))
    before = rejected("bounds")
    assert not ask(pipe, scenes[0]).cache_hit and rejected("bounds") == before + 1


def test_without_a_key_a_plausible_copy_is_served(
    runtime: ModelRuntime, scenes: list[np.ndarray]
) -> None:
    """The documented limit of validation: another capture's genuine answer, copied under this
    capture's key, passes every check. Only a signing key makes it a miss."""
    for signing_key, served_as_hit in ((None, True), (SECRET, False)):
        pipe = pipeline(runtime, signing_key)
        other = ask(pipe, scenes[1])
        ask(pipe, scenes[0])
        key, other_key = key_of(runtime, scenes[0]), key_of(runtime, scenes[1])
        put(pipe, key, stored(pipe, other_key) or b"")
        before = rejected("signature")
        again = ask(pipe, scenes[0])
        assert again.cache_hit is served_as_hit
        assert (again.position == other.position) is served_as_hit
        assert rejected("signature") == before + (0 if served_as_hit else 1)


def test_signed_values(runtime: ModelRuntime, scenes: list[np.ndarray]) -> None:
    pipe = pipeline(runtime, SECRET)
    first = ask(pipe, scenes[0])
    key = key_of(runtime, scenes[0])
    value = stored(pipe, key) or b""
    mac, payload = value[:MAC_BYTES], value[MAC_BYTES:]
    # MAC || payload, the MAC an HMAC-SHA256 over the length-prefixed key and the payload
    message = len(key).to_bytes(4, "big") + key.encode() + payload
    assert mac == hmac.new(SECRET, message, hashlib.sha256).digest()
    assert json.loads(payload)["position"] == first.model_dump(mode="json")["position"]
    assert ask(pipe, scenes[0]).cache_hit

    tampered = payload.replace(b'"latitude":', b'"latitude":1')
    unsigned = pipeline(runtime)
    forged = {
        "unsigned genuine": payload,
        "payload edited": mac + tampered,
        "signed with another key": hmac.new(b"x" * 16, message, hashlib.sha256).digest() + payload,
        "too short": mac[:10],
        "signed by a keyless writer": unsigned.answers.seal(key, first),
    }
    for name, raw in forged.items():
        before = rejected("signature")
        put(pipe, key, raw)
        again = ask(pipe, scenes[0])
        assert not again.cache_hit and answer(again) == answer(first), name
        assert rejected("signature") == before + 1, name
        assert stored(pipe, key) == value, name  # overwritten by the signed answer

    # a keyless worker reading a signed value: a miss, not a 500
    put(unsigned, key, value)
    before = rejected("json")
    assert not ask(unsigned, scenes[0]).cache_hit
    assert rejected("json") == before + 1


def test_every_reason_is_exported_from_the_start() -> None:
    for reason in metrics.CACHE_REJECT_REASONS:
        sample = REGISTRY.get_sample_value("rfloc_cache_rejected_total", {"reason": reason})
        assert sample is not None, reason


def test_refusals_are_logged_once_in_a_while(
    runtime: ModelRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    answers = CachedAnswers(log_every_s=3600)
    served = served_model(runtime)
    req = PredictRequest(iq_b64="AAAA")
    with caplog.at_level(logging.WARNING, logger="utils.api.cached_answers"):
        for _ in range(5):
            assert answers.open("t:k", b'{"secret-looking":"value"}', served, req) is None
    assert len(caplog.records) == 1
    assert "t:k" in caplog.text and "schema" in caplog.text and "secret-looking" not in caplog.text
