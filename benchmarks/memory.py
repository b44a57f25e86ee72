"""Worker memory under the worst legal load, with and without the in-flight body budget.

    python -m benchmarks.memory [--clients 32] [--rounds 2] [--kinds iq_data,iq_b64,iq_b64_samples]

Serves the newest import with `bentoml serve` (2 workers, the default on 2 cores, as in the
Kubernetes pod) once per body kind and setting, "before" (`MAX_INFLIGHT_BYTES=0`: no budget)
and "after" (the default budget) alternating round by round. Each run sends `clients`
concurrent bodies of the largest size the service accepts, all at once:

- `iq_data`: a `/predict_batch` `iq_samples` body just under `MAX_REQUEST_BYTES` and just
  under `MAX_JSON_VALUES`, its numbers written with long decimals (the most bytes and the
  most parsed values a body may carry);
- `iq_b64`: a `/predict` `iq_b64` body at `/predict`'s byte limit (read, parsed and decoded
  before its 400: more samples than a capture may hold);
- `iq_b64_samples`: a valid `/predict_batch` of full-length captures just under
  `MAX_REQUEST_BYTES`;
- `huge_header`: a valid `/ellipse` with one 16 MiB header; here "before" is
  `MAX_HEADER_BYTES` out of reach (the server read every header whole) and "after" the default
  (431 once the header block passes 64 KiB, the rest unread);
- `oversized_error`: a `/predict_batch` whose `iq_b64_samples` is 1 000 000 numbers (2 MB):
  before issue 28 pydantic reported every item, a 149 MB error and 1.27 GB of worker per
  request; now 413 at the 101st item (`utils/asgi/field_guard.py`). That fix has no switch, so
  its "before" differs from "after" only by the body budget, as the body kinds do.

Clients send with `Expect: 100-continue` (a refused body is never sent) and come back after
`Retry-After` until answered. Reports what the clients got, the refusals counted by the
service, the peak RSS of the busiest worker and of the whole server (the figure a pod's
memory limit has to hold), the RSS kept afterwards and the wall time until every client had
its answer. Writes `memory.json` and `memory.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

from benchmarks.compare import (
    RESULTS,
    answer_counts,
    bentoml_serve,
    free_port,
    numeric_medians,
    run_meta,
    write_results,
)
from benchmarks.oversized import WorkerRSS
from utils.api.body_limits import predict_body_bytes
from utils.api.decoding import encode_capture
from utils.config import get_settings
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

KINDS = {
    "iq_data": "/predict_batch",
    "iq_b64": "/predict",
    "iq_b64_samples": "/predict_batch",
    "huge_header": "/ellipse",
    "oversized_error": "/predict_batch",
}
#: request headers of a kind beyond its Content-Type, and a kind's own "before" settings
HEADERS = {"huge_header": {"x-big": "a" * 16 * 2**20}}
BEFORE = {"huge_header": {"MAX_HEADER_BYTES": str(2**40)}}
MB = 2**20
DEADLINE_S = 300.0


def _capture(samples: int, seed: int = 3) -> np.ndarray:
    """A synthetic scene's capture, tiled to `samples` per receiver: complex64 [rx, samples]."""
    iq = generate_scenes(1, seed=seed, spec=FeatureSpec()).iq[0]
    reps = -(-samples // iq.shape[1])
    return np.tile(iq, (1, reps))[:, :samples].astype(np.complex64)


def iq_data_body(max_bytes: int, max_values: int) -> bytes:
    """`/predict_batch` with two `iq_samples` items, as many values as `MAX_JSON_VALUES` lets
    through, each written with as many decimals as `MAX_REQUEST_BYTES` leaves room for."""
    receivers = FeatureSpec().n_channels
    items = 2
    pairs = (max_values - 4096) // (2 * receivers * items)
    values = 2 * receivers * items * pairs
    # "[a,b]," per pair: 2 bytes of punctuation per value, and a little for the rest
    width = (max_bytes - 4096) // values - 2
    decimals = width - 3  # "-0." then the decimals
    capture = _capture(pairs)
    flat = np.stack([capture.real, capture.imag], axis=-1).astype(np.float64) / 4.0
    text = np.char.mod(f"%.{decimals}f", np.clip(flat, -0.999, 0.999).ravel())
    numbers = iter(text.tolist())
    rows = []
    for _ in range(receivers):
        rows.append(
            "[" + ",".join(f"[{next(numbers)},{next(numbers)}]" for _ in range(pairs)) + "]"
        )
    item = "[" + ",".join(rows) + "]"
    body = ('{"cache_enabled":false,"iq_samples":[' + ",".join([item] * items) + "]}").encode()
    assert len(body) <= max_bytes and body.count(b",") < max_values, (len(body), values)
    return body


def iq_b64_body(max_bytes: int) -> bytes:
    """`/predict` `iq_b64` of exactly `/predict`'s byte limit (valid base64, too many samples)."""
    head, tail = b'{"cache_enabled":false,"iq_b64":"', b'"}'
    room = (max_bytes - len(head) - len(tail)) // 4 * 4
    raw = np.random.default_rng(1).integers(0, 256, room // 4 * 3, dtype=np.uint8).tobytes()
    body = head + encode_capture(np.frombuffer(raw[: len(raw) // 8 * 8], "<c8")).encode() + tail
    assert len(body) <= max_bytes, len(body)
    return body


def iq_b64_samples_body(max_bytes: int, max_samples: int) -> bytes:
    """A valid `/predict_batch` of full-length captures (`MAX_SAMPLES_PER_CAPTURE`)."""
    one = encode_capture(_capture(max_samples))
    items = (max_bytes - 4096) // (len(one) + 3)
    body = '{"cache_enabled":false,"iq_b64_samples":["' + '","'.join([one] * items) + '"]}'
    return body.encode()


async def _client(
    session: aiohttp.ClientSession, url: str, body: bytes, deadline: float, kind: str
) -> tuple[str, str, int]:
    """(first answer, final answer, attempts): comes back after Retry-After while refused."""
    first, attempts = "", 0
    while True:
        attempts += 1
        try:
            async with session.post(
                url,
                data=body,
                headers={"content-type": "application/json", **HEADERS.get(kind, {})},
                expect100=True,
            ) as r:
                await r.read()
                answer, retry = str(r.status), r.headers.get("retry-after")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            answer, retry = type(exc).__name__, None
        first = first or answer
        if answer != "503" or time.monotonic() > deadline:
            return first, answer, attempts
        await asyncio.sleep(float(retry or 1))


async def _attack(
    url: str, body: bytes, clients: int, kind: str
) -> tuple[list[tuple[str, str, int]], float]:
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    connector = aiohttp.TCPConnector(limit=clients, force_close=True)
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        deadline = time.monotonic() + DEADLINE_S
        answers = await asyncio.gather(
            *(_client(session, url, body, deadline, kind) for _ in range(clients))
        )
    return list(answers), time.perf_counter() - started


def _refused(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("rfloc_inflight_refused_total")
    )


def one_server(
    name: str, env: dict[str, str], kind: str, body: bytes, clients: int, logs: Path
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with bentoml_serve("service:Localization", port, env, logs / f"{name}-{kind}.log") as proc:
        rss = WorkerRSS(proc.pid)
        time.sleep(2.0)
        worker_before, total_before = rss.now()
        with rss:
            answers, seconds = asyncio.run(_attack(base + KINDS[kind], body, clients, kind))
        time.sleep(3.0)
        worker_after, total_after = rss.now()
        refused = _refused(base)
        ready = httpx.get(f"{base}/readyz", timeout=10).status_code == 200
    return {
        "name": name,
        "kind": kind,
        "body_bytes": len(body),
        "first_answers": dict(Counter(a[0] for a in answers)),
        "final_answers": dict(Counter(a[1] for a in answers)),
        "attempts": sum(a[2] for a in answers),
        "refused_503": refused,
        "seconds": seconds,
        "worker_rss_before_mb": worker_before / MB,
        "worker_rss_peak_mb": rss.worker_peak / MB,
        "worker_rss_after_mb": worker_after / MB,
        "server_rss_before_mb": total_before / MB,
        "server_rss_peak_mb": rss.total_peak / MB,
        "server_rss_after_mb": total_after / MB,
        "ready_after": ready,
    }


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Worker memory: {meta['clients']} concurrent maximum-size bodies of each kind "
        f"(2 workers), without and with the in-flight body budget",
        "",
        f"{meta['timestamp']}, Python {meta['python']}, {meta['cpus']} CPUs; median of "
        f"{meta['rounds']} rounds, before and after alternating, a fresh server per run. "
        f"before: `MAX_INFLIGHT_BYTES=0`; after: {result['budget_bytes']} bytes per worker. "
        "Clients use `Expect: 100-continue` and come back after `Retry-After`.",
        "",
        "| body | | first answers | final answers | 503s | busiest worker peak RSS | "
        "server peak RSS | server RSS after | all answered in |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in result["summary"].items():
        for name in ("before", "after"):
            r = row[name]
            lines.append(
                f"| {kind} {r['body_mb']:.1f} MB | {name} | {r['first_answers']} | "
                f"{r['final_answers']} | {r['refused_503']:.0f} | "
                f"{r['worker_rss_peak_mb']:.0f} MB | {r['server_rss_peak_mb']:.0f} MB | "
                f"{r['server_rss_after_mb']:.0f} MB | {r['seconds']:.1f} s |"
            )
    worst = result["worst_server_peak_mb"]
    lines += [
        "",
        f"Worst server peak with the budget: {worst['after']:.0f} MB (without: "
        f"{worst['before']:.0f} MB); the pod's memory limit: {result['pod_limit_mb']} MB "
        f"({result['pod_limit_mb'] / worst['after']:.2f}x the worst peak).",
    ]
    return "\n".join(lines)


def pod_memory_limit_mb() -> int:
    """The container's memory limit in deploy/k8s/deployment.yaml, in MiB."""
    import yaml

    path = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "deployment.yaml"
    (container,) = yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"]
    limit = str(container["resources"]["limits"]["memory"])
    units = {"Gi": 1024, "Mi": 1}
    for suffix, factor in units.items():
        if limit.endswith(suffix):
            return int(float(limit.removesuffix(suffix)) * factor)
    return int(limit) // MB


def run(clients: int, rounds: int, kinds: list[str], out: Path | None) -> dict[str, Any]:
    settings = get_settings()
    receivers = FeatureSpec().n_channels
    predict_limit = predict_body_bytes(settings.max_samples_per_capture, receivers)
    bodies = {
        "iq_data": lambda: iq_data_body(settings.max_request_bytes, settings.max_json_values),
        "iq_b64": lambda: iq_b64_body(predict_limit),
        "iq_b64_samples": lambda: iq_b64_samples_body(
            settings.max_request_bytes, settings.max_samples_per_capture
        ),
        "huge_header": lambda: b'{"latitude":45.0,"longitude":7.6,"sigma_x":100.0,"sigma_y":50.0}',
        "oversized_error": lambda: b'{"iq_b64_samples":[' + b",".join([b"1"] * 10**6) + b"]}",
    }
    configs = {"before": {"MAX_INFLIGHT_BYTES": "0"}, "after": {}}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as logs:
        for kind in kinds:
            body = bodies[kind]()
            print(f"{kind}: {len(body)} bytes, {body.count(b',')} commas", flush=True)
            for i in range(rounds):
                for name in ["before", "after"] if i % 2 == 0 else ["after", "before"]:
                    before = BEFORE.get(kind, {}) if name == "before" else {}
                    env = {"SERVICE_WORKERS": "2", "REDIS_URL": "", **configs[name], **before}
                    row = one_server(name, env, kind, body, clients, Path(logs))
                    print({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
                    rows.append(row)
            del body
    summary: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        summary[kind] = {}
        for name in ("before", "after"):
            runs = [r for r in rows if r["kind"] == kind and r["name"] == name]
            med = numeric_medians(runs)
            med["body_mb"] = runs[0]["body_bytes"] / 1e6
            med["first_answers"] = answer_counts(runs[-1]["first_answers"])
            med["final_answers"] = answer_counts(runs[-1]["final_answers"])
            med["ready_after"] = all(r["ready_after"] for r in runs)
            summary[kind][name] = med
    result = {
        "meta": run_meta(clients=clients, rounds=rounds, workers=2, kinds=kinds),
        "budget_bytes": settings.max_inflight_bytes,
        "pod_limit_mb": pod_memory_limit_mb(),
        "worst_server_peak_mb": {
            name: max(max(r["server_rss_peak_mb"] for r in rows if r["name"] == name), 0)
            for name in ("before", "after")
        },
        "rounds": rows,
        "summary": summary,
    }
    write_results(out, "memory", result, markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.clients, args.rounds, [k for k in args.kinds.split(",") if k], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
