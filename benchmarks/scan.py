"""What a path scanner does to `/metrics`: BentoML's raw-path labels against route labels.

    python -m benchmarks.scan [--paths 10000] [--clients 16] [--rounds 2] [--workers 2]

Serves the newest import with `bentoml serve` (`workers` workers) twice per round, alternating:
"raw" with `METRICS_ROUTE_LABELS=false` (BentoML's `endpoint=<path as sent>`) and "route" with
the default (utils/asgi/route_labels.py). Each is scanned by `clients` clients sending `paths`
distinct invented paths (GET, as scanners do; each answered 404), then scraped five times.
Reports the `/metrics` size and sample lines before and after the scan, the median scrape
time, the workers' RSS and the size of the Prometheus multiprocess files. Writes `scan.json`
and `scan.md`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
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

MB = 2**20


def scrape(url: str, times: int = 5) -> dict[str, float]:
    """`/metrics` bytes and sample lines, and the median of `times` scrape times (ms)."""
    seconds, text = [], ""
    for _ in range(times):
        started = time.perf_counter()
        text = httpx.get(f"{url}/metrics", timeout=120).text
        seconds.append(time.perf_counter() - started)
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return {
        "bytes": len(text.encode()),
        "samples": samples,
        "scrape_ms": 1000 * statistics.median(seconds),
    }


def multiproc_bytes(pid: int) -> int:
    """Size of the server's Prometheus multiprocess folder (PROMETHEUS_MULTIPROC_DIR)."""
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            folder = proc.environ().get("PROMETHEUS_MULTIPROC_DIR")
        except psutil.Error:
            continue
        if folder and Path(folder).is_dir():
            return sum(f.stat().st_size for f in Path(folder).glob("*.db"))
    return 0


def workers_rss(pid: int) -> int:
    total = 0
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def scan(url: str, paths: int, clients: int) -> dict[str, Any]:
    answers: Counter[int] = Counter()

    def one(i: int, client: httpx.Client) -> int:
        return client.get(f"/scan/{i:06d}-{i * 7919 % 10007:05d}").status_code

    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(clients) as pool:
        answers.update(pool.map(lambda i: one(i, client), range(paths)))
    return {"answers": dict(answers), "scan_seconds": time.perf_counter() - started}


def one_server(name: str, env: dict[str, str], paths: int, clients: int, logs: Path) -> dict:
    port = free_port()
    with bentoml_serve("service:Localization", port, env, logs / f"{name}.log") as proc:
        url = f"http://127.0.0.1:{port}"
        before = scrape(url)
        rss_before, files_before = workers_rss(proc.pid), multiproc_bytes(proc.pid)
        result = scan(url, paths, clients)
        after = scrape(url)
        rss_after, files_after = workers_rss(proc.pid), multiproc_bytes(proc.pid)
        ready = httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    return {
        "name": name,
        **result,
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in after.items()},
        "workers_rss_before_mb": rss_before / MB,
        "workers_rss_after_mb": rss_after / MB,
        "multiproc_files_before_mb": files_before / MB,
        "multiproc_files_after_mb": files_after / MB,
        "ready_after": ready,
    }


COLUMNS = (
    ("samples_before", "samples before", "{:.0f}"),
    ("samples_after", "samples after", "{:.0f}"),
    ("bytes_after", "/metrics after", "{:.0f} B"),
    ("scrape_ms_before", "scrape before", "{:.1f} ms"),
    ("scrape_ms_after", "scrape after", "{:.1f} ms"),
    ("workers_rss_after_mb", "workers' RSS after", "{:.0f} MB"),
    ("multiproc_files_after_mb", "metric files after", "{:.1f} MB"),
)


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# A path scanner against /metrics: {meta['paths']} invented paths, "
        f"{meta['clients']} clients, {meta['workers']} workers",
        "",
        f"{meta['timestamp']}, Python {meta['python']}, {meta['cpus']} CPUs; median of "
        f"{meta['rounds']} rounds, raw and route alternating. raw = BentoML's labels "
        "(`METRICS_ROUTE_LABELS=false`), route = the default.",
        "",
        "| labels | answers | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for name in ("raw", "route"):
        row = result["summary"][name]
        cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | {row['answers']} | " + " | ".join(cells) + " |")
    ratio = result["ratios"]
    lines += [
        "",
        f"route / raw after the scan: samples {ratio['samples_after']:.4f}x, scrape time "
        f"{ratio['scrape_ms_after']:.3f}x, metric files {ratio['multiproc_files_after_mb']:.3f}x.",
    ]
    return "\n".join(lines)


def run(paths: int, clients: int, rounds: int, workers: int, out: Path | None) -> dict[str, Any]:
    configs = {"raw": {"METRICS_ROUTE_LABELS": "false"}, "route": {}}
    rows: dict[str, list[dict[str, Any]]] = {"raw": [], "route": []}
    with tempfile.TemporaryDirectory() as logs:
        for i in range(rounds):
            for name in ("raw", "route") if i % 2 == 0 else ("route", "raw"):
                env = {"SERVICE_WORKERS": str(workers), "REDIS_URL": "", **configs[name]}
                row = one_server(name, env, paths, clients, Path(logs))
                print(name, {k: v for k, v in row.items() if k != "name"})
                rows[name].append(row)
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in rows.items():
        med = numeric_medians(runs)
        med["answers"] = answer_counts(runs[-1]["answers"])
        med["ready_after"] = all(r["ready_after"] for r in runs)
        summary[name] = med
    keys = ("samples_after", "scrape_ms_after", "multiproc_files_after_mb", "bytes_after")
    result = {
        "meta": run_meta(paths=paths, clients=clients, rounds=rounds, workers=workers),
        "rounds": rows,
        "summary": summary,
        "ratios": {k: summary["route"][k] / summary["raw"][k] for k in keys},
    }
    write_results(out, "scan", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.paths, args.clients, args.rounds, args.workers, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
