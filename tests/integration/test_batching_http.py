"""The greedy batcher through a real server: batches form under load, a lone request after a
burst is dispatched alone and at once, as on a fresh server (read from `/metrics`, not timed),
and overload is a 503 with `Retry-After`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.serving import Server, start_server
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes


@pytest.fixture(scope="module")
def bodies() -> list[dict]:
    scenes = generate_scenes(16, seed=404, spec=FeatureSpec()).iq
    return [{"iq_b64": encode_capture(c), "cache_enabled": False} for c in scenes]


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    srv = start_server(home, home / "greedy.log", env={"SERVICE_WORKERS": "1"})
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]


def metric(server: Server, sample: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def burst(url: str, bodies: list[dict], n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=n)
    ) as client:
        return list(
            await asyncio.gather(
                *(client.post("/predict", json=bodies[i % len(bodies)]) for i in range(n))
            )
        )


def test_after_a_burst_a_lone_request_is_dispatched_as_when_fresh(
    server: Server, bodies: list[dict]
) -> None:
    # Structural, not timed: an "idle" batch left the moment its one request arrived (no
    # deliberate wait, no queue ahead); CORK's hangover is a deliberate wait, which this excludes.
    idle = 'rfloc_batches_total{reason="idle"}'
    alone = 'rfloc_batch_size_bucket{le="1.0"}'
    # fresh: a lone request leaves at once, as an idle batch of one
    before = (metric(server, idle), metric(server, alone))
    assert httpx.post(f"{server.url}/predict", json=bodies[0], timeout=60).status_code == 200
    assert (metric(server, idle), metric(server, alone)) == (before[0] + 1, before[1] + 1)
    # a burst: 64 concurrent requests queue behind running batches
    responses = asyncio.run(burst(server.url, bodies, 64))
    assert [r.status_code for r in responses] == [200] * 64
    queued = metric(server, 'rfloc_batches_total{reason="queued"}') + metric(
        server, 'rfloc_batches_total{reason="full"}'
    )
    assert queued > 0, "the burst formed batches behind the one in flight"
    assert metric(server, 'rfloc_batch_size_bucket{le="1.0"}') < metric(
        server, "rfloc_batch_size_count"
    ), "some batches held more than one sample"
    # after the burst: the next lone request is again an idle batch with no queue wait
    after = (metric(server, idle), metric(server, alone))
    for body in bodies[:3]:
        assert httpx.post(f"{server.url}/predict", json=body, timeout=60).status_code == 200
    assert (metric(server, idle), metric(server, alone)) == (after[0] + 3, after[1] + 3)


# Before the overload test: it starts a second server on the same BentoML home, whose start
# empties the Prometheus folder this module's server writes its metrics to.


def sample_sum(server: Server, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (any others too)."""
    total = 0.0
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def send_and_leave(url: str, body: bytes) -> None:
    """One `/predict` over a raw socket that closes right after its body: the body follows the
    server's `100 Continue`, so the service has begun reading it when the client leaves."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
    writer.write(body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_requests_whose_clients_left_while_queued_are_not_computed(
    server: Server, bodies: list[dict]
) -> None:
    sent = 48
    queued = 'rfloc_client_disconnects_total{phase="queued"}'
    before = {
        "queued": metric(server, queued),
        "inferences": metric(server, "rfloc_model_inferences_total"),
        "handled": sample_sum(server, "bentoml_service_request_total", endpoint="/predict"),
    }
    body = json.dumps(bodies[0]).encode()

    async def leave_all() -> None:
        await asyncio.gather(*(send_and_leave(server.url, body) for _ in range(sent)))

    asyncio.run(leave_all())
    # every request has ended (answered to nobody) once BentoML has recorded all of them
    deadline = time.monotonic() + 120
    while (
        sample_sum(server, "bentoml_service_request_total", endpoint="/predict")
        < before["handled"] + sent
    ):
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)
    skipped = metric(server, queued) - before["queued"]
    computed = metric(server, "rfloc_model_inferences_total") - before["inferences"]
    assert skipped >= 1, "no request was dropped from the queue when its client left"
    assert computed < sent and computed + skipped <= sent
    assert "Traceback" not in server.log()
    # the service goes on: a client that stays is answered
    assert httpx.post(f"{server.url}/predict", json=bodies[1], timeout=60).status_code == 200


def test_overload_answers_503_with_retry_after(
    home: Path, tmp_path: Path, bodies: list[dict]
) -> None:
    # a wait budget of 6 ms (0.0001 x 60 s): a burst of 48 cannot all fit
    srv = start_server(
        home,
        tmp_path / "overload.log",
        env={"SERVICE_WORKERS": "1", "BATCH_WAIT_BUDGET_SHARE": "0.0001"},
    )
    try:
        asyncio.run(burst(srv.url, bodies, 8))  # measure a batch duration first
        responses = asyncio.run(burst(srv.url, bodies, 48))
        codes = {r.status_code for r in responses}
        assert codes <= {200, 503} and 503 in codes and 200 in codes, codes
        refused = next(r for r in responses if r.status_code == 503)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"].startswith("overloaded: the batch queue is")
        assert refused.json()["field"] is None
        assert metric(srv, "rfloc_overloaded_total") == sum(r.status_code == 503 for r in responses)
    finally:
        srv.stop()
