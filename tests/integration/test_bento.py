"""The bento is self-contained: built into a fresh BENTOML_HOME, served from a virtualenv made
from nothing but the bento's own requirements, from a folder outside the project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.support.serving import import_demo_model, start_server
from utils.api.decoding import encode_capture
from utils.config import PROJECT_ROOT
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.model.runtime import ModelRuntime

FORBIDDEN = (
    "mlflow",
    "scikit-learn",
    "sklearn",
    "torch",
    "locust",
    "pytest",
    "librosa",
    "hypothesis",
    "onnx==",
    "geographiclib",
)


def test_bento_serves_from_its_own_requirements(
    demo_registry, tmp_path: Path, report: list[str]
) -> None:
    settings, _ = demo_registry
    home = tmp_path / "bentoml-home"
    model_tag = import_demo_model(home, settings.local_registry_dir)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", ".", "-o", "tag"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version

    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in manifest["services"][0]["models"]] == [model_tag]
    sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*.py")}
    assert "service.py" in sources and "utils/dsp/preprocessing.py" in sources
    assert not any(s.startswith(("tests/", "demo/", "benchmarks/")) for s in sources)
    assert "utils/model/registry.py" not in sources  # registry access is import-time only
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    for package in FORBIDDEN:
        assert package not in requirements, package
    # reproducible: every requirement pinned to one version, with its hashes (make lock)
    lines = [
        " ".join(line.split())
        for line in requirements.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    hashed = r"[a-z0-9._-]+(\[[a-z0-9,._-]+\])?==[^\s=;]+( --hash=sha256:[0-9a-f]{64})+"
    # BentoML appends its own pin, unhashed, after the lock (which pins it with hashes too)
    assert lines[-1] == "bentoml==1.4.40"
    assert any(line.startswith("bentoml==1.4.40 --hash=") for line in lines)
    assert len(lines) > 50
    for line in lines[:-1]:
        assert re.fullmatch(hashed, line), line

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # as the image's install script does it: uv, hashes verified where the lock gives them
    uv = str(Path(sys.executable).with_name("uv"))
    installed = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--python",
            python,
            "-q",
            "-r",
            str(bento / "env" / "python" / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    frozen = subprocess.run(
        [python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for package in ("mlflow", "scikit-learn", "torch", "locust", "pytest", "librosa"):
        assert f"\n{package}==" not in "\n" + frozen, package
    report.append(f"bento {tag}: {len(frozen.splitlines())} packages in its serving venv")

    outside = tmp_path / "elsewhere"  # nothing of the project is importable from here
    outside.mkdir()
    server = start_server(
        home,
        tmp_path / "bento.log",
        target=tag,
        cwd=outside,
        python=python,
        env={"SERVICE_WORKERS": "1", "PYTHONPATH": ""},
    )
    try:
        spec = FeatureSpec.model_validate(
            httpx.get(f"{server.url}/model/info", timeout=10).json()["feature_spec"]
        )
        capture = generate_scenes(1, seed=606, spec=spec).iq[0]
        body = {"iq_b64": encode_capture(capture)}
        got = httpx.post(f"{server.url}/predict", json=body, timeout=60)
        assert got.status_code == 200, got.text
        stored = home / "models" / model_tag.split(":")[0] / model_tag.split(":")[1]
        meta = yaml.safe_load((stored / "model.yaml").read_text())["metadata"]
        runtime = ModelRuntime(
            stored, meta, intra_threads=1, inter_threads=1, providers=["CPUExecutionProvider"]
        )
        want = runtime.predict([capture])
        position = got.json()["position"]
        assert position["latitude"] == pytest.approx(float(want.positions[0, 0]), abs=1e-4)
        assert position["longitude"] == pytest.approx(float(want.positions[0, 1]), abs=1e-4)
        assert np.isfinite(got.json()["uncertainty"]["sigma_x"])
        # the map page travels with the bento, its vendored files too (served offline)
        page = httpx.get(f"{server.url}/map/", timeout=10)
        assert page.status_code == 200 and "map.js" in page.text
        for asset in ("map.js", "vendor/leaflet/leaflet.js", "vendor/world-atlas/LICENSE"):
            assert httpx.get(f"{server.url}/map/{asset}", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0, server.log()[-3000:]
