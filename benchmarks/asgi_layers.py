"""What the service's own ASGI layers cost a request, in process, against the app alone.

    python -m benchmarks.asgi_layers [--requests 3000] [--rounds 5]

The stack is `utils/asgi/stack.py`'s, exactly as `service.py` adds it, around a stand-in app
that reads the body and answers 1 kB of JSON (no BentoML, no model, no sockets: only what the
layers add). Two requests: an `iq_b64` `/predict` body of one demo-model capture (about
450 kB, delivered in 64 KiB chunks as uvicorn hands them over) and a small `/ellipse` body.
Per round, interleaved: the app alone (the baseline), the whole stack, and the stack with
each layer left out in turn; medians over rounds. Writes `asgi_layers.json` and
`asgi_layers.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from benchmarks.compare import RESULTS, run_meta, write_results
from utils.api.body_limits import RouteBodyLimits
from utils.api.decoding import encode_capture
from utils.asgi import stack
from utils.config import get_settings
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.serving.arrivals import Arrivals

CHUNK = 65536
ANSWER = json.dumps({"position": {"latitude": 45.0, "longitude": 7.6}, "pad": "x" * 960}).encode()


async def stand_in(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, as BentoML does, and answers."""
    while True:
        message = await receive()
        if not message.get("more_body", False):
            break
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


def build(layers: list[stack.Layer], without: str | None = None) -> ASGIApp:
    app: ASGIApp = stand_in
    for cls, options in reversed(layers):
        if cls.__name__ != without:
            app = cls(app, **options)
    return app


async def one(app: ASGIApp, path: str, body: bytes, port: int) -> None:
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        if sent < len(chunks):
            sent += 1
            more = sent < len(chunks)
            return {"type": "http.request", "body": chunks[sent - 1], "more_body": more}
        await asyncio.sleep(3600)  # a connection that stays open: never reached
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
        "client": ("127.0.0.1", port),
        "server": ("127.0.0.1", 3000),
        "state": {},
    }
    await app(scope, receive, send)


async def per_request_us(app: ASGIApp, path: str, body: bytes, requests: int) -> float:
    for i in range(min(200, requests)):
        await one(app, path, body, 40000 + i % 64)
    started = time.perf_counter()
    for i in range(requests):
        await one(app, path, body, 40000 + i % 64)
    return 1e6 * (time.perf_counter() - started) / requests


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# The service's ASGI layers, in process, against the app alone",
        "",
        f"{meta['timestamp']}, Python {meta['python']}; {meta['requests']} requests per "
        f"measurement, median of {meta['rounds']} interleaved rounds. Cost = µs per request "
        "over the stand-in app alone.",
        "",
        "| request | app alone | all layers | layers' cost |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["requests"].items():
        lines.append(
            f"| {name} | {row['alone_us']:.1f} µs | {row['stack_us']:.1f} µs | "
            f"{row['stack_us'] - row['alone_us']:.1f} µs |"
        )
    names = list(result["requests"])
    lines += [
        "",
        "What leaving one layer out saves (µs per request; within about ±10 µs of noise):",
        "",
        "| layer | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for layer in result["layers"]:
        cells = [f"{result['requests'][n]['saved_us'][layer]:.1f}" for n in names]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(requests: int, rounds: int, out: Path | None) -> dict[str, Any]:
    settings = get_settings()
    spec = FeatureSpec()
    limits = RouteBodyLimits(
        settings.max_request_bytes, settings.max_samples_per_capture, settings.max_predict_bytes
    )
    limits.set_receivers(spec.n_channels)
    layers = stack.layers(settings, limits, Arrivals())
    names = [cls.__name__ for cls, _ in layers]
    capture = encode_capture(generate_scenes(1, seed=3, spec=spec).iq[0])
    bodies = {
        "iq_b64 /predict": ("/predict", json.dumps({"iq_b64": capture}).encode()),
        "/ellipse": (
            "/ellipse",
            json.dumps({"latitude": 45, "longitude": 7.6, "sigma_x": 90, "sigma_y": 40}).encode(),
        ),
    }
    variants: dict[str | None, ASGIApp] = {None: build(layers)}
    variants.update({name: build(layers, without=name) for name in names})

    async def measure() -> dict[str, dict[str, list[float]]]:
        times: dict[str, dict[str, list[float]]] = {n: {} for n in bodies}
        for _ in range(rounds):
            for label, (path, body) in bodies.items():
                row = times[label]
                row.setdefault("alone", []).append(
                    await per_request_us(stand_in, path, body, requests)
                )
                for without, app in variants.items():
                    key = "stack" if without is None else without
                    row.setdefault(key, []).append(await per_request_us(app, path, body, requests))
        return times

    times = asyncio.run(measure())
    result_requests = {}
    for label, row in times.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        result_requests[label] = {
            "body_bytes": len(bodies[label][1]),
            "alone_us": med["alone"],
            "stack_us": med["stack"],
            "saved_us": {n: med["stack"] - med[n] for n in names},
        }
    result = {
        "meta": run_meta(requests=requests, rounds=rounds, chunk_bytes=CHUNK),
        "layers": names,
        "requests": result_requests,
    }
    write_results(out, "asgi_layers", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.requests, args.rounds, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
