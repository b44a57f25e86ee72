"""Route labels for BentoML's request metrics (utils/asgi/route_labels.py), without a server.

The replaced class is private to BentoML: the first test fails on a BentoML that moved it, so
an upgrade cannot silently bring back raw-path labels.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from utils.asgi import route_labels
from utils.asgi.route_labels import UNMATCHED, route_label


def _ok(_request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


APP = Starlette(
    routes=[
        Route("/predict", _ok, methods=["POST"]),
        Route("/readyz", _ok),
        Route("/items/{item_id}", _ok),
        Mount("/map", app=Starlette(routes=[Route("/", _ok)])),
    ]
)


def _scope(path: str, method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "app": APP, "root_path": ""}


def test_bentoml_still_has_the_class_it_replaces_and_install_replaces_it() -> None:
    module = importlib.import_module(route_labels.PRIVATE_MODULE)
    assert hasattr(module, route_labels.PRIVATE_CLASS), "BentoML moved its metrics middleware"
    assert route_labels.install() is True
    patched = getattr(module, route_labels.PRIVATE_CLASS)
    assert getattr(patched, route_labels._MARK, False)
    assert route_labels.install() is True  # twice: still one subclass, not a subclass of it
    assert getattr(module, route_labels.PRIVATE_CLASS) is patched
    assert route_labels.install(enabled=False) is False


def test_labels_are_routes_templates_mounts_or_unmatched() -> None:
    assert route_label(_scope("/predict", "POST")) == "/predict"
    assert route_label(_scope("/predict", "GET")) == "/predict"  # 405, still the route
    assert route_label(_scope("/readyz")) == "/readyz"
    assert route_label(_scope("/items/42")) == "/items/{item_id}"
    assert route_label(_scope("/items/43")) == "/items/{item_id}"
    assert route_label(_scope("/map/")) == "/map/*"
    assert route_label(_scope("/map/vendor/leaflet.js")) == "/map/*"
    for invented in ("/wp-admin", "/.env", "/predict/extra", "/x" * 50, "/"):
        assert route_label(_scope(invented)) == UNMATCHED
    assert route_label({"type": "http", "path": "/predict"}) == UNMATCHED  # no app: no router


def test_the_metrics_see_the_label_and_the_app_behind_sees_the_real_path() -> None:
    seen: dict[str, str] = {}

    class Base:  # stands in for BentoML's middleware: reads the path, calls its app
        def __init__(self, app: Any, namespace: str = "x") -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            seen["metrics"] = scope["path"]
            await self.app(scope, receive, send)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen["app"] = scope["path"]
        seen["leaked"] = str(route_labels._REAL_PATH in scope)

    middleware = route_labels._labelled(Base)(inner, namespace="y")
    asyncio.run(middleware(_scope("/wp-login.php"), None, None))
    assert seen == {"metrics": UNMATCHED, "app": "/wp-login.php", "leaked": "False"}
    asyncio.run(middleware(_scope("/readyz"), None, None))
    assert seen["metrics"] == seen["app"] == "/readyz"
