"""The service over real HTTP: a `bentoml serve` subprocess on the imported demo model."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import numpy as np
import psutil
import pytest

from tests.support.serving import Server, import_demo_model, start_server
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.geo.ellipse import confidence_scale, covariance_ellipse, local_offsets_m

MAX_REQUEST_BYTES = 8_000_000


@pytest.fixture(scope="module")
def server(demo_registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings, _ = demo_registry
    home = tmp_path_factory.mktemp("bentoml-home")
    import_demo_model(home, settings.local_registry_dir)
    srv = start_server(
        home,
        home / "serve.log",
        env={
            "SERVICE_WORKERS": "2",
            "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            "BATCH_QUEUE_DELAY_MS": "auto",  # measured per model: 0 for the demo (see below)
        },
    )
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def spec(server: Server) -> FeatureSpec:
    info = httpx.get(f"{server.url}/model/info", timeout=10).json()
    return FeatureSpec.model_validate(info["feature_spec"])


b64 = encode_capture  # the wire format of iq_b64: base64 of little-endian complex64


def pairs(capture: np.ndarray) -> list:
    return np.stack([capture.real, capture.imag], axis=-1).tolist()


def post(server: Server, path: str, body: object, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}{path}",
        content=content,
        timeout=timeout,
        headers={"content-type": "application/json"},
    )


def documented_metrics() -> set[str]:
    """Every rfloc_* family docs/api.md and README name."""
    from utils.config import PROJECT_ROOT

    text = " ".join((PROJECT_ROOT / f).read_text() for f in ("docs/api.md", "README.md"))
    return set(re.findall(r"\brfloc_[a-z_]+[a-z]", text))


def test_a_fresh_server_lists_every_documented_metric_at_zero(server: Server) -> None:
    """Before any event, /metrics lists every documented rfloc_* family, and a labelled one
    every known label value at 0 (alerts see 0, not "no data"). First in the module: nothing
    has been predicted, reloaded or cached yet."""
    from utils.serving.metrics import KNOWN_LABELS

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    families = set(re.findall(r"^# HELP (rfloc_\w+) ", text, re.M))
    documented = documented_metrics()
    assert {"rfloc_model_reloads_total", "rfloc_cache_errors_total"} <= documented
    assert not {
        name for name in documented if name not in families and f"{name}_total" not in families
    }, documented - families
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rfloc_")
    }
    for metric, values in KNOWN_LABELS.items():
        name = metric._name  # the family name as exposed
        (label,) = metric._labelnames
        for value in values:
            series = [k for k in samples if k.startswith(name) and f'{label}="{value}"' in k]
            assert series, f"{name}{{{label}={value!r}}} missing"
    for result in ("success", "unchanged", "failed"):
        assert samples[f'rfloc_model_reloads_total{{result="{result}"}}'] == 0.0
    for op in ("get", "set"):
        assert samples[f'rfloc_cache_errors_total{{op="{op}"}}'] == 0.0


def test_predict_with_both_encodings(server: Server, spec: FeatureSpec) -> None:
    capture = generate_scenes(1, seed=321, spec=spec).iq[0]
    parsed = 'rfloc_iq_json_fast_path_total{result="parsed"}'
    before = _counter(server, parsed)
    by_pairs = post(server, "/predict", {"iq_data": pairs(capture), "session_id": "op-7"})
    # computed, not a cache hit on the iq_data answer: both decoders reach the same samples
    by_b64 = post(server, "/predict", {"iq_b64": b64(capture), "cache_enabled": False})
    assert by_pairs.status_code == 200 and by_b64.status_code == 200, by_pairs.text
    assert _counter(server, parsed) == before + 1  # iq_data took the msgspec fast path
    a, b = by_pairs.json(), by_b64.json()
    assert a["position"] == b["position"] and a["uncertainty"] == b["uncertainty"]
    assert a["session_id"] == "op-7" and b["session_id"] is None
    assert a["confidence"] is None  # the demo model has no confidence output
    assert a["cache_hit"] is False and a["model_version"].startswith("1+")
    u, e = a["uncertainty"], a["ellipse"]
    assert u["confidence_interval"] == pytest.approx(0.3935, abs=1e-4)
    assert u["theta"] == e["orientation_deg"] and 0 <= u["theta"] < 180
    assert e["confidence_level"] == 0.95 and e["geojson"] is None
    ref = covariance_ellipse(u["sigma_x"], u["sigma_y"], u["rho"], 0.95)
    assert e["semi_major_m"] == pytest.approx(ref.semi_major_m)
    assert a["inference_time_ms"] > 0 and a["timestamp"].endswith("Z")


def test_geojson_and_confidence_level(server: Server, spec: FeatureSpec) -> None:
    capture = generate_scenes(1, seed=322, spec=spec).iq[0]
    r = post(
        server,
        "/predict",
        {"iq_b64": b64(capture), "include_geojson": True, "confidence_level": 0.5},
    ).json()
    assert r["ellipse"]["confidence_level"] == 0.5
    assert r["ellipse"]["semi_major_m"] == pytest.approx(
        covariance_ellipse(
            r["uncertainty"]["sigma_x"], r["uncertainty"]["sigma_y"], r["uncertainty"]["rho"], 0.5
        ).semi_major_m
    )
    feature = r["ellipse"]["geojson"]
    assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 65


def same_answer(got: dict, want: dict, where: str) -> None:
    """The same prediction to float tolerance: batch composition changes float32 rounding."""
    assert got["quality"] == want["quality"], where
    for key in ("latitude", "longitude"):
        assert got["position"][key] == pytest.approx(want["position"][key], rel=1e-6, abs=1e-5), (
            where,
            key,
        )
    for key in ("sigma_x", "sigma_y", "rho", "theta"):
        assert got["uncertainty"][key] == pytest.approx(
            want["uncertainty"][key], rel=1e-4, abs=1e-4
        ), (where, key)
    for key in ("semi_major_m", "semi_minor_m"):
        assert got["ellipse"][key] == pytest.approx(want["ellipse"][key], rel=1e-4), (where, key)


def distinct_positions(answers: list[dict]) -> None:
    """Pairwise far apart (far beyond `same_answer`'s tolerance), so matching proves order."""
    for i, a in enumerate(answers):
        for j, b in enumerate(answers[:i]):
            gap = max(abs(a["position"][k] - b["position"][k]) for k in ("latitude", "longitude"))
            assert gap > 1e-3, f"samples {j} and {i} have the same answer: order unprovable"


def test_batch_equals_singles_in_order(server: Server, spec: FeatureSpec) -> None:
    """Uncached throughout, distinct samples: each batch item is the single answer of its own
    sample, so a reordered (or cache-crossed) batch fails."""
    captures = generate_scenes(6, seed=400, spec=spec).iq
    singles = []
    for capture in captures:
        r = post(server, "/predict", {"iq_b64": b64(capture), "cache_enabled": False})
        assert r.status_code == 200, r.text
        singles.append(r.json())
    assert [s["cache_hit"] for s in singles] == [False] * 6
    distinct_positions(singles)
    batch = post(
        server,
        "/predict_batch",
        {"iq_samples": [pairs(c) for c in captures[:3]], "cache_enabled": False},
    )
    assert batch.status_code == 200, batch.text
    pairs_batch = batch.json()["predictions"]
    b64_batch = post(
        server,
        "/predict_batch",
        {"iq_b64_samples": [b64(c) for c in captures], "session_id": "s", "cache_enabled": False},
    ).json()
    assert len(pairs_batch) == 3 and len(b64_batch["predictions"]) == 6
    assert b64_batch["samples_per_second"] > 0
    for i, single in enumerate(singles):
        got = b64_batch["predictions"][i]
        assert got["session_id"] == "s" and got["cache_hit"] is False
        same_answer(got, single, f"iq_b64_samples[{i}]")
        if i < 3:
            assert pairs_batch[i]["cache_hit"] is False
            same_answer(pairs_batch[i], single, f"iq_samples[{i}]")


def test_predictions_are_calibrated_on_known_scenes(
    server: Server, spec: FeatureSpec, report: list[str]
) -> None:
    scenes = generate_scenes(600, seed=2024, spec=spec)
    predictions = []
    for start in range(0, 600, 12):  # 12 x 338 kB stays under the test's 8 MB body limit
        r = post(
            server,
            "/predict_batch",
            {"iq_b64_samples": [b64(c) for c in scenes.iq[start : start + 12]]},
        )
        assert r.status_code == 200, r.text
        predictions += r.json()["predictions"]
    inside = []
    errors = []
    for p, lat, lon in zip(predictions, scenes.tx_latitude, scenes.tx_longitude, strict=True):
        east, north = local_offsets_m(
            lat, lon, p["position"]["latitude"], p["position"]["longitude"]
        )
        e = p["ellipse"]
        phi = math.radians(e["orientation_deg"])
        along = east * math.sin(phi) + north * math.cos(phi)
        across = -east * math.cos(phi) + north * math.sin(phi)
        inside.append((along / e["semi_major_m"]) ** 2 + (across / e["semi_minor_m"]) ** 2 <= 1)
        errors.append(math.hypot(east, north))
    share = float(np.mean(inside))
    report.append(
        f"service: {len(inside)} known scenes, 95% ellipses hold {share:.3f}, "
        f"median error {np.median(errors) / 1000:.1f} km"
    )
    assert 0.90 <= share <= 0.98
    assert confidence_scale(0.95) == pytest.approx(2.4477, abs=1e-4)


def _batch_sizes(server: Server, prefix: str) -> tuple[float, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if prefix.startswith("bentoml") and 'method_name="infer"' not in line:
            continue
        if line.startswith(f"{prefix}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        if line.startswith(f"{prefix}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def _burst(server: Server, spec: FeatureSpec, metric: str) -> tuple[float, float]:
    bodies = [
        json.dumps({"iq_b64": b64(c), "cache_enabled": False}).encode()
        for c in generate_scenes(16, seed=77, spec=spec).iq
    ]
    total0, count0 = _batch_sizes(server, metric)
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(
            pool.map(lambda i: post(server, "/predict", bodies[i % 16]).status_code, range(192))
        )
    assert statuses == [200] * 192
    total1, count1 = _batch_sizes(server, metric)
    return count1 - count0, total1 - total0


def test_concurrent_requests_are_batched(
    server: Server, spec: FeatureSpec, report: list[str]
) -> None:
    batches, items = _burst(server, spec, "rfloc_batch_size")
    report.append(
        f"service (greedy dispatch): 192 concurrent /predict calls ran as "
        f"{batches:.0f} batches (mean size {items / batches:.1f})"
    )
    assert items >= 192 and batches < items, "some batch held more than one request"


def _counter(server: Server, name: str) -> float:
    """A counter summed over its label sets (and workers) on /metrics."""
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        head = line.split(" ", 1)[0]
        if head == name or head.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_proxy_dispatch_batches_through_the_batchable_api(
    demo_registry, server: Server, spec: FeatureSpec, tmp_path: Path, report: list[str]
) -> None:
    """BATCH_DISPATCH=proxy: the same answers, batched by BentoML's batchable `infer` API.

    Every request here is uncached, so each one reaches `infer` through the proxy: `iq_b64`
    verbatim, `iq_data` and both `/predict_batch` encodings re-encoded by the proxy."""
    settings, _ = demo_registry
    home = tmp_path / "home"
    import_demo_model(home, settings.local_registry_dir)
    proxy = start_server(
        home, tmp_path / "proxy.log", env={"SERVICE_WORKERS": "1", "BATCH_DISPATCH": "proxy"}
    )
    adaptive = "bentoml_service_adaptive_batch_size"
    try:
        batches, items = _burst(proxy, spec, adaptive)
        report.append(
            f"service (proxy dispatch): 192 concurrent /predict calls ran as "
            f"{batches:.0f} batches (mean size {items / batches:.1f})"
        )
        assert items >= 192 and batches < items

        def through_proxy(path: str, body: dict, samples: int) -> dict:
            """One uncached request, and proof that it reached the batchable `infer` API."""
            calls0, _ = _batch_sizes(proxy, adaptive)
            inferred0 = _counter(proxy, "rfloc_model_inferences_total")
            r = post(proxy, path, {**body, "cache_enabled": False})
            assert r.status_code == 200, r.text
            calls1, _ = _batch_sizes(proxy, adaptive)
            assert calls1 - calls0 == 1, f"{path} did not call `infer` once"
            assert _counter(proxy, "rfloc_model_inferences_total") - inferred0 == samples
            answer = r.json()
            for p in answer.get("predictions", [answer]):
                assert p["cache_hit"] is False
            return answer

        captures = generate_scenes(3, seed=78, spec=spec).iq
        direct = through_proxy("/predict", {"iq_b64": b64(captures[0])}, 1)
        re_encoded = through_proxy("/predict", {"iq_data": pairs(captures[0])}, 1)
        in_process = post(
            server, "/predict", {"iq_b64": b64(captures[0]), "cache_enabled": False}
        ).json()
        same_answer(direct, in_process, "proxy iq_b64")
        same_answer(re_encoded, in_process, "proxy iq_data")

        want = post(
            server,
            "/predict_batch",
            {"iq_b64_samples": [b64(c) for c in captures], "cache_enabled": False},
        )
        assert want.status_code == 200, want.text
        expected = want.json()["predictions"]
        distinct_positions(expected)
        by_b64 = through_proxy("/predict_batch", {"iq_b64_samples": [b64(c) for c in captures]}, 3)
        by_pairs = through_proxy("/predict_batch", {"iq_samples": [pairs(c) for c in captures]}, 3)
        for name, got in (("iq_b64_samples", by_b64), ("iq_samples", by_pairs)):
            assert len(got["predictions"]) == 3
            for i, (p, e) in enumerate(zip(got["predictions"], expected, strict=True)):
                same_answer(p, e, f"proxy {name}[{i}]")
    finally:
        assert proxy.stop() == 0


def test_ellipse_endpoint(server: Server) -> None:
    r = post(
        server,
        "/ellipse",
        {
            "latitude": 45.07,
            "longitude": 7.69,
            "sigma_x": 300.0,
            "sigma_y": 100.0,
            "rho": 0.0,
            "num_points": 32,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["orientation_deg"] == pytest.approx(90.0)
    assert body["semi_major_m"] == pytest.approx(300 * 2.4477, rel=1e-4)
    ring = body["geojson"]["geometry"]["coordinates"][0]
    assert len(ring) == 33 and ring[0] == ring[-1]
    assert body["geojson"]["properties"]["confidence_level"] == 0.95


def test_model_info(server: Server) -> None:
    got = httpx.get(f"{server.url}/model/info", timeout=10)
    posted = post(server, "/model/info", {})
    assert got.status_code == 200 and posted.status_code == 200
    info = got.json()
    for key in (
        "name",
        "version",
        "stage",
        "mlflow_run_id",
        "bento_model_tag",
        "created_at",
        "sha256",
        "feature_spec",
        "accuracy_meters",
        "training_samples",
        "last_reloaded",
        "inference_count",
        "avg_latency_ms",
        "cache_hit_rate",
    ):
        assert key in info
    assert info["name"] == "localization_model" and info["version"] == "1"
    assert info["stage"] == "Production" and len(info["sha256"]) == 64
    assert info["bento_model_tag"].startswith("localization_model:")
    assert [r["name"] for r in info["feature_spec"]["receivers"]][0] == "Torino"
    assert info["accuracy_meters"] > 1000 and info["training_samples"] > 5000
    # counts from known events: five uncached predictions add exactly five inferences
    captures = generate_scenes(
        5, seed=515, spec=FeatureSpec.model_validate(info["feature_spec"])
    ).iq
    for capture in captures:
        assert (
            post(server, "/predict", {"iq_b64": b64(capture), "cache_enabled": False}).status_code
            == 200
        )
    after = httpx.get(f"{server.url}/model/info", timeout=10).json()
    assert after["inference_count"] == info["inference_count"] + 5
    assert after["avg_latency_ms"] > 0
    # both workers report, and serve the one model
    assert after["workers_agree"] and len(after["workers"]) == 2
    assert {w["bento_model_tag"] for w in after["workers"]} == {info["bento_model_tag"]}
    assert after["model_version"] == f"1+{info['sha256'][:12]}"


def test_model_reload_is_disabled_without_an_admin_token(server: Server) -> None:
    before = httpx.get(f"{server.url}/model/info", timeout=10).json()
    # it says so whatever the body: the token is checked before the body is validated
    cases = [(h, b) for h in ({}, {"Authorization": "Bearer anything-at-all-0123456789"})
             for b in ({}, {"tag": 5}, {"x": 1}, {"tag": "../../etc"})]  # fmt: skip
    for headers, json_body in cases:
        r = httpx.post(f"{server.url}/model/reload", json=json_body, headers=headers, timeout=30)
        assert r.status_code == 403, r.text
        assert r.json() == {
            "error": "authorization: model reload is disabled: no ADMIN_TOKEN is configured",
            "field": "authorization",
            "detail": [
                {
                    "type": "forbidden",
                    "loc": ["authorization"],
                    "msg": "model reload is disabled: no ADMIN_TOKEN is configured",
                }
            ],
        }
    after = httpx.get(f"{server.url}/model/info", timeout=10).json()
    assert after["workers"] == before["workers"]


def test_inference_count_sums_both_workers(server: Server, spec: FeatureSpec) -> None:
    """/model/info's inference_count is the model's sample count summed over both workers
    (`service_stats` reads the Prometheus multiprocess folder, as /metrics does): N uncached
    predictions add exactly N, whichever worker serves them and whichever answers the read."""
    captures = generate_scenes(4, seed=410, spec=spec).iq
    bodies = [{"iq_b64": b64(c), "cache_enabled": False} for c in captures]
    batch = {"iq_b64_samples": [b64(c) for c in captures[:3]], "cache_enabled": False}

    def counts(pool: ThreadPoolExecutor) -> list[int]:  # concurrent reads reach both workers
        return [
            r.json()["inference_count"]
            for r in pool.map(lambda _: httpx.get(f"{server.url}/model/info", timeout=10), range(8))
        ]

    def per_worker() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return {
            line.split('pid="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("rfloc_worker_predictions{")
        }

    served_by: set[str] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):  # until both workers have served part of a round
            reads = counts(pool)
            before = reads[0]
            assert reads == [before] * 8, "workers disagree on inference_count"
            assert _counter(server, "rfloc_model_inferences_total") == before
            workers_before = per_worker()
            codes = list(
                pool.map(lambda i: post(server, "/predict", bodies[i % 4]).status_code, range(24))
            )
            codes.append(post(server, "/predict_batch", batch).status_code)
            assert codes == [200] * 25
            assert counts(pool) == [before + 24 + 3] * 8
            assert _counter(server, "rfloc_model_inferences_total") == before + 24 + 3
            served_by |= {
                pid for pid, n in per_worker().items() if n > workers_before.get(pid, 0.0)
            }
            if len(served_by) == 2:
                break
    assert len(served_by) == 2, "one worker served everything: the sum over workers is untested"


def test_health_docs_and_ui(server: Server) -> None:
    assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    ui = httpx.get(f"{server.url}/", timeout=5)
    assert ui.status_code == 200 and "swagger" in ui.text.lower()
    doc = httpx.get(f"{server.url}/docs.json", timeout=5).json()
    assert doc["openapi"].startswith("3.")
    for path in ("/predict", "/predict_batch", "/ellipse", "/model/info"):
        assert "post" in doc["paths"][path]
    request_schema = json.dumps(doc)
    for field in (
        "iq_data",
        "iq_b64",
        "session_id",
        "cache_enabled",
        "confidence_level",
        "include_geojson",
        "iq_samples",
        "iq_b64_samples",
        "num_points",
    ):
        assert field in request_schema


def test_python_client(server: Server, spec: FeatureSpec) -> None:
    capture = generate_scenes(1, seed=5, spec=spec).iq[0]
    with bentoml.SyncHTTPClient(server.url) as client:
        result = client.predict(iq_b64=b64(capture), session_id="py")
        assert result["session_id"] == "py" and "position" in result
        ellipse = client.ellipse(latitude=45.0, longitude=7.0, sigma_x=10.0, sigma_y=10.0)
        assert ellipse["orientation_deg"] == 0.0


def _good(spec: FeatureSpec) -> np.ndarray:
    return generate_scenes(1, seed=8, spec=spec).iq[0]


def _bad_cases(spec: FeatureSpec) -> list[tuple[str, str, object, int, str]]:
    good = _good(spec)
    nan = good.copy()
    nan[2, 10] = complex(np.nan, 0)
    long = np.ones((5, 65_537), np.complex64)
    return [
        (
            "both encodings",
            "/predict",
            {"iq_b64": b64(good), "iq_data": pairs(good)},
            400,
            "exactly one of iq_data and iq_b64",
        ),
        ("no encoding", "/predict", {"session_id": "x"}, 400, "exactly one of iq_data"),
        ("four levels", "/predict", {"iq_data": [pairs(good)]}, 400, "4 levels of nesting"),
        ("triplets", "/predict", {"iq_data": [[[1, 2, 3]] * 600] * 5}, 400, "[I, Q] pair"),
        (
            "three receivers",
            "/predict",
            {"iq_data": pairs(good[:3])},
            400,
            "expected 5 receiver captures",
        ),
        (
            "too short",
            "/predict",
            {"iq_b64": b64(good[:, :100])},
            400,
            "100 samples per receiver, at least 512",
        ),
        ("too long", "/predict", {"iq_b64": b64(long)}, 400, "at most 65536"),
        ("NaN", "/predict", {"iq_b64": b64(nan)}, 400, "NaN or infinite"),
        ("bad base64", "/predict", {"iq_b64": "not*base64"}, 400, "iq_b64: not valid base64"),
        (
            "odd bytes",
            "/predict",
            {"iq_b64": base64.b64encode(b"\0" * 12).decode()},
            400,
            "not a whole, non-zero number of complex64",
        ),
        (
            "no split",
            "/predict",
            {"iq_b64": b64(np.ones(5 * 600 + 1, np.complex64))},
            400,
            "do not split into 5",
        ),
        ("strings", "/predict", {"iq_data": [[["a", "b"]] * 600] * 5}, 400, "must be numbers"),
        ("booleans", "/predict", {"iq_data": [[[True, False]] * 600] * 5}, 400, "must be numbers"),
        (
            "ragged",
            "/predict",
            {"iq_data": [[[1, 2]] * 600, [[1, 2]] * 601] + [[[1, 2]] * 600] * 3},
            400,
            "ragged",
        ),
        (
            "confidence 1.5",
            "/predict",
            {"iq_b64": b64(good), "confidence_level": 1.5},
            400,
            "confidence_level",
        ),
        ("unknown field", "/predict", {"iq_b64": b64(good), "foo": 1}, 400, "foo"),
        ("not JSON", "/predict", b"{not json", 400, "Invalid JSON"),
        (
            "bad batch item",
            "/predict_batch",
            {"iq_b64_samples": [b64(good), b64(good), "###", b64(good)]},
            400,
            "iq_b64_samples[2]: not valid base64",
        ),
        (
            "bad batch pairs",
            "/predict_batch",
            {"iq_samples": [pairs(good), pairs(good[:2])]},
            400,
            "iq_samples[1]: expected 5 receiver captures",
        ),
        (
            "too many items",
            "/predict_batch",
            {"iq_b64_samples": ["AAAA"] * 101},
            413,
            "iq_b64_samples: more than 100 items, at most 100",
        ),
        ("empty batch", "/predict_batch", {"iq_b64_samples": []}, 400, "iq_b64_samples"),
        (
            "ellipse sigma",
            "/ellipse",
            {"latitude": 0, "longitude": 0, "sigma_x": -1, "sigma_y": 1},
            400,
            "sigma_x",
        ),
        (
            "ellipse rho",
            "/ellipse",
            {"latitude": 0, "longitude": 0, "sigma_x": 1, "sigma_y": 1, "rho": 1.0},
            400,
            "rho",
        ),
        (
            "ellipse latitude",
            "/ellipse",
            {"latitude": 91, "longitude": 0, "sigma_x": 1, "sigma_y": 1},
            400,
            "latitude",
        ),
        (
            "ellipse points",
            "/ellipse",
            {"latitude": 0, "longitude": 0, "sigma_x": 1, "sigma_y": 1, "num_points": 2},
            400,
            "num_points",
        ),
        (
            "body too large",
            "/predict",
            b'{"iq_b64": "' + b"A" * MAX_REQUEST_BYTES + b'"}',
            413,
            "request body too large",
        ),
    ]


# the field each bad case names (docs/api.md §1.3); None: the body as a whole, or no field
BAD_FIELDS: dict[str, str | None] = {
    "both encodings": None,
    "no encoding": None,
    "four levels": "iq_data",
    "triplets": "iq_data[0][0]",
    "three receivers": "iq_data",
    "too short": "iq_b64",
    "too long": "iq_b64",
    "NaN": "iq_b64",
    "bad base64": "iq_b64",
    "odd bytes": "iq_b64",
    "no split": "iq_b64",
    "strings": "iq_data[0][0][0]",
    "booleans": "iq_data[0][0][0]",
    "ragged": "iq_data[1]",
    "confidence 1.5": "confidence_level",
    "unknown field": "foo",
    "not JSON": None,
    "bad batch item": "iq_b64_samples[2]",
    "bad batch pairs": "iq_samples[1]",
    "too many items": "iq_b64_samples",
    "empty batch": "iq_b64_samples",
    "ellipse sigma": "sigma_x",
    "ellipse rho": "rho",
    "ellipse latitude": "latitude",
    "ellipse points": "num_points",
    "body too large": None,
}


def shape_problems(response: httpx.Response, field: str | None) -> list[str]:
    """How an error response departs from the one error shape (docs/api.md §1.3)."""
    body = response.json()
    problems = []
    if set(body) != {"error", "field", "detail"}:
        problems.append(f"keys {sorted(body)}")
    if body.get("field") != field:
        problems.append(f"field {body.get('field')!r}, expected {field!r}")
    if field is not None and not body.get("error", "").startswith(f"{field}: "):
        problems.append("error does not start with the field")
    detail = body.get("detail")
    if not detail or any(set(d) != {"type", "loc", "msg"} for d in detail):
        problems.append(f"detail {detail!r}")
    elif field is not None and not detail[0]["loc"]:
        problems.append("detail[0].loc is empty")
    if "IODescriptor" in response.text or "validation error for" in response.text:
        problems.append("names an internal class")
    return problems


def test_bad_input_matrix(server: Server, spec: FeatureSpec) -> None:
    failures = []
    cases = _bad_cases(spec)
    assert {case[0] for case in cases} == set(BAD_FIELDS)
    for name, path, body, status, message in cases:
        r = post(server, path, body)
        problems = shape_problems(r, BAD_FIELDS[name])
        if r.status_code != status or message not in r.text or problems:
            failures.append(f"{name}: {r.status_code} {problems} {r.text[:200]}")
    assert not failures, "\n".join(failures)
    # the framework's own 404 and 405 in the same shape
    missing = httpx.post(f"{server.url}/nope", json={}, timeout=10)
    assert missing.status_code == 404 and not shape_problems(missing, None)
    wrong = httpx.get(f"{server.url}/predict", timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert not shape_problems(wrong, None)
    # and the service is still healthy and correct afterwards
    assert post(server, "/predict", {"iq_b64": b64(_good(spec))}).status_code == 200
    # client mistakes are one INFO line each, not error tracebacks
    log = server.log()
    assert "rejected input" in log and "Traceback" not in log


def _bounded_cases(spec: FeatureSpec) -> list[tuple[str, str, bytes, int, str, str | None]]:
    """(name, path, body, status, words the error must hold, field) for what a hostile or
    careless client sends (issue 28): each in both capture encodings where it applies."""
    good = _good(spec)
    data, b64s = pairs(good), b64(good)

    def body(**fields: object) -> bytes:
        return json.dumps(fields).encode()

    cases: list[tuple[str, str, bytes, int, str, str | None]] = []
    for enc, one, many in (("iq_data", data, "iq_samples"), ("iq_b64", b64s, "iq_b64_samples")):
        item = data if enc == "iq_data" else b64s
        small = [[[1, 2]]] if enc == "iq_data" else "AAAA"  # refused before it is decoded
        cases += [
            # item 1: a million numbers for a batch list: 413 at the 101st, a few bytes back
            (f"{many} 10**6 numbers", "/predict_batch", body(**{many: [1] * 1_000_000}), 413,
             "more than 100 items, at most 100", many),
            (f"{many} 101 items", "/predict_batch", body(**{many: [small] * 101}), 413,
             "more than 100 items", many),
            # item 16: an empty batch in either form
            (f"{many} empty", "/predict_batch", body(**{many: []}), 400, "at least 1 item", many),
            # item 16: what the fast path once hid from pydantic, in either form
            (f"{enc} unknown key", "/predict", body(**{enc: one, "foo": 1}), 400,
             "foo: not a field", "foo"),
            (f"{enc} long session_id", "/predict", body(**{enc: one, "session_id": "s" * 300}),
             400, "at most 256 characters", "session_id"),
            (f"{enc} confidence 0", "/predict", body(**{enc: one, "confidence_level": 0}), 400,
             "greater than 0", "confidence_level"),
            (f"{many} both", "/predict_batch", body(**{many: [item], "iq_samples" if
             many == "iq_b64_samples" else "iq_b64_samples": [b64s if many == "iq_samples"
             else data]}), 400, "give exactly one of iq_samples and iq_b64_samples", None),
            (f"{many} null item", "/predict_batch", body(**{many: [item, None]}), 400,
             "valid", f"{many}[1]"),
            # item 15: strict types at the edge, in either form
            (f"{enc} geojson yes", "/predict", body(**{enc: one, "include_geojson": "yes"}), 400,
             "valid boolean", "include_geojson"),
            (f"{enc} cache 0", "/predict", body(**{enc: one, "cache_enabled": 0}), 400,
             "valid boolean", "cache_enabled"),
            (f"{enc} confidence str", "/predict", body(**{enc: one, "confidence_level": "0.5"}),
             400, "valid number", "confidence_level"),
            (f"{many} geojson 1", "/predict_batch", body(**{many: [item], "include_geojson": 1}),
             400, "valid boolean", "include_geojson"),
            # item 18: a float field given a number no float holds names its bounds
            (f"{enc} confidence 10**1000", "/predict",
             json.dumps({enc: one})[:-1].encode() + b', "confidence_level": 1' + b"0" * 1000
             + b"}", 400, "must be a finite number > 0 and < 1", "confidence_level"),
        ]  # fmt: skip
    far = [row[:] for row in data]
    far[2][40] = [0.5, 1e308]  # finite JSON, beyond float32: the fast path's case
    marked = [row[:] for row in data]
    marked[0][0] = [0.9876543210123, 0.5]  # written as 10**1000 below: the standard path's case
    huge = json.dumps({"iq_data": marked}).replace("0.9876543210123", "1" + "0" * 1000)
    cases += [
        # item 11: a 300 KB key and 100 000 unknown keys: refused unechoed, in a few bytes
        ("300 KB key", "/predict", body(**{"k" * 300_000: 1, "iq_b64": b64s}), 400,
         "a key of 300000 bytes is not a field", None),
        ("100k keys", "/predict", body(**{f"k{i}": 1 for i in range(100_000)}), 400,
         "k0: not a field", "k0"),
        ("script key", "/ellipse", body(**{"<script>": 1}), 400, "a key of 8 characters", None),
        # item 15: /ellipse's booleans, strings and floats for ints
        ("ellipse true", "/ellipse", body(latitude=True, longitude=7.69, sigma_x=300,
         sigma_y=300), 400, "valid number", "latitude"),
        ("ellipse strings", "/ellipse", body(latitude=45, longitude="7.69", sigma_x=300,
         sigma_y=300), 400, "valid number", "longitude"),
        ("ellipse num_points str", "/ellipse", body(latitude=45, longitude=7, sigma_x=300,
         sigma_y=300, num_points="8"), 400, "valid integer", "num_points"),
        # item 18: the bound, not "NaN or infinite" / "other values"
        ("iq_data 1e308", "/predict", body(iq_data=far), 400,
         "a number beyond the float32 range (±3.4e+38); samples are finite, at most 1e+06",
         "iq_data[2][40][1]"),
        ("iq_data 10**1000", "/predict", huge.encode(), 400,
         "a number beyond the float32 range", "iq_data[0][0][0]"),
        ("ellipse 1e999", "/ellipse", b'{"latitude": 1e999, "longitude": 7, "sigma_x": 300, '
         b'"sigma_y": 300}', 400, "must be a finite number >= -90 and <= 90", "latitude"),
    ]  # fmt: skip
    return cases


def test_hostile_and_careless_bodies_get_small_shaped_errors(
    server: Server, spec: FeatureSpec
) -> None:
    """Issue 28 items 1, 11, 15, 16, 18 through the real server: each case answered with its
    status and message in the one error shape, in one JSON spelling (compact), a few KB at
    most whatever the body (a 2 MB body once made a 149 MB error), without echoing the input."""
    failures = []
    for name, path, body, status, words, field in _bounded_cases(spec):
        r = post(server, path, body)
        problems = shape_problems(r, field)
        if r.status_code != status or words not in r.text or problems:
            failures.append(f"{name}: {r.status_code} {problems} {r.text[:300]}")
        elif len(r.content) > 4096 or "kkkkkkkkkk" in r.text or "0000000000" in r.text:
            failures.append(f"{name}: {len(r.content)} bytes {r.text[:300]}")
        elif r.content != json.dumps(r.json(), separators=(",", ":"), ensure_ascii=False).encode():
            failures.append(f"{name}: not the compact spelling {r.text[:100]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/ellipse"])
def test_a_coded_body_is_refused_with_415(server: Server, spec: FeatureSpec, path: str) -> None:
    """Item 15: nothing decodes gzip: a gzip body got "invalid JSON", a plain one labelled gzip
    was taken. Both are 415 now, in either capture encoding."""
    import gzip

    good = _good(spec)
    bodies = {
        "/predict": [{"iq_data": pairs(good)}, {"iq_b64": b64(good)}],
        "/predict_batch": [{"iq_samples": [pairs(good)]}, {"iq_b64_samples": [b64(good)]}],
        "/ellipse": [{"latitude": 45, "longitude": 7, "sigma_x": 300, "sigma_y": 300}],
    }[path]
    for fields in bodies:
        plain = json.dumps(fields).encode()
        for content, coding in ((gzip.compress(plain), "gzip"), (plain, "gzip"), (plain, "br")):
            r = httpx.post(
                f"{server.url}{path}",
                content=content,
                headers={"content-type": "application/json", "content-encoding": coding},
                timeout=60,
            )
            assert r.status_code == 415, r.text[:300]
            assert r.json()["error"].startswith("Content-Encoding: not supported")
            assert not shape_problems(r, None)
        ok = httpx.post(
            f"{server.url}{path}",
            content=plain,
            headers={"content-type": "application/json", "content-encoding": "identity"},
            timeout=60,
        )
        assert ok.status_code == 200, ok.text[:300]


def test_unknown_paths_are_not_echoed(server: Server) -> None:
    """Item 11: `GET /%3Cscript%3E...` answered `path: no route GET /<script>...`, and a
    60 KB path a 120 KB answer."""
    for path in ("/%3Cscript%3Ealert(1)%3C/script%3E", "/" + "p" * 60_000):
        r = httpx.get(f"{server.url}{path}", timeout=30)
        assert r.status_code in (404, 414, 431), r.status_code
        assert len(r.content) < 1000 and "script" not in r.text and "ppppp" not in r.text
        assert not shape_problems(r, None)


def test_the_greedy_wait_is_decided_from_the_served_models_own_measurement(
    server: Server,
) -> None:
    """BATCH_QUEUE_DELAY_MS=auto: each worker measured the model at load and logged the wait
    it chose by the rule of `utils/serving/queue_delay.py`."""
    notes = re.findall(
        r"queue delay ([\d.]+) ms \(auto: ([\d.]+) ms alone, ([\d.]+)x cheaper per sample "
        r"at batch (\d+)\)",
        server.log(),
    )
    assert len(notes) >= 2  # one per worker
    for delay, single, gain, batch in notes:
        assert int(batch) == 8
        if abs(float(gain) - 1.25) < 0.006:  # logged to 2 decimals: either side of the rule
            assert float(delay) in (0.0, pytest.approx(min(float(single) / 2, 10.0), abs=0.051))
            continue
        expected = 0.0 if float(gain) < 1.25 else min(float(single) / 2, 10.0)
        assert float(delay) == pytest.approx(expected, abs=0.051)  # as logged, 1 decimal


def test_where_batches_run_is_decided_from_the_served_models_own_measurement(
    server: Server, spec: FeatureSpec
) -> None:
    """BATCH_ON_LOOP=auto (the default): each worker logged where its batches run, from the
    batch it measured (`utils/serving/on_loop.py`); the demo model's full batch is short
    enough for the event loop, and it answers from there."""
    notes = re.findall(
        r"(batches on the event loop|a lone request on the event loop, batches in a worker "
        r"thread|batches in a worker thread) \(auto: ([\d.]+) ms alone, ([\d.]+) ms for a "
        r"batch of (\d+), the loop held up to (\d+) ms\)",
        server.log(),
    )
    assert len(notes) >= 2  # one per worker
    for where, single_ms, full_ms, size, limit in notes:
        assert int(size) == 8 and int(limit) == 10
        if float(full_ms) <= 10.0:
            assert where == "batches on the event loop"
        elif float(single_ms) <= 10.0:
            assert where.startswith("a lone request")
        else:
            assert where == "batches in a worker thread"
    assert any(where == "batches on the event loop" for where, *_ in notes)
    capture = b64(generate_scenes(1, seed=78, spec=spec).iq[0])
    assert post(server, "/predict", {"iq_b64": capture, "cache_enabled": False}).is_success


def test_workers_run_uvicorns_c_http_parser_and_libuv_loop(server: Server) -> None:
    """`requirements/serve.txt` installs httptools and uvloop; uvicorn picks them only when they
    import, so check the running workers have them loaded (else they fell back to h11/asyncio,
    1.7x slower at c=8 on the backbone model: benchmarks/results/http_stack-resnet18.md)."""
    workers = [
        p
        for p in psutil.Process(server.process.pid).children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(p.cmdline())
    ]
    assert len(workers) == 2
    for worker in workers:  # their compiled modules are mapped into each worker
        paths = " ".join(m.path for m in worker.memory_maps())
        assert "httptools" in paths and "uvloop" in paths


def test_workers_keep_full_garbage_collections_off_requests(
    server: Server, spec: FeatureSpec
) -> None:
    """Each worker froze its start-up objects and starts no full collection by itself
    (utils/serving/collector.py); the young collections' pauses reach /metrics."""
    assert server.log().count("start-up objects frozen") == 2, server.log()[-3000:]
    capture = b64(generate_scenes(1, seed=77, spec=spec).iq[0])
    for _ in range(30):  # each prediction allocates enough for a few young collections
        assert post(server, "/predict", {"iq_b64": capture, "cache_enabled": False}).is_success
    young = _counter(server, 'rfloc_gc_pause_seconds_count{generation="0"}')
    assert young > 0


def test_start_message_says_where_to_go_and_its_examples_run(server: Server) -> None:
    """Once ready, one worker (not every worker) logs the pages and requests to paste; each
    pasted request answers."""
    import subprocess

    from utils.config import PROJECT_ROOT

    log = server.log()
    assert log.count("answers at http://") == 1, log[-3000:]
    block = log[log.index("answers at http://") :].splitlines()
    assert block[0].endswith(server.url), block[0]
    for page in ("/", "/map/", "/metrics", "/model/info"):
        url = next(line.split()[-1] for line in block[1:6] if line.split()[-1].endswith(page))
        assert httpx.get(url, timeout=10, follow_redirects=True).status_code == 200, url
    commands = [line.strip() for line in block[block.index("  try:") + 1 :][:2]]
    assert commands[0].startswith("curl ") and "/ellipse" in commands[0]
    assert "scripts.sample_request" in commands[1] and "/predict" in commands[1]
    answers = [
        subprocess.run(c, shell=True, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        for c in commands
    ]
    ellipse, prediction = (json.loads(a.stdout) for a in answers)
    assert ellipse["semi_major_m"] > ellipse["semi_minor_m"] > 0, ellipse
    assert set(prediction["position"]) >= {"latitude", "longitude"}, prediction


def test_model_info_and_sample_scene_answer_get_head_and_post_and_say_so(server: Server) -> None:
    """GET and HEAD work where POST does (HEAD: the headers alone); any other method is 405
    naming all three in `Allow`, in the one error shape (docs/api.md §1.3), like a 404."""
    for path in ("/model/info", "/sample_scene"):
        got = httpx.get(f"{server.url}{path}", timeout=30)
        head = httpx.head(f"{server.url}{path}", timeout=30)
        assert got.status_code == head.status_code == 200, head.text
        assert head.content == b"" and head.headers["content-type"] == "application/json"
        for method in ("PUT", "DELETE"):
            refused = httpx.request(method, f"{server.url}{path}", json={}, timeout=30)
            assert refused.status_code == 405, refused.text
            assert refused.headers.get_list("allow") == ["GET, HEAD, POST"]
            assert refused.json()["detail"][0]["type"] == "method_not_allowed"
    wrong = httpx.get(f"{server.url}/predict", timeout=30)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.headers["content-type"] == "application/json" and wrong.json()["field"] is None
    unknown = httpx.get(f"{server.url}/no/such/route", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["detail"][0]["type"] == "not_found"


def test_metrics_answer_what_was_written_before_them_and_head_works(
    server: Server, spec: FeatureSpec
) -> None:
    """/metrics comes from a read shared by concurrent scrapes, never one older than the
    request: 16 scrapes at once right after a prediction all count it."""
    before = _counter(server, "rfloc_model_inferences_total")
    capture = generate_scenes(1, seed=733, spec=spec).iq[0]
    assert post(server, "/predict", {"iq_b64": b64(capture), "cache_enabled": False}).is_success
    with ThreadPoolExecutor(max_workers=16) as pool:
        seen = list(pool.map(lambda _: _counter(server, "rfloc_model_inferences_total"), range(16)))
    assert seen == [before + 1] * 16
    head = httpx.head(f"{server.url}/metrics", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/plain")


def test_a_killed_workers_metric_files_are_merged_and_its_counts_kept(server: Server) -> None:
    """A worker killed (SIGKILL) leaves its Prometheus files; the next read folds them into
    one merged file per kind, so restarts do not make every later read dearer, and no count
    is lost. (Last in the module: a worker is respawned.)"""
    folder = server.log_path.parent / "prometheus_multiproc_dir"
    names = ("rfloc_model_inferences_total", "rfloc_predictions_total", "rfloc_errors_total")
    before = {name: _counter(server, name) for name in names}
    requests_before = _counter(server, "bentoml_service_request_total")
    workers = httpx.get(f"{server.url}/model/info", timeout=10).json()["workers"]
    victim = workers[0]["pid"]
    assert list(folder.glob(f"counter_{victim}.db"))  # its counts are in its own files
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            answer = httpx.get(f"{server.url}/model/info", timeout=10)
        except httpx.HTTPError:
            continue
        pids = {w["pid"] for w in answer.json()["workers"]} if answer.is_success else set()
        if victim not in pids and len(pids) == 2:
            break
    else:
        raise AssertionError("no worker was respawned")
    after = {name: _counter(server, name) for name in names}
    assert after == before
    # every request since is counted too (the /model/info polls and /metrics reads above)
    assert _counter(server, "bentoml_service_request_total") > requests_before
    left = sorted(p.name for p in folder.glob(f"*_{victim}.db"))
    assert left == [f"gauge_all_{victim}.db"], left  # only its per-pid gauge: pid is a label
    assert (folder / "counter_merged.db").exists() and (folder / "histogram_merged.db").exists()
