"""uvicorn's HTTP stack: httptools + uvloop (what `requirements/serve.txt` installs) against the
pure-Python h11 + asyncio it falls back to, servers side by side, interleaved.

    python -m benchmarks.http_stack [--tracking-uri URI --label resnet18] [--rounds 6]

uvicorn picks its HTTP parser and event loop when a worker starts: `httptools` and `uvloop` when
they can be imported, else h11 and asyncio. Both servers run this service from the same
environment; the baseline's workers get a `PYTHONPATH` folder whose `httptools.py` and
`uvloop.py` raise ImportError, so uvicorn falls back exactly as it would without them. Both
start at once and are measured in turn (order alternating by round) at c=1, 8 and 32, so host
noise lands on both alike; medians over rounds and their ratios. Writes `http_stack[-label].*`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.compare import (
    RESULTS,
    bentoml_serve,
    free_port,
    import_model_into,
    model_spec,
    run_meta,
    write_results,
)
from benchmarks.loadgen import run_load
from utils.api.decoding import encode_capture
from utils.dsp.synthetic import generate_scenes

STACKS = ("httptools+uvloop", "h11+asyncio")
LEVELS = (1, 8, 32)
REQUESTS = {1: 150, 8: 500, 32: 1000}
BLOCK = 'raise ImportError("blocked by benchmarks/http_stack.py: the h11 + asyncio baseline")\n'


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# uvicorn's HTTP stack, {meta['label']} model, {meta['workers']} workers, "
        f"{meta['rounds']} interleaved rounds (medians)",
        "",
        "| concurrency | httptools+uvloop req/s | h11+asyncio req/s | ratio | "
        "httptools+uvloop p99 ms | h11+asyncio p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['concurrency']} | {s['fast_rps']} | {s['base_rps']} | {s['rps_ratio']} | "
            f"{s['fast_p99_ms']} | {s['base_p99_ms']} | {s['errors']} |"
        )
    lines += ["", "Per round (req/s):", "", "| round | concurrency | " + " | ".join(STACKS) + " |"]
    lines.append("|---:|---:|---:|---:|")
    for key in sorted({(r["round"], r["concurrency"]) for r in result["rows"]}):
        cells = [
            next(
                str(r["rps"])
                for r in result["rows"]
                if (r["round"], r["concurrency"]) == key and r["stack"] == stack
            )
            for stack in STACKS
        ]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for level in LEVELS:
        med = {}
        for stack in STACKS:
            mine = [r for r in rows if r["stack"] == stack and r["concurrency"] == level]
            med[stack] = {
                "rps": round(statistics.median(r["rps"] for r in mine), 1),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 1),
                "errors": sum(r["errors"] for r in mine),
            }
        fast, base = med[STACKS[0]], med[STACKS[1]]
        out.append(
            {
                "concurrency": level,
                "fast_rps": fast["rps"],
                "base_rps": base["rps"],
                "rps_ratio": round(fast["rps"] / base["rps"], 2),
                "fast_p99_ms": fast["p99_ms"],
                "base_p99_ms": base["p99_ms"],
                "errors": fast["errors"] + base["errors"],
            }
        )
    return out


def run(
    rounds: int, workers: int, registry_uri: str | None, label: str, out: Path | None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rfloc-http-"))
    model_dir = import_model_into(work / "bentoml", registry_uri)
    spec = model_spec(model_dir)
    bodies = [
        {"iq_b64": encode_capture(c), "cache_enabled": False}
        for c in generate_scenes(16, seed=4242, spec=spec).iq
    ]
    blocked = work / "blocked"
    blocked.mkdir()
    for module in ("httptools", "uvloop"):
        (blocked / f"{module}.py").write_text(BLOCK)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        urls = {}
        for name in STACKS:
            home = work / f"home-{name.replace('+', '-')}"  # its own Prometheus folder
            home.mkdir()
            (home / "models").symlink_to(work / "bentoml" / "models")
            env = {
                "BENTOML_HOME": str(home),
                "BENTOML_DO_NOT_TRACK": "True",
                "SERVICE_WORKERS": str(workers),
            }
            if name == "h11+asyncio":
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(blocked), os.environ.get("PYTHONPATH", "")]
                ).rstrip(os.pathsep)
            port = free_port()
            stack.enter_context(
                bentoml_serve("service:Localization", port, env, work / f"{home.name}.log")
            )
            urls[name] = f"http://127.0.0.1:{port}/predict"
            run_load(urls[name], bodies, 8, 100)  # warm
        for index in range(rounds):
            order = STACKS if index % 2 == 0 else STACKS[::-1]
            for level in LEVELS:
                for name in order:
                    s = run_load(urls[name], bodies, level, REQUESTS[level]).summary()
                    rows.append({"round": index + 1, "stack": name, **s})
                    print(
                        f"  round {index + 1} {name:<17} c={level:<3} {s['rps']:>7} req/s  "
                        f"p99 {s['p99_ms']:>7} ms  errors {s['errors']}",
                        flush=True,
                    )
    result = {
        "meta": run_meta(
            workers=workers,
            rounds=rounds,
            label=label or "demo",
            model=f"{model_dir.parent.name}:{model_dir.name}",
            note="servers up together, measured in turn; load generator on the same machine",
        ),
        "rows": rows,
        "summary": summarise(rows),
    }
    name = f"http_stack-{label}" if label else "http_stack"
    write_results(out, name, result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--label", default="", help="a benchmark model's name (big_model.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.rounds, args.workers, args.tracking_uri, args.label, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
