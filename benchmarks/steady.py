"""Sustained load, policy against policy, interleaved: c=32 and c=64 for greedy and CORK.

    python -m benchmarks.steady [--policies greedy,cork] [--rounds 4] [--out DIR]

`benchmarks/burst.py` measures each policy on its own server one after the other, so a shared
host that slows down for a minute favours whichever policy ran in the quiet minute: single runs
of one policy at c=32 varied by a fifth here. This script starts one server per policy, all at
once (an idle server costs almost nothing), then measures them in turn, round after round, so
host noise lands on every policy alike; it reports each round and the median over rounds, with
ratios against CORK's medians (the batching issue's targets). Half the rounds run after a burst
(c=64 `iq_b64` plus c=16 `iq_data` for `--burst-seconds`, every server in turn), so the tail is
judged on servers that have seen load, too. Writes `steady.json` and `steady.md`.

`per-request` among the policies is not this service: it is the per-request FastAPI +
onnxruntime server of `benchmarks/compare.py` (no batching), so `--baseline per-request` puts
batching's gain over it on the same interleaved footing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.burst import burst_load
from benchmarks.compare import (
    RESULTS,
    bentoml_serve,
    free_port,
    import_model_into,
    model_spec,
    per_request_serve,
    policy_env,
    run_meta,
    write_results,
)
from benchmarks.loadgen import run_load
from utils.api.decoding import encode_capture
from utils.dsp.synthetic import generate_scenes

LEVELS = (32, 64)
#: The pseudo-policy that serves the per-request baseline instead of this service.
PER_REQUEST = "per-request"


def markdown(result: dict[str, Any]) -> str:
    base = result.get("baseline", "cork")
    shown = "CORK" if base == "cork" else base
    lines = [
        "| policy | state | concurrency | rounds | req/s (median) | p50 ms | p99 ms "
        f"| req/s / {shown} | p99 / {shown} | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['policy']} | {s['state']} | {s['concurrency']} | {s['rounds']} | "
            f"{s['rps']} | {s['p50_ms']} | {s['p99_ms']} | {s['rps_vs_baseline']} | "
            f"{s['p99_vs_baseline']} | {s['errors']} |"
        )
    lines += [
        "",
        "Per round (req/s, p99 ms):",
        "",
        "| round | state | concurrency | " + " | ".join(result["policies"]) + " |",
        "|---:|---|---:|" + "---:|" * len(result["policies"]),
    ]
    for key in sorted({(r["round"], r["state"], r["concurrency"]) for r in result["rows"]}):
        cells = []
        for policy in result["policies"]:
            r = next(
                x
                for x in result["rows"]
                if (x["round"], x["state"], x["concurrency"]) == key and x["policy"] == policy
            )
            cells.append(f"{r['rps']} / {r['p99_ms']}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(
    rows: list[dict[str, Any]],
    policies: list[str],
    levels: tuple[int, ...] = LEVELS,
    baseline: str = "cork",
) -> list[dict[str, Any]]:
    out = []
    for state in ("fresh", "after burst"):
        for level in levels:
            medians = {}
            for policy in policies:
                mine = [
                    r
                    for r in rows
                    if r["policy"] == policy and r["state"] == state and r["concurrency"] == level
                ]
                if not mine:
                    continue
                medians[policy] = {
                    "rps": round(statistics.median(r["rps"] for r in mine), 1),
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 1),
                    "p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 1),
                    "errors": sum(r["errors"] for r in mine),
                    "rounds": len(mine),
                }
            cork, base = medians.get("cork"), medians.get(baseline)
            for policy, m in medians.items():
                out.append(
                    {
                        "policy": policy,
                        "state": state,
                        "concurrency": level,
                        **m,
                        "rps_vs_cork": round(m["rps"] / cork["rps"], 2) if cork else None,
                        "p99_vs_cork": round(m["p99_ms"] / cork["p99_ms"], 2) if cork else None,
                        "rps_vs_baseline": round(m["rps"] / base["rps"], 2) if base else None,
                        "p99_vs_baseline": round(m["p99_ms"] / base["p99_ms"], 2) if base else None,
                    }
                )
    return out


def run(
    policies: list[str],
    rounds: int,
    requests: int,
    burst_seconds: float,
    workers: int,
    out: Path | None,
    registry_uri: str | None,
    levels: tuple[int, ...] = LEVELS,
    baseline: str = "cork",
    label: str = "",
) -> dict[str, Any]:
    """`policies` may carry a fixed greedy wait, `greedy@0` (BATCH_QUEUE_DELAY_MS=0), to
    measure `auto` against it; `label`: a benchmark model's results, `steady-<label>.*`."""
    work = Path(tempfile.mkdtemp(prefix="rfloc-steady-"))
    model_dir = import_model_into(work / "bentoml", registry_uri)
    spec = model_spec(model_dir)
    iq = generate_scenes(16, seed=4242, spec=spec).iq
    b64 = [{"iq_b64": encode_capture(c), "cache_enabled": False} for c in iq]
    pairs = [
        {"iq_data": np.stack([c.real, c.imag], axis=-1).tolist(), "cache_enabled": False}
        for c in iq[:4]
    ]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        urls = {}
        for policy in policies:
            port = free_port()
            urls[policy] = f"http://127.0.0.1:{port}/predict"
            if policy == PER_REQUEST:
                log = work / f"{policy.replace('/', '-')}.log"
                stack.enter_context(per_request_serve(model_dir, port, workers, log))
                run_load(urls[policy], b64, 1, 20)
                continue
            # one BentoML home per server: each keeps its own Prometheus multiprocess files
            home = work / f"home-{policy}"
            home.mkdir()
            (home / "models").symlink_to(work / "bentoml" / "models")
            stack.enter_context(
                bentoml_serve(
                    "service:Localization",
                    port,
                    {
                        "BENTOML_HOME": str(home),
                        "BENTOML_DO_NOT_TRACK": "True",
                        "SERVICE_WORKERS": str(workers),
                        **policy_env(policy),
                    },
                    work / f"{policy.replace('/', '-')}.log",
                )
            )
            run_load(urls[policy], b64, 1, 20)
        for index in range(rounds):
            state = "fresh" if index < (rounds + 1) // 2 else "after burst"
            if state == "after burst" and index == (rounds + 1) // 2:
                for url in urls.values():
                    asyncio.run(burst_load(url, b64, pairs, burst_seconds))
            for level in levels:
                for policy, url in urls.items():
                    s = run_load(url, b64, level, requests).summary()
                    rows.append({"round": index + 1, "state": state, "policy": policy, **s})
                    print(
                        f"  round {index + 1} {state:<11} {policy:<7} c={level:<3} "
                        f"{s['rps']:>7} req/s  p50 {s['p50_ms']:>7} ms  "
                        f"p99 {s['p99_ms']:>7} ms  errors {s['errors']}",
                        flush=True,
                    )
    result = {
        "meta": run_meta(
            workers=workers,
            requests_per_measurement=requests,
            burst_seconds=burst_seconds,
            note="servers up together, measured in turn; load generator on the same machine",
        ),
        "policies": policies,
        "baseline": baseline,
        "rows": rows,
        "summary": summarise(rows, policies, levels, baseline),
    }
    write_results(out, f"steady-{label}" if label else "steady", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default="greedy,cork")
    parser.add_argument("--rounds", type=int, default=6, help="half fresh, half after a burst")
    parser.add_argument("--requests", type=int, default=800, help="requests per measurement")
    parser.add_argument("--burst-seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--baseline", default="cork", help="the policy ratios are against")
    parser.add_argument("--label", default="", help="a benchmark model's name (big_model.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(
        [p for p in args.policies.split(",") if p],
        args.rounds,
        args.requests,
        args.burst_seconds,
        args.workers,
        args.out,
        args.tracking_uri,
        tuple(int(x) for x in args.levels.split(",") if x),
        args.baseline,
        args.label,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
