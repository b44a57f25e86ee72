"""Captures at the edge of what receivers record, through a real server: never a 5xx, never
invented certainty, and a verdict (`quality`, `warnings`) a client can act on without reading
numbers.

Found by trying it (silence, noise below any receiver's floor, float32 overflow, one receiver
alive, a 1e-300 confidence level): 500s, millimetre sigmas and cached non-answers. The property
test below sweeps amplitudes from 0 to the float32 limit over silence, noise, DC, tones and real
scenes with receivers switched off, with and without GeoJSON, at several confidence levels.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.model_factory import register_onnx_model, toy_model
from tests.support.serving import Server, import_demo_model, start_server
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.model.quality import max_amplitude

README = Path(__file__).resolve().parents[2] / "README.md"
FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    srv = start_server(home, home / "edge.log", env={"SERVICE_WORKERS": "1"})
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


@pytest.fixture(scope="module")
def spec(server: Server) -> FeatureSpec:
    return FeatureSpec.model_validate(
        httpx.get(f"{server.url}/model/info", timeout=10).json()["feature_spec"]
    )


def post(server: Server, path: str, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=timeout)


def capture_of(
    kind: str, amplitude: float, silent: list[bool], samples: int, spec: FeatureSpec, seed: int = 0
) -> np.ndarray:
    """A `[C, samples]` complex64 capture of `kind`, scaled to peak `amplitude`."""
    rng = np.random.default_rng(seed)
    shape = (spec.n_channels, samples)
    if kind == "scene":
        x = generate_scenes(1, seed=seed, spec=spec, samples=samples).iq[0].astype(np.complex128)
    elif kind == "noise":
        x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    elif kind == "dc":
        x = np.ones(shape, dtype=np.complex128)
    elif kind == "tone":
        x = np.exp(2j * np.pi * 0.137 * np.arange(samples))[None].repeat(spec.n_channels, 0)
    else:
        x = np.zeros(shape, dtype=np.complex128)
    peak = np.abs(x.view(np.float64)).max()
    if peak > 0:
        x = x / peak * amplitude
    x[np.asarray(silent)] = 0.0
    with np.errstate(over="ignore"):
        return x.astype(np.complex64)


def all_numbers_finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_numbers_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_numbers_finite(v) for v in value)
    return True


def check_prediction(p: dict, *, include_geojson: bool) -> None:
    assert p["quality"] in ("fix", "no_fix")
    assert isinstance(p["warnings"], list)
    assert all_numbers_finite(p), p
    assert p["uncertainty"]["sigma_x"] > 0 and p["uncertainty"]["sigma_y"] > 0
    assert p["ellipse"]["semi_major_m"] >= p["ellipse"]["semi_minor_m"] >= 0
    if include_geojson and p["ellipse"]["geojson"] is None:
        assert any(w.startswith("GeoJSON omitted") for w in p["warnings"]), p["warnings"]
    if p["quality"] == "no_fix":
        assert p["warnings"], "a non-fix must say why"


kinds = st.sampled_from(["zeros", "noise", "dc", "tone", "scene"])
# log10 of the peak amplitude, from below float32's smallest normal to its largest value
exponents = st.one_of(st.floats(-45.0, 38.5), st.sampled_from([0.0, 6.0, 6.01, 38.53]))
levels = st.sampled_from([1e-300, 1e-6, 0.3935, 0.95, 0.999_999])


@settings(max_examples=45, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    kind=kinds,
    exponent=exponents,
    silent=st.lists(st.booleans(), min_size=5, max_size=5),
    samples=st.sampled_from([512, 3000, 8448]),
    geojson=st.booleans(),
    level=levels,
    seed=st.integers(0, 50),
)
def test_no_valid_capture_gets_a_5xx_or_invented_certainty(
    server: Server,
    spec: FeatureSpec,
    kind: str,
    exponent: float,
    silent: list[bool],
    samples: int,
    geojson: bool,
    level: float,
    seed: int,
) -> None:
    amplitude = min(10.0**exponent, FLOAT32_MAX)
    capture = capture_of(kind, amplitude, silent, samples, spec, seed)
    body = {
        "iq_b64": encode_capture(capture),
        "include_geojson": geojson,
        "confidence_level": level,
    }
    response = post(server, "/predict", body)
    peak = float(np.abs(capture.view(np.float32)).max())
    if peak > max_amplitude(spec):
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "iq_b64"
        assert "above full scale" in response.json()["error"]
        return
    assert response.status_code == 200, response.text
    answer = response.json()
    check_prediction(answer, include_geojson=geojson)
    if kind == "zeros" or all(silent) or peak == 0.0:
        assert answer["quality"] == "no_fix"
        assert "no signal above the noise floor on 5 of 5 receivers" in answer["warnings"][0]
    if answer["quality"] == "no_fix":  # never cached: the repeat is computed again
        assert post(server, "/predict", body).json()["cache_hit"] is False


def test_edge_captures_in_one_batch_do_not_fail_their_neighbours(
    server: Server, spec: FeatureSpec
) -> None:
    scene = generate_scenes(1, seed=11, spec=spec).iq[0]
    noise = capture_of("noise", 1.0, [False] * 5, spec.samples_per_capture, spec)
    edge = {
        "zeros": np.zeros_like(scene),
        "noise below the floor": noise * np.float32(1e-9),
        "noise 1e-6": noise * np.float32(1e-6),
        "loud noise": noise * np.float32(1e5),
        "one receiver": np.concatenate([scene[:1], np.zeros_like(scene[1:])]),
        "dc": np.full_like(scene, 0.01),
    }
    samples = [*edge.values(), scene]
    body = {
        "iq_b64_samples": [encode_capture(c) for c in samples],
        "include_geojson": True,
        "cache_enabled": False,
    }
    response = post(server, "/predict_batch", body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(samples)
    for p in predictions:
        check_prediction(p, include_geojson=True)
    verdicts = dict(zip(edge, predictions, strict=False))
    for name in ("zeros", "noise below the floor", "noise 1e-6", "loud noise", "one receiver"):
        assert verdicts[name]["quality"] == "no_fix", (name, verdicts[name]["warnings"])
    assert "above the" in " ".join(verdicts["loud noise"]["warnings"])
    assert predictions[-1]["quality"] == "fix" and predictions[-1]["warnings"] == []
    assert predictions[-1]["ellipse"]["geojson"]["geometry"]["type"] == "Polygon"
    single = post(
        server, "/predict", {"iq_b64": encode_capture(scene), "cache_enabled": False}
    ).json()
    assert single["position"] == pytest.approx(predictions[-1]["position"], rel=1e-5)


def test_model_info_states_the_fix_envelope(server: Server) -> None:
    envelope = httpx.get(f"{server.url}/model/info", timeout=10).json()["fix_envelope"]
    assert envelope["source"] == "training"  # the demo model logs its region and sigma range
    assert envelope["lat_min"] < 44.3 and envelope["lat_max"] > 45.8
    assert envelope["min_live"] == 3 and 50_000 < envelope["max_sigma_m"] < 500_000


def test_a_fix_is_cached_and_a_non_fix_is_not(server: Server, spec: FeatureSpec) -> None:
    scene = generate_scenes(1, seed=23, spec=spec).iq[0]
    body = {"iq_b64": encode_capture(scene), "session_id": "edge-cache"}
    first, second = post(server, "/predict", body).json(), post(server, "/predict", body).json()
    assert first["quality"] == "fix" and (first["cache_hit"], second["cache_hit"]) == (False, True)
    silence = {"iq_b64": encode_capture(np.zeros_like(scene))}
    answers = [post(server, "/predict", silence).json() for _ in range(3)]
    assert [a["cache_hit"] for a in answers] == [False, False, False]
    assert all(a["quality"] == "no_fix" for a in answers)


def test_overflowing_floats_are_refused_naming_the_field(server: Server) -> None:
    near_max = base64.b64encode(b"\xff\xff\x7f\x7f" * (2 * 5 * 8448)).decode()
    response = post(server, "/predict", {"iq_b64": near_max})
    assert response.status_code == 400
    assert response.json()["field"] == "iq_b64"
    batch = post(server, "/predict_batch", {"iq_b64_samples": [near_max, near_max]})
    assert batch.status_code == 400 and batch.json()["field"] == "iq_b64_samples[0]"


@pytest.mark.parametrize(
    "order",
    [
        ("multipart/form-data; boundary=x", "application/json"),
        ("application/json", "multipart/form-data; boundary=x"),
    ],
)
@pytest.mark.parametrize("path", ["/ellipse", "/predict", "/model/info"])
def test_a_doubled_content_type_is_refused_either_way(
    server: Server, order: tuple[str, str], path: str
) -> None:
    body = b'{"latitude": 45.0, "longitude": 7.0, "sigma_x": 10.0, "sigma_y": 10.0}'
    response = httpx.post(
        f"{server.url}{path}",
        content=body,
        timeout=30,
        headers=[("content-type", order[0]), ("content-type", order[1])],
    )
    assert response.status_code == 400, response.text
    message = "Content-Type: sent 2 times; send the header once (application/json)"
    assert response.json() == {
        "error": message,
        "field": None,
        "detail": [{"type": "invalid_input", "loc": [], "msg": message}],
    }


def test_ellipse_accepts_its_documented_range_and_names_the_field(server: Server) -> None:
    base = {"latitude": 45.0, "longitude": 7.0, "sigma_x": 10.0}
    ok = post(server, "/ellipse", {**base, "sigma_y": 4.0e6})  # under 1e7 / 2.4477 at 0.95
    assert ok.status_code == 200 and ok.json()["geojson"]["type"] == "Feature"
    # the schema's own maximum, at a confidence level where the ellipse fits
    top = post(server, "/ellipse", {**base, "sigma_y": 1.0e7, "confidence_level": 0.3})
    assert top.status_code == 200, top.text
    too_big = post(server, "/ellipse", {**base, "sigma_y": 5.0e6})
    assert too_big.status_code == 400
    assert too_big.json()["field"] == "sigma_y" and "semi-major" in too_big.json()["error"]
    swapped = post(server, "/ellipse", {**base, "sigma_x": 5.0e6, "sigma_y": 10.0})
    assert swapped.json()["field"] == "sigma_x"
    above = post(server, "/ellipse", {**base, "sigma_y": 2.0e7})
    assert above.status_code == 400
    assert above.json()["detail"][0]["loc"][-1] == "sigma_y"
    spec_doc = httpx.get(f"{server.url}/docs.json", timeout=10).json()
    described = str(spec_doc["components"]["schemas"])
    assert "semi-major axis may not exceed" in described


def test_readme_python_example_runs_as_printed(server: Server) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "SyncHTTPClient" in b)
    printed: list[str] = []
    code = example.replace("http://localhost:3000", server.url)
    exec(
        compile(code, "README.md", "exec"),
        {"print": lambda *a: printed.append(" ".join(map(str, a)))},
    )  # noqa: S102 - the README's own example
    assert len(printed) == 4, printed
    assert printed[1].startswith("fix {'latitude': "), printed
    assert printed[2].startswith("no fix: no signal above the noise floor on 5 of 5"), printed
    assert "'semi_major_m'" in printed[3], printed


def test_a_model_with_non_finite_outputs_is_a_5xx_naming_it_and_spares_neighbours(
    home: Path, tmp_path: Path
) -> None:
    """A broken model (NaN sigmas on silence) answers 500 with its tag, logged; a good sample
    sharing the dispatcher batch still gets its answer."""
    import asyncio
    import shutil

    from mlflow.tracking import MlflowClient

    from tests.support.registry import make_settings

    settings = make_settings(tmp_path / "registry")
    settings.local_registry_dir.mkdir()
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    register_onnx_model(
        client,
        str(client.create_experiment("broken", artifact_location=(tmp_path / "art").as_uri())),
        "localization_model",
        toy_model(nan_below_level=-170.0),
        FeatureSpec(),
        alias=None,
    )
    broken_home = tmp_path / "home"
    shutil.copytree(home / "models", broken_home / "models")
    tag = import_demo_model(broken_home, settings.local_registry_dir)
    srv = start_server(
        broken_home, tmp_path / "broken.log", env={"BENTO_MODEL_TAG": tag, "SERVICE_WORKERS": "1"}
    )
    try:
        spec = FeatureSpec()
        scene = generate_scenes(1, seed=5, spec=spec).iq[0]
        silence = {"iq_b64": encode_capture(np.zeros_like(scene)), "cache_enabled": False}
        good = {"iq_b64": encode_capture(scene), "cache_enabled": False}

        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
                return list(
                    await asyncio.gather(
                        *(
                            http.post("/predict", json=silence if i % 4 == 0 else good)
                            for i in range(16)
                        )
                    )
                )

        responses = asyncio.run(together())
        for i, response in enumerate(responses):
            if i % 4 == 0:
                assert response.status_code == 500, response.text
                error = response.json()["error"]
                assert tag in error and "non-finite uncertainties" in error
            else:
                assert response.status_code == 200, response.text
        batch = httpx.post(
            f"{srv.url}/predict_batch",
            timeout=60,
            json={"iq_b64_samples": [good["iq_b64"], silence["iq_b64"]], "cache_enabled": False},
        )
        assert batch.status_code == 500 and "iq_b64_samples[1]" in batch.json()["error"]
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
        assert re.search(r'rfloc_errors_total\{type="model_output"\} 5\.0', metrics), metrics
        assert f"model {tag} returned invalid outputs" in srv.log()
    finally:
        srv.stop()
