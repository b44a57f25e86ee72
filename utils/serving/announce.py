"""The line a person reads when the service is up: where to go next.

BentoML logs the address it binds before any worker has loaded a model; a first `make serve`
then trains and imports for a minute and a user is left to guess when, and where, the service
answers. Once its model is loaded and warmed up, the first worker logs the pages that exist
and a request to copy. The address is read from the worker's own listening socket (psutil, a
BentoML dependency), so it is the one the server really bound, whatever `--port` said.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import sys

import psutil

from utils.serving.log_filters import MULTILINE

#: Wildcard binds are reachable from this machine as localhost.
_WILDCARDS = {"0.0.0.0", "::", ""}


def listening_address() -> tuple[str, int] | None:
    """(host, port) of a TCP socket this process listens on (the HTTP server's), or None."""
    try:
        connections = psutil.Process().net_connections(kind="tcp")
    except psutil.Error:
        return None
    listening = sorted(
        (c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN
    )
    return listening[0] if listening else None


def base_url(host: str, port: int) -> str:
    """A URL a browser on this machine opens: wildcards become localhost, IPv6 is bracketed."""
    if host in _WILDCARDS:
        host = "localhost"
    else:
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
    return f"http://{host}:{port}"


#: A request that needs nothing but curl: the 95 % ellipse of a 1-sigma covariance.
ELLIPSE_EXAMPLE = (
    '{"latitude": 45.07, "longitude": 7.69, "sigma_x": 300, "sigma_y": 100, "rho": 0.3}'
)


def start_message(url: str, model_tag: str, python: str | None = None) -> str:
    """Multi-line: the pages this service serves and requests to paste into a shell.

    `python`: an interpreter that can run `scripts.sample_request` from the working directory
    (a checkout of this project); without it (a container) the prediction example is left
    out and the map page is the way to try one.
    """
    lines = [
        f"ready: {model_tag} answers at {url}",
        f"  API page (Swagger UI)   {url}/",
        f"  map                     {url}/map/",
        f"  Prometheus metrics      {url}/metrics",
        f"  model and counters      {url}/model/info",
        "  try:",
        f"    curl -s {url}/ellipse -H 'content-type: application/json' -d '{ELLIPSE_EXAMPLE}'",
    ]
    if python:
        lines.append(
            f"    {python} -m scripts.sample_request | "
            f"curl -s {url}/predict -H 'content-type: application/json' -d @-"
        )
    return "\n".join(lines)


def log_start(log: logging.Logger, model_tag: str) -> None:
    """Log `start_message` for this worker's listening address (nothing when none is found)."""
    address = listening_address()
    if address is None:
        return
    try:
        runnable = importlib.util.find_spec("scripts.sample_request") is not None
    except (ImportError, ValueError):
        runnable = False
    python = sys.executable if runnable else None
    # several lines on purpose: the log filter escapes every other line feed
    log.info("%s", start_message(base_url(*address), model_tag, python), extra=MULTILINE)
