"""Per-route body budgets (`utils/api/body_limits.py`) and the body deadline
(`utils/asgi/body_deadline.py`), without a server."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from utils.api.body_limits import (
    OTHER_FIELDS_BYTES,
    SMALL_BODY_BYTES,
    RouteBodyLimits,
    predict_body_bytes,
)
from utils.asgi.body_deadline import BodyDeadline
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

MiB = 1 << 20


def test_the_largest_valid_predict_fits_its_budget() -> None:
    """The worst case of compact JSON: every value at the longest shortest-repr float, plus a
    real capture's `json.dumps` (float32 values widened to float64 reprs), fit the budget."""
    spec = FeatureSpec()
    samples = 4096
    worst = json.dumps(
        {
            "iq_data": [[[-2.2250738585072014e-308] * 2] * samples] * spec.n_channels,
            "session_id": "\u2028" * 256,  # escaped as \\u2028: 6 bytes each
            "confidence_level": 0.9500000000000001,
            "include_geojson": False,
            "cache_enabled": True,
        }
    ).encode()
    assert len(worst) <= predict_body_bytes(samples, spec.n_channels)
    capture = generate_scenes(1, seed=5, spec=spec).iq[0][:, :samples]
    pairs = np.stack([capture.real, capture.imag], axis=-1).astype(float).tolist()
    real = json.dumps({"iq_data": pairs}).encode()
    assert len(real) < predict_body_bytes(samples, spec.n_channels) - OTHER_FIELDS_BYTES


def test_routes_get_their_own_budget_capped_by_max_request_bytes() -> None:
    limits = RouteBodyLimits(64 * MiB, 65_536)
    assert limits("/predict") == (64 * MiB, "MAX_REQUEST_BYTES")  # before a model is loaded
    limits.set_receivers(5)
    size, why = limits("/predict")
    assert size == predict_body_bytes(65_536, 5) < 64 * MiB
    assert "MAX_SAMPLES_PER_CAPTURE" in why and "5 receivers" in why
    limits.set_receivers(3)  # a reload to a model with fewer receivers
    assert limits("/predict")[0] == predict_body_bytes(65_536, 3)
    assert limits("/ellipse") == (SMALL_BODY_BYTES, "a few fields")
    assert limits("/predict_batch") == (64 * MiB, "MAX_REQUEST_BYTES")
    assert limits("/infer") == (64 * MiB, "MAX_REQUEST_BYTES")
    small = RouteBodyLimits(8 * MiB, 65_536)
    small.set_receivers(5)
    assert small("/predict") == (8 * MiB, "MAX_REQUEST_BYTES")
    override = RouteBodyLimits(64 * MiB, 65_536, predict_override=MiB)
    override.set_receivers(5)
    assert override("/predict") == (MiB, "MAX_PREDICT_BYTES")


# --- the body deadline ----------------------------------------------------------------------


def serve(chunks: list[tuple[float, bytes, bool]], timeout_s: float) -> tuple[list[dict], dict]:
    """Run BodyDeadline around an app that reads the whole body and echoes its length.
    `chunks`: (delay before, bytes, more_body); after the last one the client stalls."""
    sent: list[dict] = []
    seen: dict = {}

    async def receive() -> dict:
        if not chunks:
            await asyncio.sleep(3600)  # a client that never sends the rest
        delay, body, more = chunks.pop(0)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": body, "more_body": more}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope: dict, receive_: object, send_: object) -> None:
        body = b""
        while True:
            message = await receive_()  # type: ignore[operator]
            if message["type"] == "http.disconnect":
                seen["disconnect"] = True
                await send_({"type": "http.response.start", "status": 500, "headers": []})  # type: ignore[operator]
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen["body"] = body
        await send_({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send_({"type": "http.response.body", "body": str(len(body)).encode()})  # type: ignore[operator]

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    asyncio.run(BodyDeadline(app, timeout_s)(scope, receive, send))
    return sent, seen


def test_a_stalled_body_gets_408_and_close_at_the_deadline() -> None:
    started = time.monotonic()
    sent, seen = serve([(0.0, b'{"iq', True)], timeout_s=0.3)
    took = time.monotonic() - started
    assert 0.25 < took < 2.0
    start, body = sent  # the app's own answer to the disconnect is dropped
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    payload = json.loads(body["body"])
    assert payload["field"] is None and "BODY_TIMEOUT_S" in payload["error"]
    assert payload["detail"][0]["type"] == "body_timeout"
    assert seen == {"disconnect": True}


def test_a_slow_body_that_ends_in_time_is_served() -> None:
    chunks = [(0.05, b"x" * 10, True) for _ in range(5)] + [(0.05, b"y", False)]
    sent, seen = serve(chunks, timeout_s=2.0)
    assert sent[0]["status"] == 200 and seen["body"] == b"x" * 50 + b"y"


def test_a_trickle_is_cut_at_the_deadline_not_per_chunk() -> None:
    """Each chunk arrives well within the deadline; the body as a whole does not."""
    chunks = [(0.1, b"x", True) for _ in range(100)]
    started = time.monotonic()
    sent, _ = serve(chunks, timeout_s=0.5)
    assert sent[0]["status"] == 408 and time.monotonic() - started < 2.0
