"""`GET /map/`: the map page and its files, served by the service and carried by the bento.

Starlette's `StaticFiles` over `static/map/` (one HTML, one JS module, one CSS, and the vendored
Leaflet, topojson-client and Natural Earth borders with their licenses: `scripts/vendor_map.sh`),
so the page works with no network; `/map` redirects to `/map/` so relative paths resolve.
The page only calls the public API (`/model/info`, `/sample_scene`, `/predict`, `/ellipse`).
"""

from __future__ import annotations

from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from utils.config import PROJECT_ROOT

MAP_DIR = PROJECT_ROOT / "static" / "map"


def map_page() -> ASGIApp:
    files = StaticFiles(directory=MAP_DIR, html=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in ("", "/map"):
            await RedirectResponse("/map/", status_code=308)(scope, receive, send)
            return
        await files(scope, receive, send)

    return app
