"""Under attack, over real `bentoml serve`: a closed `/infer`, quiet departures, clean logs.

Two servers of one worker each, started side by side: the default (`greedy` dispatch, no
`ADMIN_TOKEN`, the deployment most users run) and `BATCH_DISPATCH=proxy` with an `ADMIN_TOKEN`,
whose predict routes reach `/infer` through BentoML's in-process client. Clients that leave
and forged requests are written on raw sockets, byte for byte, as an attacker sends them; the
verdicts are read from the server's own log and `/metrics`. The proxy server also has a short
header deadline and a small connection cap (`HEADER_TIMEOUT_S`, `MAX_CONNECTIONS_PER_WORKER`),
so the connection bounds of utils/asgi/http_protocol.py are seen to act within a test.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.serving import Server, start_server
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

ADMIN_TOKEN = "attack-test-admin-token-0123456789"
PREDICT_BYTES = 1_000_000  # MAX_PREDICT_BYTES: a streamed body crosses it quickly
FORGED_PATH = b"/predict%0A2026-11-26T19:20:00+0000%20%5BERROR%5D%20FAKE%1B%5B31m%0D"
FORGED_LINE = "2026-11-26T19:20:00+0000 [ERROR] FAKE"
HEADER_TIMEOUT_S = 3  # the proxy server's header deadline
CONNECTION_CAP = 16  # the proxy server's open connections per worker


@pytest.fixture(scope="module")
def servers(home: Path) -> Iterator[tuple[Server, Server]]:
    """(default server, proxy-dispatch server with an ADMIN_TOKEN), started in parallel."""
    common = {"SERVICE_WORKERS": "1", "ACCESS_LOG": "true", "REDIS_URL": ""}
    with ThreadPoolExecutor(2) as pool:
        plain = pool.submit(
            start_server,
            home,
            home / "attack-default.log",
            env={**common, "ADMIN_TOKEN": "", "MAX_PREDICT_BYTES": str(PREDICT_BYTES)},
        )
        proxy = pool.submit(
            start_server,
            home,
            home / "attack-proxy.log",
            env={
                **common,
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "BATCH_DISPATCH": "proxy",
                "HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                "MAX_CONNECTIONS_PER_WORKER": str(CONNECTION_CAP),
            },
        )
        started = []
        for future in (plain, proxy):
            try:
                started.append(future.result())
            except Exception:
                for server in started:
                    server.stop()
                raise
    yield started[0], started[1]
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(servers: tuple[Server, Server]) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def proxy(servers: tuple[Server, Server]) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def capture_b64() -> str:
    return encode_capture(generate_scenes(1, seed=11, spec=FeatureSpec()).iq[0])


# --- raw HTTP ---------------------------------------------------------------------------------


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one answer read off `sock` (Content-Length delimited)."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        data = sock.recv(65536)
        assert data, f"the server closed without answering; got {raw!r}"
        raw += data
    head, body = raw.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        data = sock.recv(65536)
        assert data, f"the answer was cut short: {body!r}"
        body += data
    return int(status_line.split()[1]), headers, body


def raw_request(server: Server, head: bytes, body: bytes = b"") -> tuple[int, dict, bytes, int]:
    """Send `head` (request line and headers, no blank line) and `body` as they are; returns
    (status, headers, body, the client port the server logs)."""
    with socket.create_connection(_address(server), timeout=60) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        status, headers, answer = _read_answer(sock)
        return status, headers, answer, sock.getsockname()[1]


def leave_mid_body(server: Server, path: str, body: bytes, extra: bytes = b"") -> int:
    """POST `body` to `path`, send half of it once the service has begun reading it (the
    server's `100 Continue` says so), then close the connection. Returns the client port."""
    with socket.create_connection(_address(server), timeout=60) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n%s\r\n"
            % (path.encode(), len(body), extra)
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            data = sock.recv(4096)
            assert data, f"closed before 100 Continue: {interim!r}"
            interim += data
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body[: len(body) // 2])
        return sock.getsockname()[1]


def stream_too_much(server: Server, total: int) -> tuple[int, int]:
    """A chunked /predict body of `total` bytes, sent until the server answers; returns
    (status, client port)."""
    with socket.create_connection(_address(server), timeout=60) as sock:
        port = sock.getsockname()[1]
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b'{"iq_b64": "' + b"A" * 65536
        try:
            for _ in range(total // len(piece) + 1):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                piece = b"A" * 65536
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed by the server after its answer, which is in our receive buffer
        status, _, _ = _read_answer(sock)
        return status, port


def wait_for_log(server: Server, found: Callable[[str], bool], what: str) -> str:
    """The server's log once `found(log)` holds (a worker writes its lines as it goes)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = server.log()
        if found(log):
            return log
        time.sleep(0.2)
    raise AssertionError(f"not in the server log after 60 s: {what}\n{server.log()[-4000:]}")


def access_line(port: int, status: int) -> Callable[[str], bool]:
    pattern = re.compile(rf"127\.0\.0\.1:{port} \(.*\) \(status={status}\b")
    return lambda log: any(pattern.search(line) for line in log.splitlines())


def settle(server: Server) -> str:
    """The log once the worker has finished everything sent before this call: it handles
    requests in order on one event loop, so a later request's access line comes after."""
    marker = re.compile(r"path=/ellipse[,)].*\(status=200")
    before = len(marker.findall(server.log()))
    r = httpx.post(f"{server.url}/ellipse", json=ELLIPSE, timeout=30)
    assert r.status_code == 200
    return wait_for_log(
        server, lambda log: len(marker.findall(log)) > before, "the /ellipse access line"
    )


ELLIPSE = {"latitude": 45.0, "longitude": 7.6, "sigma_x": 100.0, "sigma_y": 50.0}


def metric(server: Server, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels` (a value may be a regex)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                re.fullmatch(v, str(sample.labels.get(k, ""))) for k, v in labels.items()
            ):
                total += sample.value
    return total


def requests_by_status(server: Server, status: str) -> float:
    return metric(server, "bentoml_service_request_total", http_response_code=status)


# --- /infer is not a public door ----------------------------------------------------------------


def test_infer_from_outside_is_refused_before_its_body_is_read(
    server: Server, capture_b64: str
) -> None:
    inferred = metric(server, "rfloc_model_inferences_total")
    # 60 MB declared (under MAX_REQUEST_BYTES) and none of it sent: answered from the headers
    for path in (b"/infer", b"/%69nfer"):  # a percent-encoded path reaches the same route
        status, headers, body, _ = raw_request(
            server,
            b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000000" % path,
        )
        assert status == 403, body
        payload = json.loads(body)
        assert payload["field"] == "authorization"
        assert "/infer is internal to the service" in payload["error"]
        assert headers["connection"] == "close"
    # a well-formed call with any bearer token: no ADMIN_TOKEN here, so none is right
    r = httpx.post(
        f"{server.url}/infer",
        json={"captures": [capture_b64] * 3},
        headers={"authorization": "Bearer attack-test-admin-token-0123456789"},
        timeout=30,
    )
    assert r.status_code == 403 and "no ADMIN_TOKEN configured" in r.json()["error"]
    assert metric(server, "rfloc_model_inferences_total") == inferred  # nothing ran
    # the public routes are as open as before
    r = httpx.post(f"{server.url}/predict", json={"iq_b64": capture_b64}, timeout=60)
    assert r.status_code == 200 and r.json()["position"]["latitude"]


def test_proxy_dispatch_reaches_infer_inside_and_outside_needs_the_admin_token(
    proxy: Server, capture_b64: str
) -> None:
    internal = re.compile(r"127\.0\.0\.1:123 \(scheme=http,method=POST,path=/infer,.*\(status=200")
    calls_before = len(internal.findall(proxy.log()))
    inferred = metric(proxy, "rfloc_model_inferences_total")
    one = httpx.post(
        f"{proxy.url}/predict", json={"iq_b64": capture_b64, "cache_enabled": False}, timeout=60
    )
    assert one.status_code == 200, one.text
    batch = httpx.post(
        f"{proxy.url}/predict_batch",
        json={"iq_b64_samples": [capture_b64] * 3, "cache_enabled": False},
        timeout=60,
    )
    assert batch.status_code == 200, batch.text
    assert [p["position"] for p in batch.json()["predictions"]] == [one.json()["position"]] * 3
    assert metric(proxy, "rfloc_model_inferences_total") - inferred == 4
    # both went through /infer over BentoML's in-process client: its access lines say so
    wait_for_log(
        proxy,
        lambda log: len(internal.findall(log)) >= calls_before + 2,
        "two internal /infer calls answered 200",
    )
    # from outside: no credentials 401, a wrong token 403, the operator's token 200
    url = f"{proxy.url}/infer"
    body = {"captures": [capture_b64]}
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["field"] == "authorization"
    r = httpx.post(url, json=body, headers={"authorization": "Bearer wrong-token"}, timeout=30)
    assert r.status_code == 403 and "the token is not ADMIN_TOKEN" in r.json()["error"]
    r = httpx.post(url, json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    assert r.status_code == 200, r.text
    (item,) = r.json()
    assert item["position"] and item["batch_size"] >= 1


# --- a client that goes away --------------------------------------------------------------------


def test_a_client_gone_mid_body_is_one_info_line_and_a_499_never_a_500(
    server: Server, capture_b64: str
) -> None:
    five_xx = requests_by_status(server, "5..")
    closed = requests_by_status(server, "499")
    gone = metric(server, "rfloc_client_disconnects_total", phase="body")
    pairs = json.dumps({"iq_data": [[[0.01, -0.02]] * 600] * 5}).encode()
    bodies = {
        "/predict": json.dumps({"iq_b64": capture_b64}).encode(),  # streamed to BentoML
        "/predict ": pairs,  # the iq_data fast path buffers the body itself
        "/predict_batch": json.dumps({"iq_b64_samples": [capture_b64] * 4}).encode(),
    }
    ports = {leave_mid_body(server, path.strip(), body): path for path, body in bodies.items()}
    log = wait_for_log(
        server,
        lambda log: all(access_line(port, 499)(log) for port in ports),
        "a 499 access line for each departed client",
    )
    log = settle(server)
    for port, path in ports.items():
        lines = [line for line in log.splitlines() if f"127.0.0.1:{port}" in line]
        assert len(lines) == 2, lines  # one INFO line, one access line
        info, access = lines
        assert "[INFO]" in info
        assert f"went away mid-body: POST {path.strip()} after " in info
        assert "not answered (499)" in info
        assert "(status=499" in access
    assert "Traceback" not in log and "ClientDisconnect" not in log and "[ERROR]" not in log
    assert requests_by_status(server, "5..") == five_xx  # the 5xx alert stays quiet
    assert requests_by_status(server, "499") - closed == 3
    assert metric(server, "rfloc_client_disconnects_total", phase="body") - gone == 3
    r = httpx.post(f"{server.url}/predict", json={"iq_b64": capture_b64}, timeout=60)
    assert r.status_code == 200  # and the worker serves on


def test_a_body_cut_short_by_a_413_logs_no_traceback_and_no_departure(server: Server) -> None:
    five_xx = requests_by_status(server, "5..")
    gone = metric(server, "rfloc_client_disconnects_total")
    status, port = stream_too_much(server, 4 * PREDICT_BYTES)
    assert status == 413
    wait_for_log(server, access_line(port, 413), "the 413 access line")
    log = settle(server)
    assert "Traceback" not in log and "ClientDisconnect" not in log
    mine = [line for line in log.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(mine) == 1 and "(status=413" in mine[0], mine  # its access line, nothing else
    assert requests_by_status(server, "5..") == five_xx
    assert metric(server, "rfloc_client_disconnects_total") == gone


# --- control characters in log lines ------------------------------------------------------------


def test_a_forged_log_line_is_written_escaped_on_one_line(server: Server) -> None:
    status, _, body, port = raw_request(server, b"GET %s HTTP/1.1\r\nHost: test" % FORGED_PATH)
    assert status == 404, body
    log = wait_for_log(server, access_line(port, 404), "the forged request's access line")
    lines = [line for line in log.splitlines() if "FAKE" in line]
    assert len(lines) == 1, lines
    assert "path=/predict\\n2026-11-26T19:20:00+0000 [ERROR] FAKE\\x1b[31m\\r," in lines[0]
    assert not any(line.startswith(FORGED_LINE) for line in log.splitlines())
    assert "\x1b" not in log and "\r" not in log


def test_control_characters_in_headers_reach_the_log_escaped(
    server: Server, capture_b64: str
) -> None:
    """The server refuses CR, LF, ESC and other C0 bytes in a header (400 before the service),
    but takes bytes above 0x7f: read as Latin-1 or UTF-8 they are C1 controls, CSI (0x9b)
    among them, which a terminal obeys as ESC [. Two headers reach log lines: the client
    address a trusted proxy sends (`X-Forwarded-For`, trusted from 127.0.0.1 by uvicorn) in the
    access line and the departure line, and `Content-Type` in the access line."""
    status, _, _, _ = raw_request(
        server, b"POST /ellipse HTTP/1.1\r\nHost: test\r\nX-Note: a\x1b[31mb\r\nContent-Length: 0"
    )
    assert status == 400  # refused by the HTTP parser: never reaches a log line
    forwarded = b"X-Forwarded-For: 203.0.113.9\x9b31mRED\x85X\r\n"
    body = json.dumps({"iq_b64": capture_b64}).encode()
    leave_mid_body(server, "/predict", body, extra=forwarded)
    status, _, _, port = raw_request(
        server,
        b"POST /ellipse HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n"
        b"Content-Type: application/json\xc2\x9b31mGREEN",
        b"{}",
    )
    assert status == 415
    wait_for_log(server, access_line(port, 415), "the 415 access line")
    log = wait_for_log(
        server,
        lambda log: log.count("203.0.113.9\\x9b31mRED\\x85X") == 2,
        "the escaped X-Forwarded-For address in the departure and access lines",
    )
    lines = [line for line in log.splitlines() if "203.0.113.9" in line]
    assert len(lines) == 2 and "went away mid-body" in lines[0] and "status=499" in lines[1]
    (typed,) = [line for line in log.splitlines() if "GREEN" in line]
    assert "type=application/json\\x9b31mGREEN," in typed and f"127.0.0.1:{port}" in typed
    assert "\x9b" not in log and "\x85" not in log and "\x1b" not in log


# --- invented paths do not grow /metrics ------------------------------------------------------


def endpoint_labels(server: Server) -> set[str]:
    """Every `endpoint` label value of BentoML's request metrics on `/metrics`."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        sample.labels["endpoint"]
        for family in text_string_to_metric_families(text)
        if family.name.startswith("bentoml_service_request")
        for sample in family.samples
        if "endpoint" in sample.labels
    }


def test_invented_paths_share_one_metric_label_and_routes_keep_theirs(server: Server) -> None:
    """A scanner's paths are answered 404 in the error shape as before, logged as sent, and
    counted under one `(unmatched)` label: `/metrics` gains no series however many it invents.
    Routes keep their own label; a file under a mounted app counts as `<mount>/*`."""
    invented = [f"/scan-{i:03d}-{'x' * (i % 7)}" for i in range(60)]
    unmatched_before = metric(
        server, "bentoml_service_request_total", endpoint=r"\(unmatched\)", http_response_code="404"
    )
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i, path in enumerate(invented):
            r = client.post(path, json={}) if i % 2 else client.get(path)
            assert r.status_code == 404, (path, r.status_code, r.text)
            body = r.json()
            assert set(body) <= {"error", "field", "detail"} and body["field"] is None, body
        assert client.post("/ellipse", json=ELLIPSE).status_code == 200
        assert client.get("/map/").status_code == 200
        assert client.get("/map/map.js").status_code == 200
        assert client.get("/map/no-such-file.js").status_code == 404
    labels = endpoint_labels(server)
    assert not any(label.startswith("/scan-") for label in labels), sorted(labels)
    assert {"/ellipse", "/map/*", "(unmatched)"} <= labels, sorted(labels)
    unmatched = metric(
        server, "bentoml_service_request_total", endpoint=r"\(unmatched\)", http_response_code="404"
    )
    assert unmatched - unmatched_before == len(invented)
    # the access log still names the path the client sent
    wait_for_log(server, lambda log: f"path={invented[-1]}" in log, "an invented path's line")


# --- the HTTP connection: header size, header deadline, connection cap, malformed HTTP ------------


def worker_peak_rss_kb(server: Server) -> int:
    """The (one) worker's peak resident memory so far, VmHWM: what a burst cost at its worst."""
    (worker,) = [
        p
        for p in psutil.Process(server.process.pid).children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(p.cmdline())
    ]
    status = Path(f"/proc/{worker.pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))


def send_huge_header(server: Server, megabytes: int) -> int:
    """A GET with one header of `megabytes` MiB, sent until the server stops reading; returns
    the status of its answer."""
    with socket.create_connection(_address(server), timeout=60) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: test\r\nX-Big: ")
        piece = b"a" * 65536
        try:
            for _ in range(16 * megabytes):
                sock.sendall(piece)
            sock.sendall(b"\r\n\r\n")
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed by the server after its answer, which is in our receive buffer
        status, _, body = _read_answer(sock)
        if status == 431:
            payload = json.loads(body)
            assert payload["field"] == "headers" and "(MAX_HEADER_BYTES)" in payload["error"]
        return status


def test_a_huge_header_gets_431_and_the_worker_never_holds_it(server: Server) -> None:
    """Four 16 MiB headers at once were all read and answered 200, and the worker's peak grew
    by 98 MB; refused at 64 KiB, they cost it nothing it keeps."""
    refused = metric(server, "rfloc_connections_closed_total", reason="header_bytes")
    peak = worker_peak_rss_kb(server)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(send_huge_header, [server] * 4, [16] * 4))
    assert statuses == [431] * 4
    assert worker_peak_rss_kb(server) - peak < 16 * 1024  # kB: under one header's size
    assert metric(server, "rfloc_connections_closed_total", reason="header_bytes") - refused == 4
    fields = b"\r\n".join(b"X-F%d: v" % i for i in range(100))  # 101 with Host
    status, _, body, _ = raw_request(server, b"GET /readyz HTTP/1.1\r\nHost: test\r\n" + fields)
    assert status == 431
    assert "more than 100 header fields (MAX_HEADERS)" in json.loads(body)["error"]
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200


def test_a_connection_that_stalls_before_its_headers_end_is_closed_at_the_deadline(
    proxy: Server,
) -> None:
    """Nothing, one byte, or a header line every half second: each was held for ever."""
    idle = metric(proxy, "rfloc_connections_closed_total", reason="idle")
    late = metric(proxy, "rfloc_connections_closed_total", reason="header_timeout")
    bound = 10 * HEADER_TIMEOUT_S  # the socket's timeout: the test fails, never hangs
    with socket.create_connection(_address(proxy), timeout=bound) as sock:
        assert sock.recv(4096) == b""  # closed, nothing said: it asked nothing
    with socket.create_connection(_address(proxy), timeout=bound) as sock:
        sock.sendall(b"G")
        status, headers, body = _read_answer(sock)
        assert status == 408 and headers["connection"] == "close"
        payload = json.loads(body)
        assert payload["field"] == "headers" and "(HEADER_TIMEOUT_S)" in payload["error"]
        assert sock.recv(4096) == b""
    with socket.create_connection(_address(proxy), timeout=bound) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: test\r\n")
        lines = 0
        try:
            while lines < 4 * bound:  # 2 per second: well past the deadline
                time.sleep(0.5)
                sock.sendall(b"X-Line-%d: 1\r\n" % lines)
                lines += 1
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert lines < 4 * bound, "a header line every 0.5 s kept the connection open"
        assert _read_answer(sock)[0] == 408
    assert metric(proxy, "rfloc_connections_closed_total", reason="idle") - idle == 1
    assert metric(proxy, "rfloc_connections_closed_total", reason="header_timeout") - late == 2


def test_connections_beyond_the_cap_get_503_with_retry_after_and_the_cap_frees(
    proxy: Server,
) -> None:
    capped = metric(proxy, "rfloc_connections_closed_total", reason="connection_cap")
    held = [socket.create_connection(_address(proxy), timeout=30) for _ in range(CONNECTION_CAP)]
    try:
        status, headers, body, _ = raw_request(proxy, b"GET /readyz HTTP/1.1\r\nHost: test")
    finally:
        for sock in held:
            sock.close()
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    payload = json.loads(body)
    assert payload["field"] is None and "(MAX_CONNECTIONS_PER_WORKER)" in payload["error"]
    for _ in range(100):  # the held ones' closes reach the worker: it serves again
        status, _, _, _ = raw_request(proxy, b"GET /readyz HTTP/1.1\r\nHost: test")
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200
    assert metric(proxy, "rfloc_connections_closed_total", reason="connection_cap") > capped


MALFORMED = {
    "Content-Length with chunked": b"POST /ellipse HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": b"POST /ellipse HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    "a raw non-ASCII path": "GET /caf\u00e9 HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
    "NUL in a header": b"GET /readyz HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    "a folded header": b"GET /readyz HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  b\r\n\r\n",
    # the service is reading this one's body when its second chunk turns out malformed
    "a bad chunk": b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b'Transfer-Encoding: chunked\r\n\r\n2\r\n{"\r\nzz\r\nabc\r\n',
}


def test_malformed_http_is_400_in_the_one_shape_logged_once_and_recorded_as_400(
    server: Server,
) -> None:
    """Each was uvicorn's plain-text 400, logged twice with no client address; the bad chunk
    was recorded 499 "client went away" in the access log and the request metrics."""
    closed = requests_by_status(server, "499")
    bad = requests_by_status(server, "400")
    gone = metric(server, "rfloc_client_disconnects_total")
    ports = {}
    for case, raw in MALFORMED.items():
        with socket.create_connection(_address(server), timeout=60) as sock:
            sock.sendall(raw)
            status, headers, body = _read_answer(sock)
            ports[case] = sock.getsockname()[1]
        assert status == 400 and headers["connection"] == "close", case
        payload = json.loads(body)
        assert payload["field"] is None, case
        assert payload["error"].startswith("request: malformed HTTP ("), payload
    chunked = ports["a bad chunk"]
    wait_for_log(server, access_line(chunked, 400), "the bad chunk's 400 access line")
    log = settle(server)
    for case, port in ports.items():
        mine = [line for line in log.splitlines() if f"127.0.0.1:{port}" in line]
        warnings = [line for line in mine if "[WARNING]" in line]
        assert len(warnings) == 1 and "sent malformed HTTP (" in warnings[0], (case, mine)
        assert len(mine) == (2 if port == chunked else 1), (case, mine)  # + its access line
    assert "Invalid HTTP request received" not in log and "Traceback" not in log
    assert requests_by_status(server, "499") == closed
    assert requests_by_status(server, "400") - bad == 1  # the one the service had begun
    assert metric(server, "rfloc_client_disconnects_total") == gone
