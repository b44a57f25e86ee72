"""Request metrics labelled by route, not by raw path: a scanner cannot grow `/metrics`.

BentoML's request metrics (`bentoml_service_request_total`, `..._request_duration_seconds`,
`..._request_in_progress`) label each series with `endpoint=scope["path"]`, the path as the
client wrote it. Every distinct path a client invents, `/wp-admin`, `/.env`, `/a1b2c3...`, adds
a counter, a gauge and a histogram of about twenty buckets to every worker's Prometheus file,
for the life of the server: 10 000 invented paths took `/metrics` from 85 samples to 200 087
(41 MB, 11.8 s to scrape, past Prometheus's default 10 s timeout) and two workers from 365 to
1011 MB (`benchmarks/scan.py`), and an internet scanner sends that many in minutes. Ray Serve
and Triton label by route or deployment for this reason.

BentoML's middleware is the outermost of the app and reads the path before anything of ours
runs, and no setting changes its label; so `install()` replaces it (when the app is built, in
each worker) with a subclass that shows it the route instead: the path itself for a fixed
route (`/predict`, `/readyz`, ...), the template for a route with parameters, `<mount>/*` for
anything under a mounted app (`/static_content/*`, `/map/*`), and `(unmatched)` for a path no
route serves (answered 404 as before). The app behind it still sees the real path: routing,
the access log and the error messages are unchanged.

This touches a private class of BentoML (`bentoml._internal.server.http.instruments`), so it
is imported lazily, checked at start (a warning, and BentoML's own labels, if the class has
moved) and by `tests/unit/test_route_labels.py`, which fails on a BentoML that no longer has it;
`METRICS_ROUTE_LABELS=false` keeps BentoML's labels.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("bentoml.service.localization")

UNMATCHED = "(unmatched)"
_REAL_PATH = "rfloc.real_path"
_MARK = "_rfloc_route_labels"
PRIVATE_MODULE = "bentoml._internal.server.http.instruments"
PRIVATE_CLASS = "RunnerTrafficMetricsMiddleware"


def route_label(scope: Scope) -> str:
    """The metric label for a request: its route, never more distinct values than routes."""
    app = scope.get("app")
    router = getattr(app, "router", None)
    if router is None:  # not under a Starlette app: nothing to match against
        return UNMATCHED
    path = scope["path"]
    exact: frozenset[str] | None = getattr(router, "_rfloc_exact_paths", None)
    if exact is None:
        exact = frozenset(
            route.path
            for route in router.routes
            if not isinstance(route, Mount) and "{" not in getattr(route, "path", "{")
        )
        router._rfloc_exact_paths = exact  # the routes are fixed once the app serves
    if path in exact:
        return path
    for route in router.routes:
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        template = getattr(route, "path", "")
        if isinstance(route, Mount):
            return f"{template}/*"
        return template or UNMATCHED
    return UNMATCHED


class _RealPath:
    """Hands the app behind the metrics middleware the path the client sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        real = scope.get(_REAL_PATH)
        if real is not None:
            scope = {**scope, "path": real}
            del scope[_REAL_PATH]
        await self.app(scope, receive, send)


def _labelled(base: type) -> type:
    class RouteLabelledTrafficMetrics(base):  # type: ignore[misc, valid-type]
        def __init__(self, app: ASGIApp, *args: Any, **kwargs: Any) -> None:
            super().__init__(_RealPath(app), *args, **kwargs)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                label = route_label(scope)
                if label != scope["path"]:
                    scope = {**scope, "path": label, _REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    setattr(RouteLabelledTrafficMetrics, _MARK, True)
    return RouteLabelledTrafficMetrics


def install(enabled: bool = True) -> bool:
    """Label BentoML's request metrics by route in this process; True when they are.

    Call before the app is built (at service import): BentoML looks the class up then.
    """
    if not enabled:
        return False
    try:
        import importlib

        module = importlib.import_module(PRIVATE_MODULE)
        base = getattr(module, PRIVATE_CLASS)
    except (ImportError, AttributeError) as exc:
        log.warning(
            "request metrics keep BentoML's raw-path labels: %s.%s not found (%s)",
            PRIVATE_MODULE,
            PRIVATE_CLASS,
            exc,
        )
        return False
    if not getattr(base, _MARK, False):
        setattr(module, PRIVATE_CLASS, _labelled(base))
    return True
