"""What 16 concurrent oversized `/predict` bodies cost the workers, before and after per-route
body budgets.

    python -m benchmarks.oversized [--clients 16] [--megabytes 60] [--rounds 2]

Serves the newest import with `bentoml serve` (2 workers, the default on 2 cores) twice per
round: "before" with `MAX_PREDICT_BYTES=MAX_REQUEST_BYTES` (the old single 64 MiB budget, so a
60 MB body is read, parsed and base64-decoded before its 400) and "after" with the default
(`/predict` takes what its largest valid capture needs). Each sends `clients` concurrent bodies
of `megabytes` MB with a declared `Content-Length`, then as many chunked; reports the answers,
the peak RSS of the busiest worker and of the whole server, the RSS kept afterwards, and the
wall time. Writes `oversized.json` and `oversized.md`.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.compare import (
    RESULTS,
    answer_counts,
    bentoml_serve,
    free_port,
    numeric_medians,
    run_meta,
    write_results,
)
from utils.api.body_limits import predict_body_bytes
from utils.config import get_settings
from utils.dsp.feature_spec import FeatureSpec


class WorkerRSS:
    """Samples each process of a server's tree every 50 ms: the busiest worker's peak RSS, the
    whole tree's peak, and the tree's RSS now."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.worker_peak = 0
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> tuple[int, int]:
        procs = [self.root, *self.root.children(recursive=True)]
        sizes = []
        for proc in procs:
            try:
                sizes.append(proc.memory_info().rss)
            except psutil.Error:
                pass
        return max(sizes[1:] or [0]), sum(sizes)

    def _run(self) -> None:
        while not self._stop.is_set():
            worker, total = self.now()
            self.worker_peak = max(self.worker_peak, worker)
            self.total_peak = max(self.total_peak, total)
            self._stop.wait(0.05)

    def __enter__(self) -> WorkerRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    yield b'{"iq_b64": "'
    for _ in range(0, total, size):
        yield b"A" * size
    yield b'"}'


def post(url: str, body: bytes | None, total: int) -> str:
    """One oversized POST; its status, or how the connection ended when no answer came."""
    content: Any = body if body is not None else _chunks(total)
    try:
        r = httpx.post(
            url, content=content, headers={"content-type": "application/json"}, timeout=300
        )
        return str(r.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def attack(url: str, clients: int, megabytes: int) -> dict[str, Any]:
    total = megabytes * 1_000_000
    body = b'{"iq_b64": "' + b"A" * total + b'"}'
    answers: Counter[str] = Counter()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers.update(pool.map(lambda _: post(url, body, total), range(clients)))
        answers.update(
            "chunked " + a for a in pool.map(lambda _: post(url, None, total), range(clients))
        )
    return {"answers": dict(answers), "seconds": time.perf_counter() - started}


def one_server(
    name: str, env: dict[str, str], clients: int, megabytes: int, logs: Path
) -> dict[str, Any]:
    port = free_port()
    with bentoml_serve("service:Localization", port, env, logs / f"{name}.log") as proc:
        url = f"http://127.0.0.1:{port}/predict"
        rss = WorkerRSS(proc.pid)
        time.sleep(1.0)
        worker_before, total_before = rss.now()
        with rss:
            result = attack(url, clients, megabytes)
        time.sleep(2.0)
        worker_after, total_after = rss.now()
        healthy = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    mb = 2**20
    return {
        "name": name,
        **result,
        "worker_rss_before_mb": round(worker_before / mb),
        "worker_rss_peak_mb": round(rss.worker_peak / mb),
        "worker_rss_after_mb": round(worker_after / mb),
        "server_rss_before_mb": round(total_before / mb),
        "server_rss_peak_mb": round(rss.total_peak / mb),
        "server_rss_after_mb": round(total_after / mb),
        "ready_after": healthy,
    }


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Oversized /predict bodies: {meta['clients']} concurrent {meta['megabytes']} MB bodies "
        "declared, then as many chunked (2 workers)",
        "",
        f"{meta['timestamp']}, Python {meta['python']}, {meta['cpus']} CPUs; median of "
        f"{meta['rounds']} rounds, before and after alternating. /predict budget after: "
        f"{result['predict_budget_bytes']} bytes.",
        "",
        "| | answers | busiest worker peak RSS | server peak RSS | server RSS after | wall time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in ("before", "after"):
        row = result["summary"][name]
        lines.append(
            f"| {name} | {row['answers']} | {row['worker_rss_peak_mb']:.0f} MB | "
            f"{row['server_rss_peak_mb']:.0f} MB | {row['server_rss_after_mb']:.0f} MB | "
            f"{row['seconds']:.1f} s |"
        )
    ratio = result["ratios"]
    lines += [
        "",
        f"after / before: busiest worker peak {ratio['worker_rss_peak']:.2f}x, server peak "
        f"{ratio['server_rss_peak']:.2f}x, wall time {ratio['seconds']:.2f}x.",
    ]
    return "\n".join(lines)


def run(clients: int, megabytes: int, rounds: int, out: Path | None) -> dict[str, Any]:
    settings = get_settings()
    configs = {
        "before": {"MAX_PREDICT_BYTES": str(settings.max_request_bytes)},
        "after": {},
    }
    rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as logs:
        for i in range(rounds):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for name in order:
                env = {"SERVICE_WORKERS": "2", "REDIS_URL": "", **configs[name]}
                row = one_server(name, env, clients, megabytes, Path(logs))
                print(name, row)
                rows[name].append(row)
    summary = {}
    for name, runs in rows.items():
        med = numeric_medians(runs)
        med["answers"] = answer_counts(runs[-1]["answers"])
        summary[name] = med
    result = {
        "meta": run_meta(clients=clients, megabytes=megabytes, rounds=rounds, workers=2),
        "predict_budget_bytes": predict_body_bytes(
            settings.max_samples_per_capture, FeatureSpec().n_channels
        ),
        "rounds": rows,
        "summary": summary,
        "ratios": {
            key: summary["after"][key] / summary["before"][key]
            for key in ("worker_rss_peak_mb", "server_rss_peak_mb", "seconds")
        },
    }
    result["ratios"] = {k.removesuffix("_mb"): v for k, v in result["ratios"].items()}
    write_results(out, "oversized", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--megabytes", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.clients, args.megabytes, args.rounds, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
