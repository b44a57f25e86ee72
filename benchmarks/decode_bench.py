"""Decode micro-benchmark: one 2 MB `iq_data` body -> validated canonical capture, ms per body.

    python -m benchmarks.decode_bench [--repeats 30] [--out DIR]

The body is the seed clients' format: 5 receivers x 8448 samples as `[[I, Q], ...]` with full
float64 decimals (about 2 MB). Each path ends in the same canonical complex64 capture:

- `stdlib`: `json.loads` + `utils.api.decoding.decode_iq_data` (numpy conversion and checks);
- `pydantic (before)`: what the service did before the fast path: BentoML's pydantic parse of
  the whole body (`PredictRequest.model_validate_json`) + `decode_iq_data`;
- `msgspec fast path (now)`: `utils.api.iq_json` splits the body into raw fields, parses
  `iq_data` with msgspec straight into float32 pairs, pydantic validates the rest of the body
  with a placeholder, then `decode_iq_data` on the array.

Writes `decode.json` and `decode.md` (ratios against `stdlib`, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compare import RESULTS, write_results
from utils.api.decoding import decode_iq_data
from utils.api.iq_json import join_fields, parse_capture, split_fields
from utils.api.schemas import PredictRequest
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

MAX_SAMPLES = 65_536


def make_body(spec: FeatureSpec) -> bytes:
    iq = generate_scenes(1, seed=3, spec=spec).iq[0].astype(np.complex128)
    pairs = np.stack([iq.real, iq.imag], axis=-1).tolist()
    return json.dumps({"iq_data": pairs, "cache_enabled": False}).encode()


def paths(spec: FeatureSpec) -> dict[str, Callable[[bytes], np.ndarray]]:
    def stdlib(body: bytes) -> np.ndarray:
        return decode_iq_data(json.loads(body)["iq_data"], spec, MAX_SAMPLES)

    def pydantic_before(body: bytes) -> np.ndarray:
        req = PredictRequest.model_validate_json(body)
        return decode_iq_data(req.iq_data or [], spec, MAX_SAMPLES)

    def fast_path(body: bytes) -> np.ndarray:
        fields = split_fields(body)
        assert fields is not None
        array = parse_capture(bytes(fields["iq_data"]), "iq_data")
        assert array is not None
        PredictRequest.model_validate_json(join_fields({**fields, "iq_data": b"[]"}))
        return decode_iq_data(array, spec, MAX_SAMPLES)

    return {
        "stdlib": stdlib,
        "pydantic (before)": pydantic_before,
        "msgspec fast path (now)": fast_path,
    }


def run(repeats: int, out: Path | None) -> dict[str, Any]:
    spec = FeatureSpec()
    body = make_body(spec)
    reference = None
    rows = []
    for name, decode in paths(spec).items():
        capture = decode(body)
        if reference is None:
            reference = capture
        np.testing.assert_array_equal(capture, reference)  # same answer on every path
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            decode(body)
            times.append(1000.0 * (time.perf_counter() - started))
        rows.append(
            {
                "path": name,
                "ms_per_body": round(statistics.median(times), 2),
                "p90_ms": round(float(np.percentile(times, 90)), 2),
            }
        )
    base = rows[0]["ms_per_body"]
    for row in rows:
        row["speedup_vs_stdlib"] = round(base / row["ms_per_body"], 2)
    result = {
        "meta": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(),
            "body_bytes": len(body),
            "receivers": spec.n_channels,
            "samples": spec.samples_per_capture,
            "repeats": repeats,
        },
        "rows": rows,
    }
    lines = [
        f"One `iq_data` body of {len(body) / 1e6:.2f} MB ({spec.n_channels} receivers x "
        f"{spec.samples_per_capture} samples) -> canonical capture, median of {repeats}.",
        "",
        "| path | ms per body | p90 ms | x faster than stdlib |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['path']} | {r['ms_per_body']} | {r['p90_ms']} | {r['speedup_vs_stdlib']} |"
        for r in rows
    ]
    write_results(out, "decode", result, "\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.repeats, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
