"""Soak test: locust at moderate load for a while, errors and server RSS over time.

    python -m benchmarks.soak [--duration 600] [--users 16] [--out DIR]
    (or: make soak DURATION=600)

Starts its own `bentoml serve` on the newest import (or BENTOML_HOME/BENTO_MODEL_TAG as set),
drives it with `locustfile.py`, samples the RSS of the server's process tree every second and
writes `soak.json` (+ locust CSVs). Growth is judged after a warm-up (first 20 % of the run),
when caches and allocator pools have reached their working size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.compare import RESULTS, bentoml_serve, free_port, import_model_into
from utils.config import PROJECT_ROOT, get_settings


def _tree_rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


def soak(
    duration_s: int, users: int, workers: int, out: Path | None, registry_uri: str | None = None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rfloc-soak-"))
    home = work / "bentoml"
    import_model_into(home, registry_uri)
    port = int(os.environ.get("SOAK_PORT", "0")) or free_port()
    env = {
        "BENTOML_HOME": str(home),
        "SERVICE_WORKERS": str(workers),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    samples: list[tuple[float, float]] = []
    with bentoml_serve(
        "service:Localization",
        port,
        env,
        work / "serve.log",
    ) as proc:
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((round(time.monotonic() - started, 1), _tree_rss_mb(proc.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        csv_prefix = (out or work) / "soak_locust"
        (out or work).mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                "locustfile.py",
                "--headless",
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                f"{duration_s}s",
                "--host",
                f"http://127.0.0.1:{port}",
                "--csv",
                str(csv_prefix),
                "--only-summary",
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=duration_s + 300,
        )
        stop.set()
        sampler.join()
    stats = _aggregate(Path(f"{csv_prefix}_stats.csv"))
    warm = [rss for t, rss in samples if t >= 0.2 * duration_s] or [rss for _, rss in samples]
    result = {
        "duration_s": duration_s,
        "users": users,
        "workers": workers,
        "requests": stats.get("requests", 0),
        "failures": stats.get("failures", 0),
        "rps": stats.get("rps", 0.0),
        "locust_exit_code": done.returncode,
        "rss_mb_start": round(samples[0][1], 1) if samples else None,
        "rss_mb_after_warmup": round(warm[0], 1) if warm else None,
        "rss_mb_end": round(samples[-1][1], 1) if samples else None,
        "rss_mb_max": round(max(r for _, r in samples), 1) if samples else None,
        "rss_growth_after_warmup_mb": round(warm[-1] - warm[0], 1) if warm else None,
        "rss_series": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rss_series"}, indent=2))
    if out is not None:
        (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _aggregate(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("Name") == "Aggregated":
            return {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 1),
            }
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=600, help="seconds")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = soak(
        args.duration,
        args.users,
        args.workers,
        args.out,
        args.tracking_uri or get_settings().mlflow_tracking_uri,
    )
    return 0 if result["failures"] == 0 and result["locust_exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
