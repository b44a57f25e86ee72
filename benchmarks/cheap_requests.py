"""What cheap requests cost the server, and what they do to an ordinary `/predict` client.

    python -m benchmarks.cheap_requests [--requests 40] [--seconds 10] [--kills 5] [--out DIR]

Serves the newest import with `bentoml serve` (2 workers, no cache), sends /predict for 3 s
(every series it writes exists) and measures:

1. server CPU per request (the process tree's user + system time over `requests` requests
   at c=1, divided by their number) and the median latency of `GET /metrics`,
   `GET /model/info`, `GET /docs.json` and `/ellipse` with 4096 points;
2. an ordinary `/predict` client (c=1, iq_b64) for `seconds`: its p50 / p95 alone, then
   while 16 clients hammer `/metrics`, then while they hammer `/model/info`;
3. `GET /metrics` and `GET /model/info` again after `kills` workers were killed (SIGKILL)
   and restarted: the Prometheus files a dead worker leaves behind.

Writes `cheap_requests.json` and `cheap_requests.md`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.compare import (
    RESULTS,
    bentoml_serve,
    free_port,
    run_meta,
    tree_cpu_seconds,
    write_results,
)
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

ELLIPSE = {"latitude": 45.0, "longitude": 7.7, "sigma_x": 300.0, "sigma_y": 200.0}
REQUESTS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "GET /metrics": ("GET", "/metrics", None),
    "GET /model/info": ("GET", "/model/info", None),
    "GET /docs.json": ("GET", "/docs.json", None),
    "POST /ellipse (4096 points)": ("POST", "/ellipse", {**ELLIPSE, "num_points": 4096}),
}


def per_request(url: str, pid: int, n: int) -> dict[str, dict[str, float]]:
    """{request: {cpu_ms, p50_ms}} at c=1 (after 3 warm-up requests each)."""
    out = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, (method, path, body) in REQUESTS.items():
            for _ in range(3):
                client.request(method, path, json=body).raise_for_status()
            times = []
            cpu = tree_cpu_seconds(pid)
            for _ in range(n):
                started = time.perf_counter()
                client.request(method, path, json=body).raise_for_status()
                times.append(time.perf_counter() - started)
            cpu = tree_cpu_seconds(pid) - cpu
            out[name] = {"cpu_ms": 1000 * cpu / n, "p50_ms": 1000 * statistics.median(times)}
    return out


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def predict_latencies(url: str, body: dict[str, Any], seconds: float) -> dict[str, float]:
    times = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.post("/predict", json=body).raise_for_status()
            times.append(time.perf_counter() - started)
    return {
        "n": len(times),
        "p50_ms": 1000 * quantile(times, 0.5),
        "p95_ms": 1000 * quantile(times, 0.95),
    }


def under_hammer(
    url: str, body: dict[str, Any], seconds: float, path: str | None, clients: int = 16
) -> dict[str, float]:
    """The /predict client's latencies while `clients` GET `path` in a loop (None: alone)."""
    stop = threading.Event()
    counts = [0] * clients

    def hammer(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                client.get(path or "/").raise_for_status()
                counts[i] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(clients if path else 0)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0 if path else 0.0)
        result = predict_latencies(url, body, seconds)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {**result, "hammer_requests": sum(counts)}


def kill_workers(url: str, kills: int) -> None:
    """SIGKILL a worker `kills` times, each time waiting until its successor has loaded the
    model (it reports on /model/info) and the CPU of its start is spent."""
    for _ in range(kills):
        workers = httpx.get(f"{url}/model/info", timeout=30).json()["workers"]
        victim = workers[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                now = httpx.get(f"{url}/model/info", timeout=10)
            except httpx.HTTPError:
                continue
            pids = {w["pid"] for w in now.json()["workers"]} if now.is_success else set()
            if victim not in pids and len(pids) == len(workers):
                break
    time.sleep(3.0)


def run(n: int, seconds: float, kills: int, out: Path | None) -> dict[str, Any]:
    env = {"SERVICE_WORKERS": "2", "REDIS_URL": ""}
    with tempfile.TemporaryDirectory() as logs:
        port = free_port()
        with bentoml_serve("service:Localization", port, env, Path(logs) / "serve.log") as proc:
            url = f"http://127.0.0.1:{port}"
            info = httpx.get(f"{url}/model/info", timeout=30).json()
            spec = FeatureSpec.model_validate(info["feature_spec"])
            body = {
                "iq_b64": encode_capture(generate_scenes(1, seed=5, spec=spec).iq[0]),
                "cache_enabled": False,
            }
            predict_latencies(url, body, 3.0)  # warm: every series a /predict writes
            costs = per_request(url, proc.pid, n)
            print(costs)
            interference = {
                name: under_hammer(url, body, seconds, path)
                for name, path in (
                    ("alone", None),
                    ("/metrics", "/metrics"),
                    ("/model/info", "/model/info"),
                )
            }
            print(interference)
            kill_workers(url, kills)
            after = per_request(url, proc.pid, n)
            after_kills = {k: after[k] for k in ("GET /metrics", "GET /model/info")}
            print("after kills", after_kills)
    result = {
        "meta": run_meta(requests=n, seconds=seconds, kills=kills, workers=2),
        "per_request": costs,
        "predict_c1": interference,
        "after_kills": after_kills,
    }
    write_results(out, "cheap_requests", result, markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Cheap requests: server CPU each, and a /predict client beside them "
        f"({meta['workers']} workers)",
        "",
        f"{meta['timestamp']}, Python {meta['python']}, {meta['cpus']} CPUs; "
        f"{meta['requests']} requests each at c=1.",
        "",
        "| request | server CPU | p50 |",
        "|---|---:|---:|",
    ]
    for name, row in result["per_request"].items():
        lines.append(f"| {name} | {row['cpu_ms']:.1f} ms | {row['p50_ms']:.1f} ms |")
    for name, row in result["after_kills"].items():
        lines.append(
            f"| {name} after {meta['kills']} workers were killed | {row['cpu_ms']:.1f} ms | "
            f"{row['p50_ms']:.1f} ms |"
        )
    lines += [
        "",
        f"A /predict client (c=1, iq_b64, {meta['seconds']:g} s) while 16 clients hammer:",
        "",
        "| beside it | /predict p50 | /predict p95 | hammer requests |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["predict_c1"].items():
        lines.append(
            f"| {name} | {row['p50_ms']:.1f} ms | {row['p95_ms']:.1f} ms | "
            f"{row['hammer_requests']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.requests, args.seconds, args.kills, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
