"""Benchmark scripts run at tiny scale so they cannot rot (figures are not asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.scripts import run_script


def test_ellipse_bench_writes_its_results(tmp_path: Path) -> None:
    run_script(
        "benchmarks.ellipse_bench", "--iterations", "3", "--points", "16", "--out", str(tmp_path)
    )
    data = json.loads((tmp_path / "ellipse.json").read_text())
    assert len(data["rows"]) == 3 and all(r["us_per_ellipse"] > 0 for r in data["rows"])
    assert (tmp_path / "ellipse.md").read_text().startswith("| case |")


def test_decode_bench_paths_agree_and_write_results(tmp_path: Path) -> None:

    run_script("benchmarks.decode_bench", "--repeats", "2", "--out", str(tmp_path))
    data = json.loads((tmp_path / "decode.json").read_text())
    assert [r["path"] for r in data["rows"]] == [
        "stdlib",
        "pydantic (before)",
        "msgspec fast path (now)",
    ]
    assert data["meta"]["body_bytes"] > 1_000_000 and all(
        r["ms_per_body"] > 0 for r in data["rows"]
    )


def test_compare_runs_at_tiny_scale(demo_registry, tmp_path: Path) -> None:
    """Every server of the comparison starts, answers and lands in the results."""
    settings, _ = demo_registry
    run_script(
        "benchmarks.compare",
        "--concurrency",
        "1,2",
        "--per-client",
        "2",
        "--min-requests",
        "4",
        "--scenes",
        "2",
        "--ceiling-seconds",
        "0.2",
        "--ceiling-batches",
        "1,8",
        "--workers",
        "1",
        "--tracking-uri",
        settings.tracking_uri,
        "--out",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "compare.json").read_text())
    servers = {(r["server"], r["encoding"]) for r in data["rows"]}
    for expected in (
        ("this service (BentoML)", "iq_b64"),
        ("this service (BentoML)", "iq_data"),
        ("mlflow models serve", "iq_data"),
        ("per-request FastAPI", "iq_data"),
        ("in-process ceiling", "iq_b64"),
    ):
        assert expected in servers
    ceiling = [r["batch"] for r in data["rows"] if r["server"] == "in-process ceiling"]
    assert ceiling == [1, 8]  # --ceiling-batches: only the sizes asked for
    served = [r for r in data["rows"] if r["server"] != "in-process ceiling"]
    assert all(r["errors"] == 0 and r["requests"] >= 4 and r["peak_rss_mb"] > 0 for r in served)
    # the kernel counts CPU in 10 ms ticks: a 4-request row may read 0, the whole run cannot
    assert all(r["cpu_ms_per_request"] >= 0 for r in served)
    assert sum(r["cpu_ms_per_request"] * r["requests"] for r in served) > 0
    # this service's rows say how large its batches were (from its own /metrics)
    ours = [r for r in served if r["server"] == "this service (BentoML)"]
    assert all(1 <= r["mean_batch"] <= 8 for r in ours)
    assert data["cache_hit"]["p50_ms"] > 0 and data["targets"]
    assert "| target |" in (tmp_path / "compare.md").read_text()


def test_compare_runs_on_the_backbone_sized_model(tmp_path: Path) -> None:
    """`make benchmark MODEL=resnet18`'s path at tiny scale: the model built and registered in a
    scratch registry, imported by import_model.py, served under two dispatch policies, its
    results under its own name with the big-model targets."""
    uri = run_script(
        "benchmarks.big_model", "--registry", str(tmp_path / "registry")
    ).stdout.splitlines()[-1]
    assert uri.startswith("sqlite:///")
    run_script(
        "benchmarks.compare",
        *("--tracking-uri", uri, "--label", "resnet18", "--policies", "greedy,cork"),
        *("--encodings", "iq_b64", "--skip", "mlflow,fastapi", "--concurrency", "1,4"),
        *("--per-client", "2", "--min-requests", "4", "--scenes", "2", "--workers", "1"),
        *("--ceiling-seconds", "0.1", "--ceiling-batches", "1,4", "--out", str(tmp_path)),
    )
    data = json.loads((tmp_path / "compare-resnet18.json").read_text())
    assert data["meta"]["label"] == "resnet18" and data["meta"]["model"]
    servers = {r["server"] for r in data["rows"]}
    assert servers == {"in-process ceiling", "this service (BentoML)", "this service (cork)"}
    assert [r["batch"] for r in data["rows"] if r["server"] == "in-process ceiling"] == [1, 4]
    assert all(r["errors"] == 0 for r in data["rows"] if "errors" in r)
    targets = {t["target"].split(" (")[0] for t in data["targets"]}
    assert "throughput / in-process batched ceiling" in targets
    assert not (tmp_path / "compare.json").exists()  # the demo's results are not overwritten


def test_locustfile_runs_headless(demo_registry, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.serving import import_demo_model, start_server
    from utils.config import PROJECT_ROOT

    settings, _ = demo_registry
    home = tmp_path / "home"
    import_demo_model(home, settings.local_registry_dir)
    server = start_server(home, tmp_path / "serve.log", env={"SERVICE_WORKERS": "1"})
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                "locustfile.py",
                "--headless",
                "-u",
                "4",
                "-r",
                "4",
                "-t",
                "6s",
                "--host",
                server.url,
                "--csv",
                str(tmp_path / "locust"),
                "--only-summary",
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LOCUST_SCENES": "4"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        stats = (tmp_path / "locust_stats.csv").read_text().splitlines()
        header = stats[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in stats[1:]]
        names = {r["Name"] for r in rows}
        assert {"/predict [iq_b64]", "/ellipse"} <= names
        total = next(r for r in rows if r["Name"] == "Aggregated")
        assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0
    finally:
        server.stop()


def test_burst_runs_every_policy_at_tiny_scale(demo_registry, tmp_path: Path) -> None:
    """Burst then quiet: every dispatch policy, the echo floor and the compute baseline land
    in the results with their targets."""
    settings, _ = demo_registry
    run_script(
        "benchmarks.burst",
        "--burst-seconds",
        "1",
        "--requests",
        "6",
        "--workers",
        "1",
        "--scenes",
        "2",
        "--tracking-uri",
        settings.tracking_uri,
        "--out",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "burst.json").read_text())
    phases = {(r["policy"], r["phase"], r["concurrency"]) for r in data["rows"]}
    for policy in ("greedy", "cork", "proxy"):
        for phase, level in (
            ("fresh", 1),
            ("fresh", 64),
            ("burst iq_b64", 64),
            ("burst iq_data", 16),
            ("after burst", 1),
            ("after burst", 32),
        ):
            assert (policy, phase, level) in phases
    assert ("echo", "framework floor", 1) in phases
    assert data["compute_ms"] > 0
    assert all(r["errors"] == 0 for r in data["rows"]), data["rows"]
    assert {t["policy"] for t in data["targets"]} == {"greedy", "cork", "proxy"}
    p99 = [t for t in data["targets"] if t["target"] == "c=1 p99 after burst / fresh"]
    assert len(p99) == 3 and all(t["value"] > 0 for t in p99)
    assert "| policy | target |" in (tmp_path / "burst.md").read_text()


def test_seed_sla_runs_both_encodings_at_tiny_scale(demo_registry, tmp_path: Path) -> None:
    """heimdall's SLA scenario: iq_data then iq_b64, fresh / burst / after burst, each row
    with its verdict (figures are not asserted, only that they were measured)."""
    settings, _ = demo_registry
    run_script(
        "benchmarks.seed_sla",
        *("--clients", "4", "--seconds", "1", "--warmup-seconds", "1", "--burst-seconds", "1"),
        *("--captures", "2", "--tracking-uri", settings.tracking_uri, "--out", str(tmp_path)),
    )
    data = json.loads((tmp_path / "seed_sla.json").read_text())
    seen = {(r["encoding"], r["phase"], r["clients"]) for r in data["rows"]}
    for encoding in ("iq_data", "iq_b64"):
        assert {
            (encoding, "fresh", 4),
            (encoding, "burst", 8),
            (encoding, "after burst", 4),
        } <= seen
    assert data["meta"]["body_kb"]["iq_data"] > 400  # the seed's 5 x 2048 pairs
    assert all(r["requests"] > 0 and r["success"] == 1.0 for r in data["rows"]), data["rows"]
    assert all(isinstance(r["meets_p95"], bool) for r in data["rows"])
    assert "| iq_data | after burst | 4 |" in (tmp_path / "seed_sla.md").read_text()


def test_steady_interleaves_policies_at_tiny_scale(demo_registry, tmp_path: Path) -> None:
    """Both servers up at once, measured in turn, fresh and after a burst, with ratios."""
    settings, _ = demo_registry
    run_script(
        "benchmarks.steady",
        "--rounds",
        "2",
        "--requests",
        "8",
        "--burst-seconds",
        "1",
        "--workers",
        "1",
        "--tracking-uri",
        settings.tracking_uri,
        "--out",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "steady.json").read_text())
    seen = {(r["policy"], r["state"], r["concurrency"]) for r in data["rows"]}
    assert seen == {
        (p, s, c) for p in ("greedy", "cork") for s in ("fresh", "after burst") for c in (32, 64)
    }
    assert all(r["errors"] == 0 and r["statuses"] == {"200": 8} for r in data["rows"])
    cork = [s for s in data["summary"] if s["policy"] == "cork"]
    assert cork and all(s["rps_vs_cork"] == 1.0 for s in cork)
    assert "| round |" in (tmp_path / "steady.md").read_text()


def test_scan_compares_raw_and_route_labels_at_tiny_scale(home: Path, tmp_path: Path) -> None:
    """A 40-path scan against each labelling: every invented path is a 404, and only the raw
    labels gain a series per path. The script serves the newest import of the BentoML home
    it is given (the module's own, not whatever the machine's default home holds)."""
    run_script(
        "benchmarks.scan",
        *("--paths", "40", "--clients", "4", "--rounds", "1", "--workers", "1"),
        *("--out", str(tmp_path)),
        env={"BENTOML_HOME": str(home)},
    )
    data = json.loads((tmp_path / "scan.json").read_text())
    raw, route = data["summary"]["raw"], data["summary"]["route"]
    assert raw["answers"] == route["answers"] == "40× 404"
    assert raw["samples_after"] - raw["samples_before"] >= 40
    assert route["samples_after"] - route["samples_before"] < 40
    assert raw["ready_after"] and route["ready_after"]
    assert "| raw |" in (tmp_path / "scan.md").read_text()


def test_asgi_layers_measures_every_layer_of_the_stack(tmp_path: Path) -> None:
    """In process: the app alone, the stack service.py adds, and each layer left out."""
    out = str(tmp_path)
    run_script("benchmarks.asgi_layers", "--requests", "20", "--rounds", "1", "--out", out)
    data = json.loads((tmp_path / "asgi_layers.json").read_text())
    names = data["layers"]
    assert names[0] == "ClientGone" and len(names) == len(set(names)) >= 13
    for row in data["requests"].values():
        assert row["alone_us"] > 0 and row["stack_us"] > 0 and set(row["saved_us"]) == set(names)
    assert "| layer |" in (tmp_path / "asgi_layers.md").read_text()


def test_path_attributes_every_window_at_tiny_scale(demo_registry, tmp_path: Path) -> None:
    """Where the time goes: py-spy on both workers at c=1 and c=2 (Python frames, and native
    frames at c=2), every window's samples attributed and converted, the in-process timers."""
    settings, _ = demo_registry
    run_script(
        "benchmarks.path",
        *("--seconds", "2", "--warmup-seconds", "1", "--levels", "1,2", "--native-levels", "2"),
        *("--repeats", "3", "--captures", "2"),
        *("--tracking-uri", settings.tracking_uri, "--out", str(tmp_path)),
    )
    data = json.loads((tmp_path / "path.json").read_text())
    windows = {(w["concurrency"], w["profile"]): w for w in data["windows"]}
    assert set(windows) == {(1, "none"), (1, "python"), (2, "none"), (2, "python"), (2, "native")}
    for (_, profile), w in windows.items():
        assert w["requests"] > 0 and w["non_2xx"] == 0 and w["errors"] == 0, w
        assert w["cpu_ms_per_request"] > 0
        if profile == "none":
            continue
        attributed = path_stage_sum(w) + w["unattributed_us_per_request"]
        assert w["samples"] > 0 and attributed == pytest.approx(
            w["cpu_ms_per_request"] * 1000, rel=0.01
        )
    assert "preprocessing (mel: scipy, numpy)" in windows[(2, "python")]["stages"]
    assert len(data["meta"]["batching"]) == 2  # each worker's choice, from its start-up log
    assert {r["batch"] for r in data["timers"]} == {1, 8}
    assert "| stage | c=1 µs/request | c=2 µs/request |" in (tmp_path / "path.md").read_text()


def path_stage_sum(window: dict) -> float:
    return sum(s["us_per_request"] for s in window["stages"].values())
