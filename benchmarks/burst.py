"""Burst then quiet: does a lone request stay fast after load? One run, every dispatch policy.

    python -m benchmarks.burst [--policies greedy,cork,proxy] [--burst-seconds 30] [--out DIR]

For each `BATCH_DISPATCH` policy, one fresh `bentoml serve` (cache off in every request), the
same load generator (`benchmarks/loadgen.py`), in this order:

1. fresh: c=1, then c=32 and c=64 (`iq_b64`);
2. a burst: `--burst-seconds` of c=64 `iq_b64` plus c=16 `iq_data` at the same time, ended as
   a stopped load generator ends: the requests in flight are given up and their connections
   closed (`abandoned` in the rows), so the server holds work for clients who left;
3. quiet after the burst: c=1 again, then c=32 and c=64 on the loaded server.

Baselines measured in the same invocation: single-sample compute (decode + preprocessing +
onnxruntime + response, in this process) and a bare BentoML service taking the same body
(`benchmarks/echo_service.py`, the framework floor). Ratios against them and against the `cork`
policy's fresh figures are the targets of the batching issue; they are reported, never asserted.
Writes `burst.json` and `burst.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
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
    write_results,
)
from benchmarks.loadgen import LoadResult, run_for, run_load
from utils.api.decoding import decode_iq_b64, encode_capture
from utils.dsp.synthetic import generate_scenes

POLICIES = ("greedy", "cork", "proxy")


def single_sample_compute_ms(model_dir: Path, body: str, repeats: int = 200) -> float:
    """Median ms of decode + preprocessing + onnxruntime + response for one sample."""
    import yaml

    from utils.api.responses import build_predictions
    from utils.model.runtime import ModelRuntime

    meta_path = model_dir / "model.yaml"
    meta = yaml.safe_load(meta_path.read_text())["metadata"] if meta_path.exists() else {}
    runtime = ModelRuntime(
        model_dir, meta, intra_threads=1, inter_threads=1, providers=["CPUExecutionProvider"]
    )
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        capture = decode_iq_b64(body, runtime.spec, 65_536)
        build_predictions(
            runtime.predict([capture]),
            spec=runtime.spec,
            envelope=runtime.envelope,
            confidence_level=0.95,
            include_geojson=False,
            model_version="bench",
            inference_time_ms=0.0,
            session_id=None,
        )
        times.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(times)


def _row(policy: str, phase: str, result: LoadResult) -> dict[str, Any]:
    row = {"policy": policy, "phase": phase, **result.summary()}
    print(
        f"  {policy:<7} {phase:<22} c={result.concurrency:<3} {row['rps']:>7} req/s  "
        f"p50 {row['p50_ms']:>7} ms  p99 {row['p99_ms']:>7} ms  errors {row['errors']}"
        f"  abandoned {result.abandoned}",
        flush=True,
    )
    return row


async def burst_load(
    url: str, b64: list[dict[str, Any]], pairs: list[dict[str, Any]], seconds: float
) -> tuple[LoadResult, LoadResult]:
    fast, slow = await asyncio.gather(
        run_for(url, b64, 64, seconds, abandon=True),
        run_for(url, pairs, 16, seconds, abandon=True),
    )
    return fast, slow


def measure_policy(
    policy: str,
    env: dict[str, str],
    work: Path,
    b64: list[dict[str, Any]],
    pairs: list[dict[str, Any]],
    burst_seconds: float,
    requests: int,
) -> list[dict[str, Any]]:
    port = free_port()
    rows = []
    with bentoml_serve(
        "service:Localization",
        port,
        {**env, "BATCH_DISPATCH": policy},
        work / f"{policy}.log",
    ):
        url = f"http://127.0.0.1:{port}/predict"
        run_load(url, b64, 1, 20)  # warm the connection pool and the worker
        rows.append(_row(policy, "fresh", run_load(url, b64, 1, requests)))
        for level in (32, 64):
            rows.append(_row(policy, "fresh", run_load(url, b64, level, requests * 4)))
        fast, slow = asyncio.run(burst_load(url, b64, pairs, burst_seconds))
        rows.append(_row(policy, "burst iq_b64", fast))
        rows.append(_row(policy, "burst iq_data", slow))
        rows.append(_row(policy, "after burst", run_load(url, b64, 1, requests)))
        for level in (32, 64):
            rows.append(_row(policy, "after burst", run_load(url, b64, level, requests * 4)))
    return rows


def echo_floor_ms(
    env: dict[str, str], work: Path, b64: list[dict[str, Any]], requests: int
) -> dict[str, Any]:
    port = free_port()
    with bentoml_serve(
        "benchmarks.echo_service:Echo",
        port,
        env,
        work / "echo.log",
    ):
        url = f"http://127.0.0.1:{port}/predict"
        run_load(url, b64, 1, 20)
        return _row("echo", "framework floor", run_load(url, b64, 1, requests))


def _find(rows: list[dict[str, Any]], policy: str, phase: str, level: int) -> dict[str, Any]:
    return next(
        r
        for r in rows
        if r["policy"] == policy and r["phase"] == phase and r["concurrency"] == level
    )


def targets(
    rows: list[dict[str, Any]], compute_ms: float, floor: dict[str, Any], policies: list[str]
) -> list[dict[str, Any]]:
    out = []
    for policy in policies:
        fresh, after = _find(rows, policy, "fresh", 1), _find(rows, policy, "after burst", 1)
        out.append(
            {
                "policy": policy,
                "target": "c=1 p50 after burst / fresh",
                "value": round(after["p50_ms"] / fresh["p50_ms"], 2),
                "goal": "<= 1.2",
            }
        )
        out.append(
            {
                "policy": policy,
                "target": "c=1 p99 after burst / fresh",
                "value": round(after["p99_ms"] / fresh["p99_ms"], 2),
                "goal": "<= 2",
            }
        )
        out.append(
            {
                "policy": policy,
                "target": "c=1 p50 after burst / (compute + echo floor)",
                "value": round(after["p50_ms"] / (compute_ms + floor["p50_ms"]), 2),
                "goal": "<= 1.5",
            }
        )
        if "cork" in policies:
            for level in (32, 64):
                cork = _find(rows, "cork", "fresh", level)
                for phase in ("fresh", "after burst"):
                    mine = _find(rows, policy, phase, level)
                    out.append(
                        {
                            "policy": policy,
                            "target": f"c={level} {phase} req/s / cork fresh",
                            "value": round(mine["rps"] / cork["rps"], 2),
                            "goal": ">= 1",
                        }
                    )
                    out.append(
                        {
                            "policy": policy,
                            "target": f"c={level} {phase} p99 / cork fresh",
                            "value": round(mine["p99_ms"] / cork["p99_ms"], 2),
                            "goal": "<= 1",
                        }
                    )
        errors = sum(r["errors"] for r in rows if r["policy"] == policy)
        out.append({"policy": policy, "target": "errors, all phases", "value": errors, "goal": "0"})
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| policy | phase | concurrency | req/s | p50 ms | p99 ms | errors | abandoned |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['policy']} | {r['phase']} | {r['concurrency']} | {r['rps']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r.get('abandoned', 0)} |"
        )
    lines += [
        "",
        f"Single-sample compute (decode + preprocessing + onnxruntime + response, "
        f"one thread): {result['compute_ms']:.2f} ms at the median.",
        "",
        "| policy | target | value | goal |",
        "|---|---|---:|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['policy']} | {t['target']} | {t['value']} | {t['goal']} |")
    return "\n".join(lines)


def run(
    policies: list[str],
    burst_seconds: float,
    requests: int,
    workers: int,
    scenes: int,
    out: Path | None,
    registry_uri: str | None,
    label: str = "",
) -> dict[str, Any]:
    """`label`: a model other than the demo (`benchmarks/big_model.py`): `burst-<label>.*`."""
    work = Path(tempfile.mkdtemp(prefix="rfloc-burst-"))
    home = work / "bentoml"
    model_dir = import_model_into(home, registry_uri)
    spec = model_spec(model_dir)
    iq = generate_scenes(scenes, seed=4242, spec=spec).iq
    b64 = [{"iq_b64": encode_capture(c), "cache_enabled": False} for c in iq]
    pairs = [
        {"iq_data": np.stack([c.real, c.imag], axis=-1).tolist(), "cache_enabled": False}
        for c in iq[: max(2, scenes // 4)]
    ]
    compute_ms = single_sample_compute_ms(model_dir, b64[0]["iq_b64"])
    print(f"single-sample compute: {compute_ms:.2f} ms", flush=True)
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "SERVICE_WORKERS": str(workers),
    }
    floor = echo_floor_ms(env, work, b64, requests)
    rows: list[dict[str, Any]] = [floor]
    for policy in policies:
        rows += measure_policy(policy, env, work, b64, pairs, burst_seconds, requests)
    result = {
        "meta": run_meta(
            workers=workers,
            burst_seconds=burst_seconds,
            requests=requests,
            label=label or "demo",
            note="load generator on the same machine as the servers",
        ),
        "compute_ms": compute_ms,
        "rows": rows,
        "targets": targets(rows, compute_ms, floor, policies),
    }
    write_results(out, f"burst-{label}" if label else "burst", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--burst-seconds", type=float, default=30.0)
    parser.add_argument(
        "--requests", type=int, default=200, help="requests at c=1 (x4 at c=32 and c=64)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--label", default="", help="a benchmark model's name (big_model.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(
        [p for p in args.policies.split(",") if p],
        args.burst_seconds,
        args.requests,
        args.workers,
        args.scenes,
        args.out,
        args.tracking_uri,
        args.label,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
