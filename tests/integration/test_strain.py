"""Under strain: the in-flight body budget and the keep-alive bound, through real `bentoml serve`.

One server for the module, one worker, `MAX_INFLIGHT_BYTES=1000000` (two default captures'
`iq_b64` bodies do not fit together, one and a small request do), `CONNECTION_MAX_REQUESTS=3`
and `CONNECTION_MAX_AGE_S=2`. Requests go over raw sockets, so a test holds a request admitted
with its body unsent (`Expect: 100-continue`), sends headers without their body, and sees the
server close a connection (EOF), which no pooled client shows. The last tests drive the
middlewares in process: a chunked body crossing the budget, and what `iq_data` parsing keeps
alive while and after a request runs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.support.serving import Server, start_server
from utils.api.decoding import encode_capture
from utils.api.iq_json import SCOPE_KEY
from utils.asgi.inflight_budget import InflightBudget
from utils.asgi.iq_fast_path import IQFastPath
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

BUDGET = 1_000_000
MAX_REQUESTS = 3
MAX_AGE_S = 2.0


def capture_body(seed: int, size: int | None = None) -> bytes:
    """A valid `/predict` `iq_b64` body (450 kB), padded with JSON whitespace to `size`."""
    iq = generate_scenes(1, seed=seed, spec=FeatureSpec()).iq[0]
    body = json.dumps({"iq_b64": encode_capture(iq), "cache_enabled": False}).encode()
    if size is not None:
        assert size >= len(body)
        body = body[:-1] + b" " * (size - len(body)) + b"}"
    return body


class Connection:
    """One HTTP/1.1 connection over a raw socket: send any part of a request, read answers."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
        self.buffer = b""

    def head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: test"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
        headers = {"Content-Length": str(len(body))}
        if body:
            headers["Content-Type"] = "application/json"
        self.head(method, path, headers)
        self.send(body)
        return self.response()

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection before answering"
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection before answering"
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self._read(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self) -> bool:
        """True when the server has closed the connection (EOF); False when it stays open
        (nothing arrives within the socket's timeout)."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    own = tmp_path_factory.mktemp("strain-home")
    shutil.copytree(home / "models", own / "models")
    srv = start_server(
        own,
        own / "strain.log",
        env={
            "SERVICE_WORKERS": "1",
            "REDIS_URL": "",
            "MAX_INFLIGHT_BYTES": str(BUDGET),
            "CONNECTION_MAX_REQUESTS": str(MAX_REQUESTS),
            "CONNECTION_MAX_AGE_S": str(MAX_AGE_S),
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bodies() -> dict[str, bytes]:
    return {
        "held": capture_body(1, size=600_000),
        "other": capture_body(2),
        "alone": capture_body(3, size=int(1.2 * BUDGET)),
    }


def refused_total(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rfloc_inflight_refused_total")
    )


def hold(server: Server, body: bytes) -> Connection:
    """A /predict admitted by the worker, its body not sent yet: with `Expect: 100-continue`
    uvicorn says `100 Continue` when the app first reads the body, after the budget admitted
    the request and reserved its declared bytes."""
    held = Connection(server.url)
    held.head(
        "POST",
        "/predict",
        {
            "Content-Length": str(len(body)),
            "Content-Type": "application/json",
            "Expect": "100-continue",
        },
    )
    status, _, _ = held.response()
    assert status == 100
    return held


def declare(server: Server, size: int) -> tuple[int, dict, bytes]:
    """The answer to headers declaring a `size`-byte /predict body, none of it sent."""
    other = Connection(server.url)
    try:
        other.head(
            "POST",
            "/predict",
            {"Content-Length": str(size), "Content-Type": "application/json"},
        )
        return other.response()
    finally:
        other.close()


# --- the in-flight body budget ----------------------------------------------------------------


def test_a_body_beyond_the_budget_is_refused_with_503_retry_after_and_the_error_shape(
    server: Server, bodies: dict[str, bytes]
) -> None:
    before = refused_total(server)
    held = hold(server, bodies["held"])
    try:
        # 600 000 held + 450 000 declared > 1 000 000: refused before a byte of it is sent
        status, headers, body = declare(server, len(bodies["other"]))
        assert status == 503, body
        assert int(headers["retry-after"]) >= 1
        assert headers["connection"] == "close"
        payload = json.loads(body)
        assert payload["field"] is None
        assert payload["error"].startswith("overloaded: ")
        assert "MAX_INFLIGHT_BYTES" in payload["error"]
        assert payload["detail"] == [{"type": "overloaded", "loc": [], "msg": payload["error"]}]
        # the held request was admitted: the rest of its body gets it answered
        held.send(bodies["held"])
        status, _, answer = held.response()
        assert status == 200, answer
    finally:
        held.close()
    assert refused_total(server) >= before + 1
    # nothing held any more: the same body is served
    r = httpx.post(f"{server.url}/predict", content=bodies["other"], timeout=60)
    assert r.status_code == 200, r.text


def test_below_the_budget_requests_are_served_beside_a_held_body(
    server: Server, bodies: dict[str, bytes]
) -> None:
    held = hold(server, bodies["held"])
    try:
        small = json.dumps(
            {"latitude": 45.0, "longitude": 7.6, "sigma_x": 300.0, "sigma_y": 100.0}
        ).encode()
        # 600 000 held + a 70-byte /ellipse fit: served while the large body waits
        conn = Connection(server.url)
        try:
            status, _, body = conn.request("POST", "/ellipse", small)
        finally:
            conn.close()
        assert status == 200, body
        held.send(bodies["held"])
        status, _, answer = held.response()
        assert status == 200, answer
    finally:
        held.close()


def test_a_body_larger_than_the_budget_is_served_when_it_is_alone(
    server: Server, bodies: dict[str, bytes]
) -> None:
    assert len(bodies["alone"]) > BUDGET
    r = httpx.post(f"{server.url}/predict", content=bodies["alone"], timeout=60)
    assert r.status_code == 200, r.text


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_when_it_crosses() -> None:
    """In process: the bytes of a body without `Content-Length` count as they stream in."""
    seen: list[int] = []

    async def app(scope: dict, receive, send) -> None:  # reads its body, then answers 200
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                seen.append(-1)
                return
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        seen.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    budget = InflightBudget(app, max_bytes=1000)

    def chunks(n: int, size: int):
        messages = [{"type": "http.request", "body": b"x" * size, "more_body": True}] * n
        return [*messages, {"type": "http.request", "body": b"", "more_body": False}]

    async def call(messages: list[dict], gate: asyncio.Event | None = None) -> list[dict]:
        sent: list[dict] = []
        queue = list(messages)

        async def receive() -> dict:
            if gate is not None and len(queue) == 1:
                await gate.wait()  # hold the body open before its last message
            return queue.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/predict", "headers": []}
        await budget(scope, receive, send)
        return sent

    async def scenario() -> tuple[list[dict], list[dict], list[dict]]:
        gate = asyncio.Event()
        first = asyncio.create_task(call(chunks(3, 200), gate))  # holds 600 bytes
        await asyncio.sleep(0.01)
        assert budget.held == 600
        crossing = await call(chunks(3, 200))  # 600 + 400 fits, 600 + 600 does not
        gate.set()
        held = await first
        alone = await call(chunks(3, 500))  # 1500 bytes, but nothing else is held
        return held, crossing, alone

    held, crossing, alone = asyncio.run(scenario())
    assert crossing[0]["status"] == 503
    assert (b"retry-after", b"1") in crossing[0]["headers"]
    assert len(crossing) == 2  # the app's own answer to the "disconnect" is dropped
    assert held[0]["status"] == 200 and alone[0]["status"] == 200
    assert seen == [-1, 600, 1500]
    assert budget.held == 0


# --- the keep-alive bound -------------------------------------------------------------------------


def test_a_connection_is_closed_after_its_maximum_number_of_requests(server: Server) -> None:
    conn = Connection(server.url)
    try:
        for _ in range(MAX_REQUESTS - 1):
            status, headers, _ = conn.request("GET", "/livez")
            assert status == 200
            assert headers.get("connection") != "close"
        status, headers, _ = conn.request("GET", "/livez")
        assert status == 200
        assert headers["connection"] == "close"
        assert conn.closed_by_server()
    finally:
        conn.close()
    # a new connection is served from a fresh count
    conn = Connection(server.url)
    try:
        status, headers, _ = conn.request("GET", "/livez")
        assert status == 200 and headers.get("connection") != "close"
    finally:
        conn.close()


def test_a_connection_older_than_its_maximum_age_is_closed_after_its_next_answer(
    server: Server,
) -> None:
    conn = Connection(server.url)
    try:
        status, headers, _ = conn.request("GET", "/livez")
        assert status == 200 and headers.get("connection") != "close"
        conn.sock.settimeout(MAX_AGE_S + 0.5)
        assert not conn.closed_by_server()  # idle but open: only an answer ends its term
        conn.sock.settimeout(60)
        status, headers, _ = conn.request("GET", "/livez")  # the 2nd of 3: closed by its age
        assert status == 200
        assert headers["connection"] == "close"
        assert conn.closed_by_server()
    finally:
        conn.close()


# --- iq_data parsing keeps nothing alive --------------------------------------------------------


def test_iq_data_parsing_holds_no_copy_of_the_body_while_or_after_the_request_runs() -> None:
    """In process: the fast path's chunks, joined body and parsed values are gone while the API
    runs (it holds the float32 arrays it was handed) and after it answered."""
    iq = generate_scenes(1, seed=5, spec=FeatureSpec()).iq[0]
    values = np.stack([iq.real, iq.imag], axis=-1).astype(np.float64)
    text = json.dumps({"iq_data": values.tolist(), "cache_enabled": False}).encode()
    during: list[int] = []

    async def api(scope: dict, receive, send) -> None:
        message = await receive()
        assert len(message["body"]) < 1000  # the field was replaced by its placeholder
        parsed = scope.pop(SCOPE_KEY)
        assert parsed.captures[0].shape == (*iq.shape, 2)
        during.append(tracemalloc.get_traced_memory()[0] - baseline)
        del parsed
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = IQFastPath(api, fields={"/predict": "iq_data"}, others={"/predict": "iq_b64"})

    async def call() -> None:
        offset = 0

        async def receive() -> dict:  # new bytes objects, as a server hands them over
            nonlocal offset
            chunk = text[offset : offset + 65536]
            offset += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": offset < len(text)}

        async def send(message: dict) -> None:
            pass

        headers = [(b"content-length", str(len(text)).encode())]
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
        await middleware(scope, receive, send)

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        asyncio.run(call())
        after = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    arrays = iq.size * 2 * 4  # the float32 captures the API method holds
    assert during[0] < arrays + len(text) // 4, (during, arrays, len(text))
    assert after < len(text) // 10, (after, len(text))
