"""What a model reload costs a service under load, against the same load without reloads.

    python -m benchmarks.reload [--rounds 3] [--seconds 10] [--interval 1] [--clients 16]

Serves the two newest imports of `BENTO_MODEL_NAME` in the BentoML store (import a second one
with `python -m demo.bootstrap --force && python import_model.py`) with `bentoml serve`, then,
in alternating rounds on the same server, measures closed-loop `/predict` load (cache off) with
no reload ("steady", the baseline) and with a reload between the two versions every `interval`
seconds ("reloading"). Reports requests/s and p50/p99 of each, their ratios, how long each
reload took to answer with every worker on the new model, and failed requests (the target is
none); writes `reload.json` and `reload.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bentoml
import httpx

from benchmarks.compare import RESULTS, bentoml_serve, free_port, run_meta, write_results
from benchmarks.loadgen import run_for, run_load
from utils.api.decoding import encode_capture
from utils.config import get_settings
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes


def two_newest(name: str) -> tuple[Any, Any]:
    models = sorted(bentoml.models.list(name), key=lambda m: m.info.creation_time)
    if len(models) < 2:
        raise SystemExit(
            f"benchmarks.reload needs two imports of {name} in the BentoML store, found "
            f"{len(models)}: python -m demo.bootstrap --force && python import_model.py"
        )
    return models[-2], models[-1]


def reload_loop(
    url: str,
    token: str,
    tags: list[str],
    interval: float,
    stop: threading.Event,
    records: list[dict[str, Any]],
) -> None:
    """Alternate between `tags` every `interval` s until `stop`; one record per reload."""
    with httpx.Client(timeout=120) as client:
        i = 0
        while not stop.wait(interval):
            started = time.perf_counter()
            r = client.post(
                f"{url}/model/reload",
                json={"tag": tags[i % len(tags)]},
                headers={"Authorization": f"Bearer {token}"},
            )
            body = r.json()
            records.append(
                {
                    "status": r.status_code,
                    "seconds": time.perf_counter() - started,
                    "workers_agree": bool(body.get("workers_agree")),
                    "tag": body.get("bento_model_tag"),
                }
            )
            i += 1


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"Reload under load: {result['meta']['clients']} clients, "
        f"{result['meta']['workers']} workers, {result['meta']['rounds']} rounds of "
        f"{result['meta']['seconds']} s each; a reload every {result['meta']['interval']} s "
        "in the `reloading` phase (medians over rounds).",
        "",
        "| phase | req/s | p50 ms | p99 ms | failed requests |",
        "|---|---:|---:|---:|---:|",
    ]
    for phase in ("steady", "reloading"):
        p = s[phase]
        lines.append(f"| {phase} | {p['rps']} | {p['p50_ms']} | {p['p99_ms']} | {p['failed']} |")
    lines += [
        "",
        f"reloading / steady: throughput {s['rps_ratio']}×, p50 {s['p50_ratio']}×, "
        f"p99 {s['p99_ratio']}×. {s['reloads']} reloads, answered (every worker on the new "
        f"model) in p50 {s['reload_p50_ms']} ms, max {s['reload_max_ms']} ms; "
        f"{s['reloads_agreed']} of {s['reloads']} with all workers agreeing.",
    ]
    return "\n".join(lines)


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 1)


def summarise(rows: list[dict[str, Any]], reloads: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in ("steady", "reloading"):
        mine = [r for r in rows if r["phase"] == phase]
        out[phase] = {
            "rps": _median(mine, "rps"),
            "p50_ms": _median(mine, "p50_ms"),
            "p99_ms": _median(mine, "p99_ms"),
            "failed": sum(r["requests"] - r["statuses"].get("200", 0) for r in mine),
        }
    steady, busy = out["steady"], out["reloading"]
    times = sorted(1000.0 * r["seconds"] for r in reloads) or [float("nan")]
    out.update(
        rps_ratio=round(busy["rps"] / steady["rps"], 2),
        p50_ratio=round(busy["p50_ms"] / steady["p50_ms"], 2),
        p99_ratio=round(busy["p99_ms"] / steady["p99_ms"], 2),
        reloads=len(reloads),
        reloads_ok=sum(r["status"] == 200 for r in reloads),
        reloads_agreed=sum(r["workers_agree"] for r in reloads),
        reload_p50_ms=round(statistics.median(times), 1),
        reload_max_ms=round(max(times), 1),
    )
    return out


def run(
    rounds: int, seconds: float, interval: float, clients: int, workers: int, out: Path | None
) -> dict[str, Any]:
    settings = get_settings()
    older, newer = two_newest(settings.bento_model_name)
    tags = [str(older.tag), str(newer.tag)]
    spec_json = Path(newer.path) / "feature_spec.json"
    spec = FeatureSpec.model_validate_json(spec_json.read_text()) if spec_json.exists() else None
    iq = generate_scenes(16, seed=4242, spec=spec or FeatureSpec()).iq
    bodies = [{"iq_b64": encode_capture(c), "cache_enabled": False} for c in iq]
    work = Path(tempfile.mkdtemp(prefix="rfloc-reload-"))
    home = work / "home"  # its own Prometheus folder; the store's models, read only
    home.mkdir()
    (home / "models").symlink_to(Path(older.path).parent.parent)
    token = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    reloads: list[dict[str, Any]] = []
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "SERVICE_WORKERS": str(workers),
        "ADMIN_TOKEN": token,
        "BENTO_MODEL_TAG": tags[0],
    }
    with bentoml_serve("service:Localization", port, env, work / "serve.log"):
        run_load(f"{url}/predict", bodies, 1, 20)
        for index in range(rounds):
            for phase in ("steady", "reloading"):
                stop = threading.Event()
                found: list[dict[str, Any]] = []
                thread = threading.Thread(
                    target=reload_loop, args=(url, token, tags, interval, stop, found)
                )
                if phase == "reloading":
                    thread.start()
                load = asyncio.run(run_for(f"{url}/predict", bodies, clients, seconds))
                stop.set()
                if phase == "reloading":
                    thread.join()
                reloads += found
                s = load.summary()
                rows.append({"round": index + 1, "phase": phase, **s})
                print(
                    f"  round {index + 1} {phase:<9} {s['rps']:>7} req/s  p50 {s['p50_ms']:>6} ms"
                    f"  p99 {s['p99_ms']:>7} ms  errors {s['errors']}  reloads {len(found)}",
                    flush=True,
                )
    result = {
        "meta": run_meta(
            workers=workers,
            clients=clients,
            rounds=rounds,
            seconds=seconds,
            interval=interval,
            tags=tags,
            note="one server; phases alternate; load generator on the same machine",
        ),
        "rows": rows,
        "reloads": reloads,
        "summary": summarise(rows, reloads),
    }
    write_results(out, "reload", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase and round")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between reloads")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.rounds, args.seconds, args.interval, args.clients, args.workers, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
