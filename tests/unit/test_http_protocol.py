"""The bounded HTTP protocol (utils/asgi/http_protocol.py), driven byte by byte without a server.

The protocol is uvicorn's httptools protocol with a fake transport that records what is written
and whether it was closed, the way uvicorn's own tests drive it. The first test fails on a
uvicorn that no longer resolves its protocol through `HTTP_PROTOCOLS`, so an upgrade cannot
silently take the bounds away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from uvicorn import config as uvicorn_config
from uvicorn.config import Config
from uvicorn.server import ServerState

from utils.asgi import http_protocol
from utils.asgi.client_gone import ClientGone
from utils.asgi.http_protocol import (
    PROTOCOL_ERROR,
    BoundedHttpToolsProtocol,
    Limits,
    ProtocolError,
    parser_reason,
)
from utils.config import PROJECT_ROOT, Settings
from utils.serving import metrics


class FakeTransport:
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.protocol: BoundedHttpToolsProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("203.0.113.7", 50123), "sockname": ("127.0.0.1", 3000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class EchoApp:
    """Reads the whole body, answers 200 with its length; remembers what it saw."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        self.scopes.append(scope)
        size = 0
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = str(size).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _connect(
    app: Any, limits: Limits, state: ServerState | None = None
) -> tuple[BoundedHttpToolsProtocol, FakeTransport]:
    config = Config(app=app, lifespan="off", log_config=None, proxy_headers=False)
    BoundedHttpToolsProtocol.limits = limits
    protocol = BoundedHttpToolsProtocol(
        config=config,
        server_state=state or ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
    )
    transport = FakeTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def _run(test: Callable[[], Awaitable[None]]) -> None:
    saved = BoundedHttpToolsProtocol.limits
    try:
        asyncio.run(test())
    finally:
        BoundedHttpToolsProtocol.limits = saved


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, body = raw.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
    assert int(headers["content-length"]) == len(body)
    data = json.loads(body) if headers.get("content-type") == "application/json" else body
    return int(status_line.split()[1]), headers, data


def _closed(reason: str) -> float:
    return metrics.CONNECTIONS_CLOSED.labels(reason)._value.get()


SMALL = Limits(max_header_bytes=1024, max_headers=10, header_timeout_s=30.0, max_connections=0)
GET = b"GET /readyz HTTP/1.1\r\nHost: test\r\n"


# --- the hook into uvicorn ----------------------------------------------------------------------


def test_install_makes_uvicorns_auto_protocol_the_bounded_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn resolves `http="auto"` (BentoML's choice) through `HTTP_PROTOCOLS` at load."""
    table = uvicorn_config.HTTP_PROTOCOLS
    for name in ("auto", "httptools"):
        monkeypatch.setitem(table, name, table[name])  # restored after the test
    saved = BoundedHttpToolsProtocol.limits
    try:
        settings = Settings(max_header_bytes=2048, max_headers=7, header_timeout_s=3)
        assert http_protocol.install(settings) is True
        config = Config(app=EchoApp(), lifespan="off", log_config=None)
        config.load()
        assert config.http_protocol_class is BoundedHttpToolsProtocol
        assert BoundedHttpToolsProtocol.limits == Limits(2048, 7, 3.0, 1000)
    finally:
        BoundedHttpToolsProtocol.limits = saved


# --- header size and count ----------------------------------------------------------------------


def test_a_head_at_the_limit_is_served_and_one_byte_more_is_431_unread() -> None:
    async def test() -> None:
        app = EchoApp()
        pad = b"X-Pad: "
        fixed = len(GET) + len(pad) + len(b"\r\n\r\n")
        at_limit = GET + pad + b"a" * (SMALL.max_header_bytes - fixed) + b"\r\n\r\n"
        assert len(at_limit) == SMALL.max_header_bytes
        protocol, transport = _connect(app, SMALL)
        protocol.data_received(at_limit)
        await _settle()
        assert _answer(transport.written)[0] == 200 and not transport.closed

        over = GET + pad + b"a" * (SMALL.max_header_bytes - fixed + 1) + b"\r\n\r\n"
        refused = _closed("header_bytes")
        app = EchoApp()
        protocol, transport = _connect(app, SMALL)
        protocol.data_received(over)
        await _settle()
        status, headers, body = _answer(transport.written)
        assert status == 431 and headers["connection"] == "close" and transport.closed
        assert body["field"] == "headers" and "1024 bytes (MAX_HEADER_BYTES)" in body["error"]
        assert body["detail"][0]["type"] == "headers_too_large"
        assert app.scopes == []  # the service never saw it
        assert _closed("header_bytes") == refused + 1

    _run(test)


def test_a_megabyte_header_is_refused_after_the_limit_and_the_rest_is_not_parsed() -> None:
    async def test() -> None:
        limits = Limits(max_header_bytes=64 * 1024, max_headers=100, header_timeout_s=30.0)
        protocol, transport = _connect(EchoApp(), limits)
        protocol.data_received(GET + b"X-Big: ")
        fed = 0
        for _ in range(16):  # 1 MiB in 64 KiB reads, as a socket delivers them
            if transport.closed:
                break
            protocol.data_received(b"a" * 65536)
            fed += 65536
        assert transport.closed and fed <= 2 * 65536  # refused on the read that crossed it
        assert protocol._head_bytes <= limits.max_header_bytes
        assert _answer(transport.written)[0] == 431
        before = transport.written
        protocol.data_received(b"a" * 65536)  # what is still in flight is dropped unread
        assert transport.written == before

    _run(test)


def test_body_bytes_in_the_same_read_as_the_head_do_not_count_against_it() -> None:
    async def test() -> None:
        app = EchoApp()
        protocol, transport = _connect(app, SMALL)
        body = b"b" * 200_000  # far over MAX_HEADER_BYTES, one read with its head
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        await _settle()
        status, _, answer = _answer(transport.written)
        assert status == 200 and answer == b"200000"

    _run(test)


def test_more_header_fields_than_max_headers_is_431() -> None:
    async def test() -> None:
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(SMALL.max_headers - 1))
        protocol, transport = _connect(EchoApp(), SMALL)
        protocol.data_received(GET + fields + b"\r\n")  # Host + 9: at the limit
        await _settle()
        assert _answer(transport.written)[0] == 200

        protocol, transport = _connect(EchoApp(), SMALL)
        protocol.data_received(GET + fields + b"X-One-More: v\r\n\r\n")
        await _settle()
        status, _, body = _answer(transport.written)
        assert status == 431 and transport.closed
        assert body["error"] == "headers: more than 10 header fields (MAX_HEADERS)"

    _run(test)


# --- the header deadline --------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_unanswered_at_the_deadline() -> None:
    async def test() -> None:
        idle = _closed("idle")
        limits = Limits(max_header_bytes=1024, max_headers=10, header_timeout_s=0.05)
        _, transport = _connect(EchoApp(), limits)
        await asyncio.sleep(0.2)
        assert transport.closed and transport.written == b""
        assert _closed("idle") == idle + 1

    _run(test)


def test_a_head_that_stalls_gets_408_and_the_connection_closed() -> None:
    async def test() -> None:
        limits = Limits(max_header_bytes=1024, max_headers=10, header_timeout_s=0.05)
        protocol, transport = _connect(EchoApp(), limits)
        protocol.data_received(b"G")
        await asyncio.sleep(0.2)
        status, headers, body = _answer(transport.written)
        assert status == 408 and transport.closed and headers["connection"] == "close"
        assert body["field"] == "headers" and "HEADER_TIMEOUT_S" in body["error"]

    _run(test)


def test_the_deadline_ends_with_the_headers_and_restarts_with_the_next_request() -> None:
    async def test() -> None:
        limits = Limits(max_header_bytes=1024, max_headers=10, header_timeout_s=0.05)
        app = EchoApp()
        protocol, transport = _connect(app, limits)
        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
        await asyncio.sleep(0.2)  # headers in: the body's deadline is another layer's
        assert not transport.closed and transport.written == b""
        protocol.data_received(b"{}")
        await _settle()
        assert _answer(transport.written)[0] == 200 and not transport.closed
        transport.written = b""
        protocol.data_received(b"GET /readyz HTTP/1.1\r\n")  # the next request stalls
        await asyncio.sleep(0.2)
        assert _answer(transport.written)[0] == 408 and transport.closed

    _run(test)


# --- the connection cap ---------------------------------------------------------------------------


def test_a_connection_beyond_the_cap_gets_503_with_retry_after_once_its_headers_are_in() -> None:
    async def test() -> None:
        limits = Limits(max_header_bytes=1024, max_headers=10, max_connections=2)
        state = ServerState()
        app = EchoApp()
        held = [_connect(app, limits, state) for _ in range(2)]
        assert not any(protocol._over_cap for protocol, _ in held)
        capped = _closed("connection_cap")
        protocol, transport = _connect(app, limits, state)
        assert transport.written == b""  # nothing before its request: the client can read it
        protocol.data_received(GET + b"\r\n")
        await _settle()
        status, headers, body = _answer(transport.written)
        assert status == 503 and headers["retry-after"] == "1" and transport.closed
        assert "(MAX_CONNECTIONS_PER_WORKER)" in body["error"] and body["field"] is None
        assert app.scopes == [] and _closed("connection_cap") == capped + 1
        await _settle()
        held[0][0].connection_lost(None)  # one leaves: the next is served
        protocol, transport = _connect(app, limits, state)
        protocol.data_received(GET + b"\r\n")
        await _settle()
        assert _answer(transport.written)[0] == 200
        # a flood: beyond twice the cap, closed at once with nothing written
        late = [_connect(app, limits, state) for _ in range(3)]
        assert [t.closed for _, t in late] == [False, False, True]
        assert late[-1][1].written == b""

    _run(test)


# --- malformed HTTP -----------------------------------------------------------------------------

MALFORMED = {
    "Content-Length with chunked": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two Content-Lengths": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    ),
    "a raw non-ASCII path": "GET /caf\u00e9-secret HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
    "NUL in a header": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: secret\x00b\r\n\r\n",
    "a folded header": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  secret\r\n\r\n",
    "a bad chunk size": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nsecret\r\nab\r\n"
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_http_is_400_in_the_one_shape_logged_once_with_the_client(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def test() -> None:
        protocol, transport = _connect(EchoApp(), SMALL)
        protocol.data_received(MALFORMED[case])
        await _settle()
        status, headers, body = _answer(transport.written)
        assert status == 400 and transport.closed and headers["connection"] == "close"
        assert body["field"] is None and body["error"].startswith("request: malformed HTTP (")
        assert body["detail"][0]["type"] == "malformed_http"
        assert "secret" not in json.dumps(body)  # the reason, never the input

    with caplog.at_level(logging.INFO):
        _run(test)
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, caplog.records
    assert "203.0.113.7:50123" in lines[0].getMessage()
    assert not any("Invalid HTTP request received" in r.getMessage() for r in caplog.records)


def test_a_body_found_malformed_mid_request_marks_the_request_400() -> None:
    async def test() -> None:
        app = EchoApp()
        protocol, transport = _connect(app, SMALL)
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        )
        await _settle()
        (scope,) = app.scopes  # the service is reading it
        protocol.data_received(b"zz\r\n")
        await _settle()
        assert _answer(transport.written)[0] == 400 and transport.closed
        mark = scope[PROTOCOL_ERROR]
        assert isinstance(mark, ProtocolError) and mark.status == 400
        assert app.received[-1] == {"type": "http.disconnect"}

    _run(test)


def test_parser_reasons_are_short_and_keep_no_control_characters() -> None:
    assert parser_reason(ValueError("Duplicate Content-Length")) == "Duplicate Content-Length"
    assert parser_reason(ValueError("a\x00b\r\n<c>")) == "abc"
    assert parser_reason(ValueError("")) == "unparsable"
    assert len(parser_reason(ValueError("x" * 500))) == 80


# --- what ClientGone records for it ---------------------------------------------------------------


def test_client_gone_records_the_400_the_connection_answered_not_a_499() -> None:
    async def service(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    mark = ProtocolError()
    mark.status, mark.message = 400, "request: malformed HTTP (Invalid character in chunk size)"
    scope = {"type": "http", "method": "POST", "path": "/predict", PROTOCOL_ERROR: mark}
    messages = iter(
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gone = metrics.CLIENT_DISCONNECTS.labels("body")._value.get()
    asyncio.run(ClientGone(service)(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"] == mark.message
    assert metrics.CLIENT_DISCONNECTS.labels("body")._value.get() == gone


def test_without_httptools_the_service_module_imports_and_says_the_limits_are_off(
    tmp_path: Path,
) -> None:
    """benchmarks/http_stack.py blocks httptools for its h11 baseline: install() steps aside
    with a warning instead of failing the service's import."""
    (tmp_path / "httptools.py").write_text('raise ImportError("blocked")\n')
    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stdout)\n"
        "from utils.asgi import http_protocol, client_gone\n"
        "from utils.config import get_settings\n"
        "print('installed', http_protocol.install(get_settings()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "installed False" in done.stdout
    assert "httptools is missing" in done.stdout
