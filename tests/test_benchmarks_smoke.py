"""Benchmark scripts run at tiny scale so they cannot rot (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ellipse_bench import main as ellipse_bench


def test_ellipse_bench_writes_its_results(tmp_path: Path) -> None:
    assert ellipse_bench(["--iterations", "3", "--points", "16", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ellipse.json").read_text())
    assert len(data["rows"]) == 3 and all(r["us_per_ellipse"] > 0 for r in data["rows"])
    assert (tmp_path / "ellipse.md").read_text().startswith("| case |")
