"""This service against real peers on the same compute, in one run, with one load generator.

    python -m benchmarks.peers.run [--seconds 10] [--levels 1,8,32,64] [--servers ...]
                                   [--tracking-uri URI --label resnet18]

Servers, one at a time, alone on the machine, each on the same model (imported from the
registry into a scratch BentoML store) and the same per-request compute (`compute.py`: the
project's `iq_b64` decode, mel preprocessing, ONNX Runtime with one thread per process):

- this service: `bentoml serve service:Localization`, default settings (as `make serve`),
  `cache_enabled: false` in every body;
- the floor: a bare BentoML service doing only that compute (`bare_bentoml.py`);
- KServe's Python ModelServer, LitServe and Triton through PyTriton, each from its own
  virtualenv under `.peers/` (`make benchmark-peers` installs them from `requirements/peers/`).

Every server first answers the same captures, checked against the in-process answer (position
to 1e-5 degrees). Then, per server: a warm-up, "fresh" at each level, a burst (c=64 for
`--burst-seconds`; wrk stops with requests in flight, as a stopped load generator does), and
"after burst" at the same levels. The load generator is `wrk` (2 threads, `wrk_post.lua`),
on the same machine. Per level: req/s, p50/p95/p99, p99/p50, non-2xx answers, socket errors and
timeouts, and the server's CPU ms per request (its whole process tree). Writes
`peers[-label].json` and `.md`: the table, ratios against this service in the same run, where a
peer wins a column, and every server's settings. docs/peers.md says how each peer is set up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.compare import (
    RESULTS,
    free_port,
    import_model_into,
    model_spec,
    run_meta,
    scrape,
    server,
    tree_cpu_seconds,
    write_results,
)
from utils.api.decoding import encode_capture
from utils.config import PROJECT_ROOT, get_settings
from utils.dsp.synthetic import generate_scenes

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_post.lua"
PEERS_DIR = PROJECT_ROOT / ".peers"
SERVERS = ("service", "bare", "kserve", "litserve", "pytriton")
#: Answers agree when every position is within this many degrees of the in-process one.
TOLERANCE_DEG = 1e-5
WORKERS = 2
MODEL_NAME = "localization"


# --- servers ------------------------------------------------------------------------------------


@dataclass
class Peer:
    """How to start one server, talk to it and read its answer."""

    key: str
    name: str
    path: str
    ready_path: str
    body: Callable[[str], dict[str, Any]]
    position: Callable[[dict[str, Any]], list[float]]
    settings: dict[str, Any]
    venv: str | None = None  # a .peers/<venv>, or None for the main environment
    packages: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def _service_body(text: str) -> dict[str, Any]:
    return {"iq_b64": text, "cache_enabled": False}


def _service_position(answer: dict[str, Any]) -> list[float]:
    return [answer["position"]["latitude"], answer["position"]["longitude"]]


def _v2_body(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "iq_b64", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}


def _v2_position(answer: dict[str, Any]) -> list[float]:
    out = next(o for o in answer["outputs"] if o["name"] == "position")
    return [float(v) for v in out["data"][:2]]


PEERS: dict[str, Peer] = {
    "service": Peer(
        key="service",
        name="this service",
        path="/predict",
        ready_path="/readyz",
        body=_service_body,
        position=_service_position,
        packages=("bentoml", "uvicorn", "uvloop", "httptools", "onnxruntime", "numpy"),
        settings={
            "command": "bentoml serve service:Localization (as make serve)",
            "workers": "2 (default: one per core)",
            "batching": "the service's defaults (BATCH_DISPATCH, BATCH_MAX_SIZE, "
            "BATCH_QUEUE_DELAY_MS unset)",
            "ONNX Runtime threads": "1 intra-op per worker (default: cores / workers)",
            "body": '{"iq_b64": ..., "cache_enabled": false} on POST /predict',
        },
    ),
    "bare": Peer(
        key="bare",
        name="bare BentoML (floor)",
        path="/predict",
        ready_path="/readyz",
        body=_service_body,
        position=lambda a: a["position"],
        packages=("bentoml",),
        settings={
            "command": "bentoml serve benchmarks.peers.bare_bentoml:Bare",
            "workers": 2,
            "batching": "none: an async @bentoml.api, computing on the event loop, per request",
            "layers": "none of the project's (no middlewares, cache, batcher, ellipse)",
            "ONNX Runtime threads": "1 intra-op, 1 inter-op per worker",
            "body": '{"iq_b64": ..., "cache_enabled": false} on POST /predict',
        },
    ),
    "kserve": Peer(
        key="kserve",
        name="KServe ModelServer",
        path=f"/v1/models/{MODEL_NAME}:predict",
        ready_path=f"/v1/models/{MODEL_NAME}",
        body=lambda text: {"instances": [_service_body(text)]},
        position=lambda a: a["predictions"][0]["position"],
        venv="kserve",
        packages=("kserve", "fastapi", "uvicorn", "uvloop", "onnxruntime", "numpy"),
        settings={
            "command": "python -m benchmarks.peers.kserve_server --workers 2 "
            "--enable_grpc false (kserve.ModelServer().start([model]))",
            "workers": "2 uvicorn worker processes (ModelServer workers=2)",
            "batching": "none: KServe has no batcher for a custom Python model; one sync "
            "predict per request, on the worker's event loop",
            "protocol": 'v1 JSON: {"instances": [{"iq_b64": ..., "cache_enabled": false}]}',
            "other": "KServe's defaults: event loop auto (uvloop), latency logging on, "
            "gRPC off (only HTTP is measured)",
            "ONNX Runtime threads": "1 intra-op, 1 inter-op per worker",
        },
    ),
    "litserve": Peer(
        key="litserve",
        name="LitServe",
        path="/predict",
        ready_path="/health",
        body=_service_body,
        position=lambda a: a["position"],
        venv="litserve",
        packages=("litserve", "fastapi", "uvicorn", "uvloop", "onnxruntime", "numpy"),
        settings={
            "command": "python -m benchmarks.peers.litserve_server",
            "workers": "2 inference workers (LitServer(accelerator='cpu', "
            "workers_per_device=2)), 2 API server processes (default: as many)",
            "batching": "LitAPI(max_batch_size=8, batch_timeout=0.002): batch / predict / unbatch",
            "other": "run(log_level='warning', generate_client_file=False), the docs' "
            "production example; fast_queue off (default)",
            "ONNX Runtime threads": "1 intra-op, 1 inter-op per inference worker",
            "body": '{"iq_b64": ..., "cache_enabled": false} on POST /predict',
        },
    ),
    "pytriton": Peer(
        key="pytriton",
        name="Triton (PyTriton)",
        path=f"/v2/models/{MODEL_NAME}/infer",
        ready_path=f"/v2/models/{MODEL_NAME}/ready",
        body=_v2_body,
        position=_v2_position,
        venv="pytriton",
        packages=("nvidia-pytriton", "tritonclient", "onnxruntime", "numpy"),
        settings={
            "command": "python -m benchmarks.peers.pytriton_server (Triton.bind + serve)",
            "workers": "2 model instances (a list of 2 @batch inference callables, each "
            "with its own ONNX Runtime session, in the PyTriton process)",
            "batching": "ModelConfig(max_batch_size=8, "
            "batcher=DynamicBatcher(max_queue_delay_microseconds=2000))",
            "protocol": "KServe v2 JSON over Triton's HTTP front end, one BYTES input "
            "iq_b64 of shape [1, 1]",
            "other": "Triton's defaults otherwise (HTTP threads, metrics on)",
            "ONNX Runtime threads": "1 intra-op, 1 inter-op per instance",
        },
    ),
}


def peer_python(peer: Peer, peers_dir: Path) -> Path:
    """The interpreter that runs `peer`: its own virtualenv's, or this one's."""
    if peer.venv is None:
        return Path(sys.executable)
    python = peers_dir / peer.venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(
            f"{python} is missing: `make benchmark-peers` creates it from "
            f"requirements/peers/{peer.venv}.txt"
        )
    return python


def versions(python: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `packages` in the environment of `python`."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python), "-c", code, *packages], capture_output=True, text=True, timeout=60
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


def start(
    peer: Peer, python: Path, port: int, model_dir: Path, home: Path, log: Path
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """Start `peer` on 127.0.0.1:`port`; ready once its readiness route answers 200."""
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "PEER_MODEL_DIR": str(model_dir),
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if peer.key == "service":
        args = [str(python), "-m", "bentoml", "serve", "service:Localization"]
        args += ["--host", "127.0.0.1", "--port", str(port)]
    elif peer.key == "bare":
        args = [str(python), "-m", "bentoml", "serve", "benchmarks.peers.bare_bentoml:Bare"]
        args += ["--host", "127.0.0.1", "--port", str(port)]
        env["SERVICE_WORKERS"] = str(WORKERS)
    elif peer.key == "kserve":
        args = [str(python), "-m", "benchmarks.peers.kserve_server"]
        args += ["--model_name", MODEL_NAME, "--http_port", str(port)]
        args += ["--workers", str(WORKERS), "--enable_grpc", "false"]
    elif peer.key == "litserve":
        args = [str(python), "-m", "benchmarks.peers.litserve_server", "--port", str(port)]
    elif peer.key == "pytriton":
        args = [str(python), "-m", "benchmarks.peers.pytriton_server"]
        args += ["--http-port", str(port), "--grpc-port", str(free_port())]
        args += ["--metrics-port", str(free_port())]
        # in the run's scratch folder, removed with it (PyTriton keeps its own after a SIGTERM)
        args += ["--workspace", str(log.parent / "pytriton-workspace")]
        # Triton's Python backend stub must load this interpreter's libpython
        libdir = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p
        )
    else:  # pragma: no cover - SERVERS lists every key
        raise ValueError(peer.key)
    return server(args, f"http://127.0.0.1:{port}{peer.ready_path}", env, log)


# --- load -------------------------------------------------------------------------------------


def wrk(
    url: str, bodies: list[Path], connections: int, seconds: int, threads: int, timeout_s: int
) -> dict[str, Any]:
    """One closed-loop `wrk` run: `connections` clients for `seconds`; its figures."""
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is missing: install it (Debian: apt-get install wrk)")
    args = [binary, "-t", str(max(1, min(threads, connections))), "-c", str(connections)]
    args += ["-d", f"{seconds}s", "--timeout", f"{timeout_s}s", "-s", str(LUA), url, "--"]
    done = subprocess.run(
        [*args, *map(str, bodies)],
        capture_output=True,
        text=True,
        timeout=seconds + timeout_s + 60,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return json.loads(line.removeprefix("WRKJSON "))


def level_row(
    peer: Peer, phase: str, connections: int, figures: dict[str, Any], cpu_s: float
) -> dict[str, Any]:
    requests = figures["requests"]
    seconds = figures["duration_us"] / 1e6
    p50, p99 = figures["p50_us"] / 1000.0, figures["p99_us"] / 1000.0
    return {
        "server": peer.name,
        "key": peer.key,
        "phase": phase,
        "concurrency": connections,
        "requests": requests,
        "seconds": round(seconds, 2),
        "rps": round(requests / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(p50, 2),
        "p95_ms": round(figures["p95_us"] / 1000.0, 2),
        "p99_ms": round(p99, 2),
        "p99_over_p50": round(p99 / p50, 2) if p50 > 0 else None,
        "non_2xx": figures["status"],
        "errors": figures["connect"] + figures["read"] + figures["write"] + figures["timeout"],
        "timeouts": figures["timeout"],
        "cpu_ms_per_request": round(1000.0 * cpu_s / requests, 2) if requests else None,
    }


def measure(
    peer: Peer,
    pid: int,
    url: str,
    bodies: list[Path],
    phase: str,
    connections: int,
    seconds: int,
    threads: int,
    timeout_s: int,
) -> dict[str, Any]:
    cpu = tree_cpu_seconds(pid)
    base = url.removesuffix(peer.path)
    served = worker_predictions(base) if peer.key == "service" else {}
    figures = wrk(url, bodies, connections, seconds, threads, timeout_s)
    row = level_row(peer, phase, connections, figures, tree_cpu_seconds(pid) - cpu)
    if served:  # this service: how the requests spread over its workers
        after = worker_predictions(base)
        done = {w: after[w] - served.get(w, 0.0) for w in after}
        total = sum(done.values())
        if total > 0:
            row["worker_shares"] = sorted(round(v / total, 3) for v in done.values())
    print(
        f"  {peer.name:<22} {phase:<12} c={connections:<3} {row['rps']:>8} req/s  "
        f"p50 {row['p50_ms']:>7} ms  p99 {row['p99_ms']:>8} ms  p99/p50 {row['p99_over_p50']}  "
        f"non-2xx {row['non_2xx']}  errors {row['errors']}  "
        f"cpu {row['cpu_ms_per_request']} ms/req"
        + (f"  workers {row['worker_shares']}" if "worker_shares" in row else ""),
        flush=True,
    )
    return row


def worker_predictions(base: str) -> dict[str, float]:
    """This service's predictions so far by worker process (`rfloc_worker_predictions`)."""
    return {
        labels: value
        for (name, labels), value in scrape(base).items()
        if name == "rfloc_worker_predictions"
    }


def check_answers(
    peer: Peer, url: str, texts: list[str], reference: list[list[float]]
) -> dict[str, Any]:
    """Every capture once; the largest position difference from the in-process answer."""
    worst = 0.0
    with httpx.Client(timeout=60) as client:
        for text, expected in zip(texts, reference, strict=True):
            reply = client.post(url, json=peer.body(text))
            reply.raise_for_status()
            got = peer.position(reply.json())
            worst = max(worst, *(abs(a - b) for a, b in zip(got, expected, strict=True)))
    return {"captures": len(texts), "max_position_diff_deg": worst, "same": worst <= TOLERANCE_DEG}


def run_server(
    peer: Peer,
    python: Path,
    work: Path,
    model_dir: Path,
    home: Path,
    texts: list[str],
    reference: list[list[float]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Start `peer`, check its answers, then warm-up / fresh / burst / after burst."""
    bodies = []
    for i, text in enumerate(texts):
        path = work / f"body-{peer.key}-{i}.json"
        path.write_bytes(json.dumps(peer.body(text)).encode())
        bodies.append(path)
    port = free_port()
    out: dict[str, Any] = {"server": peer.name, "key": peer.key, "settings": peer.settings}
    out["versions"] = versions(python, peer.packages)
    started = time.monotonic()
    with start(peer, python, port, model_dir, home, work / f"{peer.key}.log") as proc:
        out["start_s"] = round(time.monotonic() - started, 1)
        url = f"http://127.0.0.1:{port}{peer.path}"
        if peer.key == "pytriton":
            meta = httpx.get(f"http://127.0.0.1:{port}/v2", timeout=10).json()
            out["versions"]["tritonserver"] = meta.get("version", "")
        out["answers"] = check_answers(peer, url, texts, reference)
        print(
            f"{peer.name}: ready in {out['start_s']} s, answers "
            f"{'the same' if out['answers']['same'] else 'DIFFERENT'} (max |dposition| "
            f"{out['answers']['max_position_diff_deg']:.2e} deg)",
            flush=True,
        )
        common = (proc.pid, url, bodies)
        opts = (args.threads, args.timeout)
        rows = [measure(peer, *common, "warm-up", 8, args.warmup_seconds, *opts)]
        rows += [measure(peer, *common, "fresh", c, args.seconds, *opts) for c in args.levels]
        rows.append(measure(peer, *common, "burst", 64, args.burst_seconds, *opts))
        rows += [measure(peer, *common, "after burst", c, args.seconds, *opts) for c in args.levels]
        tree = process_tree(proc.pid)
    wait_gone(tree, timeout=60.0)
    out["rows"] = rows
    return out


def process_tree(pid: int) -> list[psutil.Process]:
    """A server's processes: the one started and all it started (Triton's own included)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Wait until every process of a stopped server has exited (the next server must run
    alone: Triton, for one, exits after its PyTriton process); kill what is left then."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


# --- the report -------------------------------------------------------------------------------

#: Columns compared between servers: (row key, label, higher is better).
COLUMNS = (
    ("rps", "req/s", True),
    ("p50_ms", "p50", False),
    ("p95_ms", "p95", False),
    ("p99_ms", "p99", False),
    ("p99_over_p50", "p99/p50", False),
    ("cpu_ms_per_request", "CPU ms/request", False),
)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """req/s and p99 of every row against this service's at the same phase and level."""
    ours = {(r["phase"], r["concurrency"]): r for r in rows if r["key"] == "service"}
    for r in rows:
        base = ours.get((r["phase"], r["concurrency"]))
        if base is None:
            continue
        r["rps_vs_service"] = round(r["rps"] / base["rps"], 2) if base["rps"] else None
        r["p99_vs_service"] = round(r["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None


def peer_wins(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (phase, level, column) where the best server is not this service (the floor is
    left out: it is the measure of BentoML itself, not a peer)."""
    wins = []
    cells = sorted(
        {(r["phase"], r["concurrency"]) for r in rows if r["phase"] in ("fresh", "after burst")},
        key=lambda k: (k[0] != "fresh", k[1]),
    )
    for phase, level in cells:
        here = [
            r
            for r in rows
            if r["phase"] == phase and r["concurrency"] == level and r["key"] != "bare"
        ]
        ours = next((r for r in here if r["key"] == "service"), None)
        for key, label, higher in COLUMNS:
            valid = [r for r in here if r.get(key) is not None]
            if not valid or ours is None or ours.get(key) is None:
                continue
            best = (max if higher else min)(valid, key=lambda r, k=key: r[k])
            if best["key"] == "service" or best[key] == ours[key]:
                continue
            ratio = best[key] / ours[key] if ours[key] else None
            wins.append(
                {
                    "phase": phase,
                    "concurrency": level,
                    "column": label,
                    "winner": best["server"],
                    "value": best[key],
                    "this_service": ours[key],
                    "ratio": None if ratio is None else round(ratio, 2),
                }
            )
    return wins


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Peers on the same compute ({meta['label']} model)",
        "",
        f"Model `{meta['model']}`; {meta['cpus']} CPUs; load generator `wrk` "
        f"({meta['wrk_threads']} threads, same machine), {meta['seconds']} s per level, "
        f"warm-up {meta['warmup_seconds']} s at c=8, burst {meta['burst_seconds']} s at c=64; "
        f"body `iq_b64` ({meta['body_kb']} kB, {meta['captures']} captures in turn); one "
        f"in-process inference (decode + preprocessing + ONNX, batch 1): "
        f"{meta['in_process_ms']} ms. {meta['timestamp']}.",
        "",
        "| server | same answer (max \\|Δ position\\| deg) | ready in s |",
        "|---|---|---:|",
    ]
    for s in result["servers"]:
        if "answers" not in s:
            lines.append(f"| {s['server']} | failed: {s.get('error', '')[:200]} | |")
            continue
        a = s["answers"]
        same = "yes" if a["same"] else "**NO**"
        lines.append(
            f"| {s['server']} | {same} ({a['max_position_diff_deg']:.1e}) | {s['start_s']} |"
        )
    head = (
        "| server | c | req/s | p50 ms | p95 ms | p99 ms | p99/p50 | non-2xx | errors | "
        "CPU ms/req | req/s ÷ this service | p99 ÷ this service |"
    )
    for phase in ("fresh", "burst", "after burst", "warm-up"):
        rows = [r for r in result["rows"] if r["phase"] == phase]
        if not rows:
            continue
        lines += ["", f"## {phase}", "", head, "|---|" + "---:|" * 11]
        for r in sorted(rows, key=lambda r: (r["concurrency"], SERVERS.index(r["key"]))):
            lines.append(
                f"| {r['server']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | "
                f"{r['p95_ms']} | {r['p99_ms']} | {r['p99_over_p50']} | {r['non_2xx']} | "
                f"{r['errors']} | {r['cpu_ms_per_request']} | {r.get('rps_vs_service', '')} | "
                f"{r.get('p99_vs_service', '')} |"
            )
    lines += ["", "## Where a peer wins a column", ""]
    if result["peer_wins"]:
        lines += [
            f"- {w['phase']}, c={w['concurrency']}, {w['column']}: {w['winner']} "
            f"{w['value']} against this service's {w['this_service']} ({w['ratio']}×)"
            for w in result["peer_wins"]
        ]
        winners = dict.fromkeys(w["winner"] for w in result["peer_wins"])
        by_name = {s["server"]: s for s in result["servers"]}
        lines += ["", "How the winners serve (their settings below):", ""]
        lines += [f"- {n}: {by_name[n]['settings'].get('batching', '')}" for n in winners]
    else:
        lines.append("- none: this service is best in every column measured")
    fresh = [r for r in result["rows"] if r["phase"] == "fresh"]
    floor = next((r for r in fresh if r["key"] == "bare"), None)
    ours = next((r for r in fresh if r["key"] == "service"), None)
    if floor and ours and floor["concurrency"] == ours["concurrency"] and floor["p50_ms"]:
        lines += [
            "",
            f"c={ours['concurrency']} p50: this service {ours['p50_ms']} ms against the bare "
            f"BentoML floor's {floor['p50_ms']} ms ({ours['p50_ms'] / floor['p50_ms']:.2f}×; "
            "the floor already holds one inference).",
        ]
    shares = [r for r in result["rows"] if r.get("worker_shares")]
    if shares:
        lines += ["", "This service's requests per worker (share of each of its 2 workers):", ""]
        lines += [
            f"- {r['phase']}, c={r['concurrency']}: {' / '.join(map(str, r['worker_shares']))}"
            for r in shares
            if r["phase"] in ("fresh", "after burst")
        ]
    lines += ["", "## Settings", ""]
    for s in result["servers"]:
        lines.append(f"**{s['server']}**")
        lines += [f"- {k}: {v}" for k, v in s["settings"].items()]
        if s.get("versions"):
            shown = ", ".join(f"{k} {v}" for k, v in s["versions"].items())
            lines.append(f"- versions: {shown}")
        lines.append("")
    return "\n".join(lines).rstrip()


# --- the run ----------------------------------------------------------------------------------


def in_process_ms(model_dir: Path, text: str, repeats: int = 200) -> float:
    """Median ms of the shared compute for one capture in this process (no HTTP)."""
    from benchmarks.peers.compute import load_runtime, predict_texts

    runtime = load_runtime(model_dir)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict_texts(runtime, [text])
        times.append(1000.0 * (time.perf_counter() - started))
    return round(statistics.median(times), 3)


def run(args: argparse.Namespace) -> int:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: install it (Debian: apt-get install wrk)")
    peers = [PEERS[k] for k in args.servers]
    pythons = {p.key: peer_python(p, args.peers_dir) for p in peers}
    work = Path(tempfile.mkdtemp(prefix="rfloc-peers-"))
    home = work / "bentoml"
    model_dir = import_model_into(home, args.tracking_uri)
    spec = model_spec(model_dir)
    texts = [encode_capture(c) for c in generate_scenes(args.captures, seed=4242, spec=spec).iq]

    from benchmarks.peers.compute import load_runtime, predict_texts

    reference = [a["position"] for a in predict_texts(load_runtime(model_dir), texts)]
    single_ms = in_process_ms(model_dir, texts[0])
    print(
        f"model {model_dir.parent.name}:{model_dir.name}; one in-process inference "
        f"{single_ms} ms; servers {', '.join(p.name for p in peers)}",
        flush=True,
    )
    servers: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    failed = False
    for peer in peers:
        try:
            python = pythons[peer.key]
            done = run_server(peer, python, work, model_dir, home, texts, reference, args)
        except (RuntimeError, httpx.HTTPError, subprocess.SubprocessError) as exc:
            print(f"{peer.name} FAILED: {exc}", flush=True)
            failed = True
            servers.append(
                {"server": peer.name, "key": peer.key, "settings": peer.settings, "error": str(exc)}
            )
            continue
        failed |= not done["answers"]["same"]
        rows += done.pop("rows")
        servers.append(done)
    add_ratios(rows)
    result = {
        "meta": run_meta(
            label=args.label or "demo",
            model=f"{model_dir.parent.name}:{model_dir.name}",
            load_generator=f"wrk, {args.threads} threads, same machine",
            wrk_threads=args.threads,
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
            burst_seconds=args.burst_seconds,
            levels=args.levels,
            captures=len(texts),
            body_kb=round(len(json.dumps(_service_body(texts[0]))) / 1000),
            in_process_ms=single_ms,
            tolerance_deg=TOLERANCE_DEG,
            note="each server alone on the machine, one after the other",
        ),
        "servers": servers,
        "rows": rows,
        "peer_wins": peer_wins(rows),
    }
    name = f"peers-{args.label}" if args.label else "peers"
    write_results(args.out, name, result, markdown(result))
    if failed:
        print(f"server logs kept in {work}", flush=True)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds per level")
    parser.add_argument("--warmup-seconds", type=int, default=5)
    parser.add_argument("--burst-seconds", type=int, default=10)
    parser.add_argument("--levels", default="1,8,32,64", help="concurrency levels, comma list")
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma list of {', '.join(SERVERS)}"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--timeout", type=int, default=30, help="wrk's per-request timeout, s")
    parser.add_argument("--captures", type=int, default=8, help="distinct bodies, in turn")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--label", default="", help="a benchmark model's name (big_model.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",") if x]
    args.servers = [s for s in args.servers.split(",") if s]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    args.tracking_uri = args.tracking_uri or get_settings().mlflow_tracking_uri
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
