"""How fast throughput comes back after `kill -9` of one worker under keep-alive clients, with and
without the keep-alive bound (`CONNECTION_MAX_AGE_S`, `CONNECTION_MAX_REQUESTS`).

    python -m benchmarks.rebalance [--clients 16] [--rounds 3] [--after-kill 30]

Serves the newest import with `bentoml serve` (2 workers), "before" (both bounds 0: a
connection stays with its worker for as long as the client keeps it busy) and "after" (the
defaults), alternating round by round on a fresh server each. `clients` keep-alive clients
send `/predict` (`iq_b64`, cache off) back to back; after a warm-up and a 10 s baseline the
worker that served the most in it (the one holding the connections) is killed with SIGKILL and
its supervisor starts another. Reports the baseline throughput and the busier worker's share
of it (clients that connect together may all land on one worker), the throughput from 15 s
after the kill on, when the rolling 3 s throughput is first back within 10 % of the baseline,
when the new worker's process appeared, and the share of predictions the new worker served
from 15 s after the kill on (`rfloc_worker_predictions`).
Writes `rebalance.json` and `rebalance.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

from benchmarks.compare import RESULTS, bentoml_serve, free_port, run_meta, write_results
from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

WARMUP_S = 5.0
BASELINE_S = 10.0
SETTLED_FROM_S = 15.0  # "back within 10 % in <= 15 s after the kill"
WINDOW_S = 3


def workers(pid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker.service" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def worker_predictions(base: str) -> dict[str, float]:
    """`rfloc_worker_predictions` by worker pid, from /metrics."""
    found = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("rfloc_worker_predictions{"):
            labels, value = line.rsplit(" ", 1)
            pid = labels.split('pid="', 1)[1].split('"', 1)[0]
            found[pid] = float(value)
    return found


async def _load(
    url: str, bodies: list[bytes], clients: int, seconds: float
) -> tuple[list[float], int]:
    """Completion times (monotonic) of the 200s, and the count of everything else."""
    done: list[float] = []
    failed = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)  # keep-alive, one connection per client
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(i: int) -> None:
            nonlocal failed
            n = i
            while time.monotonic() < stop:
                n += clients
                try:
                    async with session.post(
                        url, data=bodies[n % len(bodies)], headers=headers
                    ) as r:
                        await r.read()
                        if r.status == 200:
                            done.append(time.monotonic())
                        else:
                            failed += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    failed += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
    return done, failed


def one_server(
    name: str, env: dict[str, str], clients: int, after_kill: float, bodies: list[bytes], logs: Path
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with bentoml_serve("service:Localization", port, env, logs / f"{name}.log") as proc:
        old = workers(proc.pid)
        assert len(old) == 2, old
        old_pids = {p.pid for p in old}
        events: dict[str, float] = {}
        counts: dict[str, dict[str, float]] = {}

        def killer(start: float) -> None:
            time.sleep(max(0.0, start + WARMUP_S - time.monotonic()))
            counts["warm"] = worker_predictions(base)
            time.sleep(max(0.0, start + WARMUP_S + BASELINE_S - time.monotonic()))
            counts["kill"] = worker_predictions(base)
            events["kill"] = time.monotonic()
            # the worker that served the most: the one holding the clients' connections
            served = {p: counts["kill"][p] - counts["warm"].get(p, 0.0) for p in counts["kill"]}
            busiest = max(old_pids, key=lambda pid: served.get(str(pid), 0.0))
            os.kill(busiest, signal.SIGKILL)
            while time.monotonic() < events["kill"] + after_kill:
                if "spawned" not in events and {p.pid for p in workers(proc.pid)} - old_pids:
                    events["spawned"] = time.monotonic()
                if "settled" not in events and time.monotonic() >= events["kill"] + SETTLED_FROM_S:
                    counts["settled"] = worker_predictions(base)
                    events["settled"] = time.monotonic()
                time.sleep(0.2)

        start = time.monotonic()
        thread = threading.Thread(target=killer, args=(start,), daemon=True)
        thread.start()
        total = WARMUP_S + BASELINE_S + after_kill + 2.0  # past the last whole second
        done, failed = asyncio.run(_load(base + "/predict", bodies, clients, total))
        thread.join()
        counts["end"] = worker_predictions(base)
    kill = events["kill"]
    baseline = sum(1 for t in done if kill - BASELINE_S <= t < kill) / BASELINE_S
    per_second = [0] * int(after_kill)
    for t in done:
        if kill <= t < kill + after_kill:
            per_second[int(t - kill)] += 1
    rolling = [
        statistics.mean(per_second[s : s + WINDOW_S]) for s in range(len(per_second) - WINDOW_S + 1)
    ]
    back = next((s for s, v in enumerate(rolling) if v >= 0.9 * baseline), None)
    settled = statistics.mean(per_second[int(SETTLED_FROM_S) :])
    before_kill = [
        counts["kill"].get(str(p), 0.0) - counts["warm"].get(str(p), 0.0) for p in old_pids
    ]
    new_pids = set(counts["end"]) - {str(p) for p in old_pids}
    served = {p: counts["end"][p] - counts["settled"].get(p, 0.0) for p in counts["end"]}
    new_share = sum(served[p] for p in new_pids) / max(1.0, sum(served.values()))
    return {
        "name": name,
        "baseline_rps": baseline,
        "settled_rps": settled,
        "settled_ratio": settled / baseline if baseline else 0.0,
        "back_within_10pct_s": back,
        "busiest_share_before_kill": max(before_kill) / max(1.0, sum(before_kill)),
        "new_worker_spawned_s": events.get("spawned", float("nan")) - kill,
        "new_worker_share_settled": new_share,
        "failed": failed,
        "per_second_after_kill": per_second,
    }


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Throughput after `kill -9` of one of 2 workers under {meta['clients']} keep-alive "
        "clients",
        "",
        f"{meta['timestamp']}, Python {meta['python']}, {meta['cpus']} CPUs; "
        f"{meta['rounds']} rounds, before and after alternating, a fresh server each; "
        f"medians over rounds. before: `CONNECTION_MAX_AGE_S=0`, `CONNECTION_MAX_REQUESTS=0`; "
        f"after: the defaults ({result['after_settings']}). `/predict` `iq_b64`, cache off; "
        f"the load generator shares the machine's cores.",
        "",
        "| | baseline req/s | busier worker's share before the kill | req/s from 15 s after "
        "the kill | ratio | back within 10 % after | new worker's process up after | "
        "new worker's share from 15 s | failed (in flight) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("before", "after"):
        r = result["summary"][name]
        back = r["back_within_10pct"]
        lines.append(
            f"| {name} | {r['baseline_rps']:.0f} | {100 * r['busiest_share_before_kill']:.0f} % | "
            f"{r['settled_rps']:.0f} | "
            f"{r['settled_ratio']:.2f} | {back} | {r['new_worker_spawned_s']:.1f} s | "
            f"{100 * r['new_worker_share_settled']:.0f} % | {r['failed']:.0f} |"
        )
    lines += ["", "Rolling 3 s throughput first back within 10 % of the baseline, per round:"]
    for name in ("before", "after"):
        runs = [r for r in result["rounds"] if r["name"] == name]
        backs = ", ".join(_back(r["back_within_10pct_s"], result["meta"]) for r in runs)
        lines.append(f"- {name}: {backs}")
    return "\n".join(lines)


def _back(seconds: int | None, meta: dict[str, Any]) -> str:
    return f"{seconds} s" if seconds is not None else f"not within {meta['after_kill']:.0f} s"


def run(clients: int, rounds: int, after_kill: float, out: Path | None) -> dict[str, Any]:
    from utils.config import get_settings

    settings = get_settings()
    scenes = generate_scenes(8, seed=11, spec=FeatureSpec())
    bodies = [
        json.dumps({"iq_b64": encode_capture(iq), "cache_enabled": False}).encode()
        for iq in scenes.iq
    ]
    configs = {
        "before": {"CONNECTION_MAX_AGE_S": "0", "CONNECTION_MAX_REQUESTS": "0"},
        "after": {},
    }
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        for i in range(rounds):
            for name in ["before", "after"] if i % 2 == 0 else ["after", "before"]:
                env = {"SERVICE_WORKERS": "2", "REDIS_URL": "", "ACCESS_LOG": "false"}
                row = one_server(
                    name, {**env, **configs[name]}, clients, after_kill, bodies, Path(logs)
                )
                print({k: v for k, v in row.items() if k != "per_second_after_kill"}, flush=True)
                rows.append(row)
    meta = run_meta(clients=clients, rounds=rounds, workers=2, after_kill=after_kill)
    summary = {}
    for name in ("before", "after"):
        runs = [r for r in rows if r["name"] == name]
        med = {
            key: statistics.median(r[key] for r in runs)
            for key in (
                "baseline_rps",
                "settled_rps",
                "settled_ratio",
                "busiest_share_before_kill",
                "new_worker_spawned_s",
                "new_worker_share_settled",
                "failed",
            )
        }
        backs = [r["back_within_10pct_s"] for r in runs]
        never = float("inf")
        median_back = statistics.median(never if b is None else b for b in backs)
        med["back_within_10pct"] = _back(None if median_back == never else median_back, meta)
        summary[name] = med
    result = {
        "meta": meta,
        "after_settings": f"CONNECTION_MAX_AGE_S={settings.connection_max_age_s:g}, "
        f"CONNECTION_MAX_REQUESTS={settings.connection_max_requests}",
        "rounds": rows,
        "summary": summary,
    }
    write_results(out, "rebalance", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--after-kill", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.clients, args.rounds, args.after_kill, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
