"""The API page (`GET /`, BentoML's Swagger UI) in a real browser: it renders our routes and
every request it makes stays on the service (no Google Tag Manager, a strict CSP)."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.serving import Server, start_server
from utils.asgi.api_page import CSP, without_trackers


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    srv = start_server(home, home / "api-page.log", env={"SERVICE_WORKERS": "1"})
    yield srv
    srv.stop()


class Sources(HTMLParser):
    """Every URL the page's markup would fetch or frame."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "iframe", "img") and found.get("src"):
            self.urls.append(found["src"] or "")
        if tag == "link" and found.get("href"):
            self.urls.append(found["href"] or "")
        self._in_script = tag == "script" and not found.get("src")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_the_api_page_has_no_third_party_source_and_a_strict_csp(server: Server) -> None:
    page = httpx.get(f"{server.url}/", timeout=30)
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "googletagmanager" not in page.text and "GTM-" not in page.text
    assert page.headers["content-security-policy"] == CSP
    assert "frame-ancestors 'none'" in CSP  # no other site may frame it (clickjacking)
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert int(page.headers["content-length"]) == len(page.content)
    sources = Sources()
    sources.feed(page.text)
    assert sources.urls and not sources.inline_scripts
    for url in sources.urls:
        assert not urlsplit(url).netloc, url  # relative: served by the service itself
        assert httpx.get(f"{server.url}/{url.removeprefix('./')}", timeout=30).status_code == 200


def test_the_api_page_renders_our_routes_and_calls_no_other_origin(
    browser: Any, server: Server
) -> None:
    context = browser.new_context()
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{server.url}/")
        for route in ("/model/reload", "/predict_batch", "/sample_scene"):  # from /docs.json
            page.get_by_text(route, exact=True).first.wait_for(timeout=60_000)
    finally:
        context.close()
    origin = urlsplit(server.url).netloc
    elsewhere = [u for u in requests if urlsplit(u).netloc != origin and not u.startswith("data:")]
    assert requests and not elsewhere, elsewhere  # data: URIs are the UI's inline icons
    assert not errors, errors


def test_the_tracker_is_removed_from_bentomls_page_as_shipped() -> None:
    """Loud if BentoML moves or rewrites its page: the file we strip is the one it serves."""
    import _bentoml_impl.server as server_package  # private: only to read the shipped page

    shipped = (Path(server_package.__file__).parent / "main-openapi.html").read_bytes()
    assert b"googletagmanager" in shipped  # still there upstream, so the middleware matters
    cleaned = without_trackers(shipped)
    assert b"googletagmanager" not in cleaned and b"GTM-" not in cleaned
    assert b"swagger-ui-bundle.js" in cleaned
