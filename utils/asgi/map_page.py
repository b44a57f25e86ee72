"""`GET /map/`: the map page and its files, served by the service and carried by the bento.

Starlette's `StaticFiles` over `static/map/` (one HTML, one JS module, one CSS, and the vendored
Leaflet, topojson-client and Natural Earth borders with their licenses: `scripts/vendor_map.sh`),
so the page works with no network. The page only calls the public API (`/model/info`,
`/sample_scene`, `/predict`, `/ellipse`) and, when the browser can reach them, OpenStreetMap's
tiles: its `Content-Security-Policy` allows exactly that, and no other site may frame it.

`/map` redirects to `/map/` (so relative paths resolve) with a relative `Location`: Starlette's
own trailing-slash redirect builds an absolute URL from the client's `Host` header, which sent
`Host: evil.example` to `http://evil.example/map/`. `MapRedirect` answers it before the router.
"""

from __future__ import annotations

from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.asgi.api_page import HARDENING
from utils.config import PROJECT_ROOT

MAP_DIR = PROJECT_ROOT / "static" / "map"
MOUNT = "/map"
#: the map's own files, the API on this origin, OpenStreetMap's tiles (and its reachability
#: probe, a `fetch`) and nothing else; Leaflet sets inline styles on its elements
OSM_TILES = "https://tile.openstreetmap.org"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    f"img-src 'self' data: {OSM_TILES}; connect-src 'self' {OSM_TILES}; font-src 'self'; "
    "object-src 'none'; frame-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = [(b"content-security-policy", CSP.encode()), *HARDENING]


def map_page() -> ASGIApp:
    """The mounted app: the files, each answer with the page's security headers."""
    files = StaticFiles(directory=MAP_DIR, html=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in ("", MOUNT):
            await RedirectResponse(f"{MOUNT}/", status_code=308)(scope, receive, send)
            return

        async def hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *HEADERS]}
            await send(message)

        await files(scope, receive, hardened)

    return app


class MapRedirect:
    """`/map` -> `/map/` (308, relative `Location`), before the router's own redirect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == MOUNT:
            await RedirectResponse(f"{MOUNT}/", status_code=308)(scope, receive, send)
            return
        await self.app(scope, receive, send)
