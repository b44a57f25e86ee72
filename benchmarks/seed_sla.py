"""The seed's own SLA: heimdall's Phase 6 load test, at 100 concurrent clients.

    python -m benchmarks.seed_sla [--clients 100] [--seconds 30] [--tracking-uri URI --label L]

heimdall's load test asks, at 100 concurrent clients, for p95 under 500 ms, p99 under 750 ms and
more than 99 % success. This runs it against this service as a user starts it
(`bentoml serve service:Localization`, default settings, 2 workers), with the seed's own body:
`iq_data`, 5 receivers x 2048 `[I, Q]` pairs (about 0.5 MB of JSON), `cache_enabled: false`;
then the same captures as `iq_b64`. The load generator (`wrk`, 2 threads, 8 distinct captures
in turn) runs on the same cores as the server.

Per encoding: a warm-up, "fresh" (the server's first minute), a burst of 2x the clients (wrk
stops with requests in flight, as a stopped load generator does), then "after burst". Every row
says whether it meets each part of the SLA. Writes `seed_sla[-label].json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compare import (
    RESULTS,
    bentoml_serve,
    free_port,
    import_model_into,
    model_spec,
    run_meta,
    tree_cpu_seconds,
    write_results,
)
from benchmarks.peers.run import wrk
from utils.api.decoding import encode_capture
from utils.dsp.synthetic import generate_scenes

#: heimdall's Phase 6 targets
P95_MS = 500.0
P99_MS = 750.0
SUCCESS = 0.99
#: the seed clients' capture: 2048 [I, Q] pairs per receiver
SEED_SAMPLES = 2048


def bodies(spec: Any, count: int, work: Path) -> dict[str, list[Path]]:
    """`count` seed-format captures, written once as `iq_data` and as `iq_b64` bodies."""
    scenes = generate_scenes(count, seed=6060, spec=spec, samples=SEED_SAMPLES).iq
    out: dict[str, list[Path]] = {"iq_data": [], "iq_b64": []}
    for i, capture in enumerate(scenes):
        pairs = np.stack([capture.real, capture.imag], axis=-1).tolist()
        for encoding, value in (("iq_data", pairs), ("iq_b64", encode_capture(capture))):
            path = work / f"{encoding}-{i}.json"
            path.write_text(json.dumps({encoding: value, "cache_enabled": False}))
            out[encoding].append(path)
    return out


def row(
    encoding: str, phase: str, clients: int, figures: dict[str, Any], cpu_s: float
) -> dict[str, Any]:
    requests = figures["requests"]
    failed = figures["status"] + figures["connect"] + figures["read"] + figures["write"]
    failed += figures["timeout"]
    seconds = figures["duration_us"] / 1e6
    p95, p99 = figures["p95_us"] / 1000.0, figures["p99_us"] / 1000.0
    success = (requests - failed) / requests if requests else 0.0
    return {
        "encoding": encoding,
        "phase": phase,
        "clients": clients,
        "requests": requests,
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "p50_ms": round(figures["p50_us"] / 1000.0, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
        "success": round(success, 4),
        "cpu_ms_per_request": round(1000.0 * cpu_s / requests, 2) if requests else None,
        "meets_p95": p95 < P95_MS,
        "meets_p99": p99 < P99_MS,
        "meets_success": success > SUCCESS,
    }


def measure(
    url: str, paths: list[Path], encoding: str, phase: str, clients: int, seconds: int, pid: int
) -> dict[str, Any]:
    cpu = tree_cpu_seconds(pid)
    figures = wrk(url, paths, clients, seconds, threads=2, timeout_s=30)
    out = row(encoding, phase, clients, figures, tree_cpu_seconds(pid) - cpu)
    met = out["meets_p95"] and out["meets_p99"] and out["meets_success"]
    print(
        f"  {encoding:<8} {phase:<12} c={clients:<4} {out['rps']:>7} req/s  p50 {out['p50_ms']:>6} "
        f"p95 {out['p95_ms']:>6} p99 {out['p99_ms']:>6} ms  success {out['success']:.4f}  "
        f"{'meets the SLA' if met else 'MISSES the SLA'}",
        flush=True,
    )
    return out


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# The seed's SLA at {meta['clients']} clients ({meta['label']} model)",
        "",
        f"heimdall's Phase 6 targets: p95 < {P95_MS:.0f} ms, p99 < {P99_MS:.0f} ms, success > "
        f"{100 * SUCCESS:.0f} %. This service with default settings, 2 workers; wrk (2 threads) "
        f"on the same {meta['cpus']} cores; {meta['seconds']} s per row; bodies "
        f"{meta['body_kb']['iq_data']} kB (`iq_data`, {SEED_SAMPLES} pairs x receivers) and "
        f"{meta['body_kb']['iq_b64']} kB (`iq_b64`, the same captures), cache off. "
        f"{meta['timestamp']}.",
        "",
        "| encoding | phase | clients | req/s | p50 ms | p95 ms | p99 ms | success | "
        "server CPU ms/request | SLA |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if r["phase"] in ("warm-up", "burst"):
            continue
        met = r["meets_p95"] and r["meets_p99"] and r["meets_success"]
        lines.append(
            f"| {r['encoding']} | {r['phase']} | {r['clients']} | {r['rps']} | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {100 * r['success']:.2f} % | "
            f"{r['cpu_ms_per_request']} | {'met' if met else '**missed**'} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: install it (Debian: apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="rfloc-seed-sla-"))
    home = work / "bentoml"
    model_dir = import_model_into(home, args.tracking_uri)
    paths = bodies(model_spec(model_dir), args.captures, work)
    port = free_port()
    env = {"BENTOML_HOME": str(home), "SERVICE_WORKERS": "2"}
    rows: list[dict[str, Any]] = []
    with bentoml_serve("service:Localization", port, env, work / "serve.log") as proc:
        url = f"http://127.0.0.1:{port}/predict"
        for encoding in ("iq_data", "iq_b64"):
            common = (url, paths[encoding], encoding)
            rows.append(measure(*common, "warm-up", 8, args.warmup_seconds, proc.pid))
            rows.append(measure(*common, "fresh", args.clients, args.seconds, proc.pid))
            burst = (2 * args.clients, args.burst_seconds)
            rows.append(measure(*common, "burst", *burst, proc.pid))
            rows.append(measure(*common, "after burst", args.clients, args.seconds, proc.pid))
    result = {
        "meta": run_meta(
            label=args.label or "demo",
            model=f"{model_dir.parent.name}:{model_dir.name}",
            clients=args.clients,
            seconds=args.seconds,
            captures=args.captures,
            load_generator="wrk, 2 threads, same machine",
            body_kb={k: round(v[0].stat().st_size / 1000) for k, v in paths.items()},
            targets={"p95_ms": P95_MS, "p99_ms": P99_MS, "success": SUCCESS},
        ),
        "rows": rows,
    }
    name = f"seed_sla-{args.label}" if args.label else "seed_sla"
    write_results(args.out, name, result, markdown(result))
    shutil.rmtree(work, ignore_errors=True)
    measured = [r for r in rows if r["phase"] in ("fresh", "after burst")]
    return (
        0 if all(r["meets_p95"] and r["meets_p99"] and r["meets_success"] for r in measured) else 1
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--warmup-seconds", type=int, default=5)
    parser.add_argument("--burst-seconds", type=int, default=10)
    parser.add_argument("--captures", type=int, default=8)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
