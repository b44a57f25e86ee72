"""Micro-benchmark of the ellipse library: time per ellipse with and without GeoJSON.

    python -m benchmarks.ellipse_bench [--iterations N] [--points 64] [--out DIR]

Baseline, run in the same invocation: the same ring built vertex by vertex with pure-Python
geographiclib (what a straightforward implementation would do). Prints a markdown table and
writes `ellipse.json` and `ellipse.md` to the results folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from geographiclib.geodesic import Geodesic

from utils.geo.ellipse import covariance_ellipse
from utils.geo.geojson import ellipse_feature, ring_geometry

RESULTS = Path(__file__).resolve().parent / "results"


def _per_call_us(fn: Callable[[], object], iterations: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter() - start) / iterations)
    return best * 1e6


def _baseline_feature(
    lat: float, lon: float, sx: float, sy: float, rho: float, points: int
) -> dict:
    e = covariance_ellipse(sx, sy, rho, 0.95)
    geod = Geodesic.WGS84
    phi = np.radians(e.orientation_deg)
    lons, lats = [], []
    for t in np.linspace(0.0, 2 * np.pi, points, endpoint=False):
        east = e.semi_major_m * np.cos(t) * np.sin(phi) - e.semi_minor_m * np.sin(t) * np.cos(phi)
        north = e.semi_major_m * np.cos(t) * np.cos(phi) + e.semi_minor_m * np.sin(t) * np.sin(phi)
        d = geod.Direct(
            lat, lon, float(np.degrees(np.arctan2(east, north))), float(np.hypot(east, north))
        )
        lons.append(d["lon2"])
        lats.append(d["lat2"])
    return {"type": "Feature", "geometry": ring_geometry(np.array(lons), np.array(lats))}


def run(iterations: int, points: int, out: Path | None) -> list[dict]:
    lat, lon, sx, sy, rho = 45.07, 7.69, 21_000.0, 9_000.0, 0.35
    cases: list[tuple[str, Callable[[], object]]] = [
        ("ellipse parameters only", lambda: covariance_ellipse(sx, sy, rho, 0.95)),
        (
            f"with GeoJSON ({points} vertices, pyproj)",
            lambda: ellipse_feature(lat, lon, covariance_ellipse(sx, sy, rho, 0.95), points),
        ),
        (
            f"baseline: GeoJSON vertex by vertex (geographiclib, {points})",
            lambda: _baseline_feature(lat, lon, sx, sy, rho, points),
        ),
    ]
    rows = []
    baseline_us = None
    timings = [(name, _per_call_us(fn, iterations)) for name, fn in cases]
    baseline_us = timings[-1][1]
    for name, us in timings:
        rows.append(
            {
                "case": name,
                "us_per_ellipse": round(us, 2),
                "speed_vs_baseline": round(baseline_us / us, 1),
            }
        )
    table = ["| case | µs per ellipse | × faster than baseline |", "|---|---:|---:|"]
    table += [
        f"| {r['case']} | {r['us_per_ellipse']:.1f} | {r['speed_vs_baseline']:.1f} |" for r in rows
    ]
    print("\n".join(table))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "iterations": iterations,
            "points": points,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (out / "ellipse.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        (out / "ellipse.md").write_text("\n".join(table) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.iterations, args.points, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
