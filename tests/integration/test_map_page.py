"""The map page (`GET /map/`) in a real headless Chromium (Debian's `chromium`, by Playwright).

No network: OpenStreetMap tile requests are aborted, so the page must stand on its vendored
basemap. What it draws is checked against the API it calls: the sample scene's ellipse against
`/ellipse` for the same parameters, its error distance against the great-circle distance, the
playground's redraw on a slider change, a user's `.npy` against `/predict` of the same bytes.
A screenshot is written to `test-artifacts/map.png`.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.serving import Server, start_server
from utils.api.decoding import encode_capture
from utils.asgi.map_page import CSP as MAP_CSP
from utils.config import PROJECT_ROOT
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes, great_circle_km

ARTIFACTS = Path(os.environ.get("RFLOC_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
OSM = "https://tile.openstreetmap.org/**"


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    srv = start_server(home, home / "map.log", env={"SERVICE_WORKERS": "1"})
    yield srv
    srv.stop()


def wait_for(page: Any, expression: str, timeout: float = 30_000) -> None:
    """Wait until `expression` is truthy in the page, evaluated from outside it.

    Playwright's `wait_for_function` polls with `eval` inside the page, which the map page's
    CSP forbids (no 'unsafe-eval'), so it fails there; `page.evaluate` runs through the
    DevTools protocol and the page keeps its real CSP under test."""
    deadline = time.monotonic() + timeout / 1000
    check = f"(() => {{ try {{ return !!({expression}); }} catch {{ return false; }} }})()"
    while not page.evaluate(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout / 1000:g} s: {expression}")
        page.wait_for_timeout(50)


@pytest.fixture()
def page(browser: Any, server: Server) -> Iterator[tuple[Any, list[str]]]:
    """The loaded page, and every console error or page error it logged."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []

    def console(message: Any) -> None:
        url = (message.location or {}).get("url", "")
        if message.type == "error" and not url.startswith("https://tile.openstreetmap.org/"):
            errors.append(f"console: {message.text} ({url})")

    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.route(OSM, lambda route: route.abort())  # no network here: the offline basemap
    page.goto(f"{server.url}/map/")
    wait_for(page, "window.rfmap && window.rfmap.ready", timeout=60_000)
    yield page, errors
    context.close()


def coordinates(geojson: dict[str, Any]) -> np.ndarray:
    """Every vertex of a Feature / FeatureCollection's (Multi)Polygon, in order."""
    features = geojson["features"] if geojson["type"] == "FeatureCollection" else [geojson]
    points: list[list[float]] = []
    for feature in features:
        geometry = feature["geometry"]
        polygons = (
            geometry["coordinates"]
            if geometry["type"] == "MultiPolygon"
            else [geometry["coordinates"]]
        )
        for polygon in polygons:
            for ring in polygon:
                points.extend(ring)
    return np.asarray(points, dtype=float)


def one_pixel_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1×1, 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xcf\xe3\xf3\xff"))
        + chunk(b"IEND", b"")
    )


def drawn(page: Any, layer: str) -> dict[str, Any]:
    """The layer as Leaflet holds it, at full precision."""
    script = f"JSON.stringify(window.rfmap.layers.{layer}.toGeoJSON(false))"
    return json.loads(page.evaluate(script))


def test_the_page_loads_offline_with_the_models_receivers(
    page: tuple[Any, list[str]], server: Server
) -> None:
    p, errors = page
    info = httpx.get(f"{server.url}/model/info", timeout=30).json()
    names = [r["name"] for r in info["feature_spec"]["receivers"]]
    assert p.locator(".receiver").all_text_contents() == names
    assert "Offline: Natural Earth" in p.text_content("#basemap")
    assert info["bento_model_tag"] in p.text_content("#model")
    for asset in ("vendor/leaflet/LICENSE", "vendor/world-atlas/LICENSE", "map.css"):
        assert httpx.get(f"{server.url}/map/{asset}", timeout=30).status_code == 200
    assert not errors, errors


def test_sample_scene_draws_the_ellipse_of_ellipse_and_the_true_error(
    page: tuple[Any, list[str]], server: Server
) -> None:
    p, errors = page
    p.click("#scene")
    wait_for(p, "window.rfmap.last && window.rfmap.last.prediction", timeout=60_000)
    last = p.evaluate("window.rfmap.last")
    prediction, scene = last["prediction"], last["scene"]
    u = prediction["uncertainty"]
    same = httpx.post(
        f"{server.url}/ellipse",
        json={
            "latitude": prediction["position"]["latitude"],
            "longitude": prediction["position"]["longitude"],
            "sigma_x": u["sigma_x"],
            "sigma_y": u["sigma_y"],
            "rho": u["rho"],
            "confidence_level": 0.95,
        },
        timeout=30,
    ).json()
    np.testing.assert_allclose(
        coordinates(drawn(p, "ellipse")), coordinates(same["geojson"]), atol=1e-9
    )
    truth = scene["transmitter"]
    expected_km = float(
        great_circle_km(
            prediction["position"]["latitude"],
            prediction["position"]["longitude"],
            truth["latitude"],
            truth["longitude"],
        )
    )
    assert last["error"] / 1000 == pytest.approx(expected_km, rel=1e-3)
    digits = 2 if expected_km < 10 else 1  # the page's own format (map.js `km`)
    assert f"error {expected_km:.{digits}f} km" in p.text_content("#scene-result")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p.screenshot(path=str(ARTIFACTS / "map.png"))
    assert not errors, errors


def test_the_playground_redraws_on_a_slider_and_across_the_antimeridian(
    page: tuple[Any, list[str]], server: Server
) -> None:
    p, errors = page
    before = p.evaluate("window.rfmap.redraws")
    p.locator("#rho").fill("-0.6")
    wait_for(p, f"window.rfmap.redraws > {before}", timeout=30_000)
    wait_for(p, "window.rfmap.lastEllipse.params.rho === -0.6", timeout=30_000)
    params = p.evaluate("window.rfmap.lastEllipse.params")
    same = httpx.post(f"{server.url}/ellipse", json=params, timeout=30).json()
    np.testing.assert_allclose(
        coordinates(drawn(p, "playground")), coordinates(same["geojson"]), atol=1e-9
    )
    for button, kind in (("antimeridian", "MultiPolygon"), ("near the pole", None)):
        count = p.evaluate("window.rfmap.redraws")
        p.get_by_role("button", name=button).click()
        wait_for(p, f"window.rfmap.redraws > {count}", timeout=30_000)
        geometry = p.evaluate("window.rfmap.lastEllipse.ellipse.geojson.geometry")
        if kind:
            assert geometry["type"] == kind  # cut at 180 degrees (RFC 7946)
        assert "error" not in (p.get_attribute("#playground-result", "class") or "")
    assert not errors, errors


def test_a_dropped_npy_capture_is_predicted_like_its_iq_b64(
    page: tuple[Any, list[str]], server: Server, tmp_path: Path
) -> None:
    p, errors = page
    info = httpx.get(f"{server.url}/model/info", timeout=30).json()
    capture = generate_scenes(1, seed=77, spec=FeatureSpec.model_validate(info["feature_spec"]))
    path = tmp_path / "capture.npy"
    np.save(path, capture.iq[0].astype(np.complex64))
    p.set_input_files("#file", str(path))
    wait_for(p, "window.rfmap.last && window.rfmap.last.prediction", timeout=60_000)
    shown = p.evaluate("window.rfmap.last.prediction")
    direct = httpx.post(
        f"{server.url}/predict", json={"iq_b64": encode_capture(capture.iq[0])}, timeout=60
    ).json()
    assert shown["position"] == direct["position"]
    assert "capture.npy: " in p.text_content("#file-result")
    bad = tmp_path / "wrong.npy"
    np.save(bad, capture.iq[0].astype(np.complex128))
    p.set_input_files("#file", str(bad))
    wait_for(
        p,
        "document.getElementById('file-result').textContent.includes('complex64')",
        timeout=30_000,
    )
    assert not errors, errors


def test_a_dropped_json_body_is_predicted_and_tiles_are_used_when_reachable(
    browser: Any, server: Server, tmp_path: Path
) -> None:
    """With OpenStreetMap reachable (served here by a route: a 1×1 PNG), tiles go on top; a
    JSON body as /predict takes it is predicted like the same body posted directly."""
    png = one_pixel_png()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tiles: list[str] = []

    def tile(route: Any) -> None:
        tiles.append(route.request.url)
        route.fulfill(status=200, content_type="image/png", body=png)

    page.route(OSM, tile)
    try:
        page.goto(f"{server.url}/map/")
        wait_for(page, "window.rfmap && window.rfmap.ready", timeout=60_000)
        assert "OpenStreetMap over Natural Earth" in page.text_content("#basemap")
        wait_for(page, "document.querySelectorAll('.leaflet-tile').length > 0")
        assert len(tiles) > 1  # the probe, then the map's own tiles
        info = httpx.get(f"{server.url}/model/info", timeout=30).json()
        spec = FeatureSpec.model_validate(info["feature_spec"])
        capture = generate_scenes(1, seed=78, spec=spec).iq[0]
        body = {"iq_data": np.stack([capture.real, capture.imag], axis=-1).tolist()}
        path = tmp_path / "body.json"
        path.write_text(json.dumps(body))
        page.set_input_files("#file", str(path))
        wait_for(page, "window.rfmap.last && window.rfmap.last.prediction")
        shown = page.evaluate("window.rfmap.last.prediction")
        direct = httpx.post(f"{server.url}/predict", json=body, timeout=60).json()
        assert shown["position"] == direct["position"]
        assert shown["ellipse"]["geojson"]["type"] == "Feature"  # include_geojson was added
        assert not errors, errors
    finally:
        context.close()


def test_the_map_page_and_its_files_cannot_be_framed_or_sniffed(server: Server) -> None:
    """Every answer under /map/ carries the page's CSP (this origin, OpenStreetMap's tiles,
    no framing), X-Frame-Options and nosniff; the browser tests above run under that CSP
    (a blocked request or script would be a console error there)."""
    for path in ("/map/", "/map/map.js", "/map/vendor/leaflet/leaflet.css"):
        r = httpx.get(f"{server.url}{path}", timeout=30)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == MAP_CSP, path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_map_redirects_relatively_whatever_the_host_header(server: Server) -> None:
    """`/map` -> `/map/` with `Location: /map/`: never a URL built from the client's Host."""
    for host in (None, "evil.example"):
        headers = {"host": host} if host else {}
        r = httpx.get(f"{server.url}/map", headers=headers, timeout=30)
        assert r.status_code in (307, 308), r.text
        assert r.headers["location"] == "/map/"
    followed = httpx.get(f"{server.url}/map", timeout=30, follow_redirects=True)
    assert followed.status_code == 200 and followed.url.path == "/map/"
