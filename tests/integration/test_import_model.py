"""import_model.py against a real `mlflow server` process and the embedded SQLite registry.

Every run is a real subprocess of the CLI with its own BENTOML_HOME, so exit codes, messages and
the store's contents are observed exactly as an operator would see them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import yaml
from mlflow.tracking import MlflowClient

from demo.bootstrap import bootstrap
from tests.support.mlflow_server import mlflow_server as start_mlflow_server
from tests.support.model_factory import experiment, register_files, register_onnx_model, toy_model
from tests.support.registry import make_settings
from tests.support.serving import free_port, run_import_model
from utils.config import PROJECT_ROOT
from utils.dsp.feature_spec import FeatureSpec


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server: SQLite backend, local artifact root, free port."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@dataclass(frozen=True)
class ServerRegistry:
    uri: str
    client: MlflowClient


@pytest.fixture(scope="session")
def server_registry(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> ServerRegistry:
    """The demo model (small training run: no test here depends on its quality) plus
    deliberately broken models, on the server."""
    settings = make_settings(tmp_path_factory.mktemp("unused-local"))
    bootstrap(settings, tracking_uri=mlflow_server, n_scenes=500)
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    exp = experiment(client)
    spec = FeatureSpec()
    register_onnx_model(client, exp, "no_spec_model", toy_model(), None, alias=None)
    register_onnx_model(
        client, exp, "wrong_input_model", toy_model(input_name="spectrogram"), spec, alias=None
    )
    register_onnx_model(
        client, exp, "wrong_width_model", toy_model(uncertainty_width=4), spec, alias=None
    )
    register_files(
        client,
        "corrupt_model",
        {
            "model.onnx": b"\x08\x07garbage-not-onnx" * 50,
            "feature_spec.json": spec.to_json().encode(),
        },
    )
    # the demo model (weights as external data) re-registered without its weights file:
    # only a whole-folder copy works, and a missing file must be caught at import
    mv = client.get_model_version_by_alias("localization_model", "production")
    artifacts = Path(
        client.download_artifacts(mv.run_id, "model", str(tmp_path_factory.mktemp("weights")))
    )
    files = {p.name: p.read_bytes() for p in artifacts.iterdir() if not p.name.endswith(".data")}
    assert any(p.name.endswith(".data") for p in artifacts.iterdir())
    register_files(client, "missing_weights_model", files)
    return ServerRegistry(mlflow_server, client)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def tag(self) -> str:
        return self.stdout.strip().splitlines()[-1]


def run_import(home: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    started = time.monotonic()
    done = run_import_model(home, *args, env=env)
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def store_listing(home: Path) -> list[str]:
    models = home / "models"
    if not models.exists():
        return []
    return sorted(str(p.relative_to(models)) for p in models.rglob("*"))


def stored(home: Path, tag: str) -> tuple[Path, dict]:
    name, version = tag.split(":")
    folder = home / "models" / name / version
    return folder, yaml.safe_load((folder / "model.yaml").read_text())


@pytest.fixture(scope="module")
def seeded_home(server_registry: ServerRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the demo model from the server (one real import), copied by every case
    that needs a store with something in it to stay unchanged."""
    home = tmp_path_factory.mktemp("seeded-home")
    seeded = run_import(home, "--tracking-uri", server_registry.uri)
    assert seeded.code == 0, seeded.stderr
    assert store_listing(home)
    return home


def test_help_lists_the_options() -> None:
    done = subprocess.run(
        [sys.executable, "import_model.py", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    for option in (
        "--tracking-uri",
        "--name",
        "--stage",
        "--alias",
        "--version",
        "--force",
        "--json",
        "Exit codes",
    ):
        assert option in done.stdout


def test_stage_path_from_a_real_server(server_registry: ServerRegistry, tmp_path: Path) -> None:
    run = run_import(tmp_path, "--tracking-uri", server_registry.uri)
    assert run.code == 0, run.stderr
    folder, info = stored(tmp_path, run.tag)
    labels, meta = info["labels"], info["metadata"]
    assert labels["registered_name"] == "localization_model"
    assert labels["mlflow_version"] == "1" and labels["mlflow_stage"] == "Production"
    assert len(labels["mlflow_run_id"]) == 32 and len(labels["sha256"]) == 12
    sha = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    assert meta["sha256"] == sha and labels["sha256"] == sha[:12]
    assert meta["source_model_uri"] == "models:/localization_model/Production"
    assert meta["feature_spec"]["receivers"][0]["name"] == "Torino"
    assert meta["metrics"]["accuracy_meters"] > 0 and meta["metrics"]["training_samples"] > 0
    assert meta["imported_at"].endswith("Z")
    # whole folder: external-data weights came along and the stored model runs
    assert list(folder.glob("*.data")) and (folder / "feature_spec.json").exists()
    onnx.checker.check_model(str(folder / "model.onnx"))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["positions", "uncertainties"]


def test_alias_and_version_paths(server_registry: ServerRegistry, tmp_path: Path) -> None:
    by_alias = run_import(
        tmp_path, "--tracking-uri", server_registry.uri, "--alias", "production", "--json"
    )
    assert by_alias.code == 0, by_alias.stderr
    _, info = stored(tmp_path, by_alias.stdout.split('"tag": "')[1].split('"')[0])
    assert info["labels"]["mlflow_alias"] == "production"
    assert info["metadata"]["source_model_uri"] == "models:/localization_model@production"
    by_version = run_import(
        tmp_path, "--tracking-uri", server_registry.uri, "--version", "1", "--force"
    )
    assert by_version.code == 0, by_version.stderr
    _, info = stored(tmp_path, by_version.tag)
    assert info["metadata"]["source_model_uri"] == "models:/localization_model/1"
    assert "mlflow_stage" not in info["labels"]


def test_embedded_sqlite_registry(demo_registry, tmp_path: Path) -> None:
    settings, _ = demo_registry
    run = run_import(tmp_path, env={"LOCAL_REGISTRY_DIR": str(settings.local_registry_dir)})
    assert run.code == 0, run.stderr
    _, info = stored(tmp_path, run.tag)
    assert info["metadata"]["registry"].startswith("sqlite:///")
    assert info["metadata"]["metrics"]["ellipse_coverage_95"] >= 0.9


def test_idempotent_and_force(server_registry: ServerRegistry, tmp_path: Path) -> None:
    first = run_import(tmp_path, "--tracking-uri", server_registry.uri)
    assert first.code == 0, first.stderr
    listing = store_listing(tmp_path)
    again = run_import(tmp_path, "--tracking-uri", server_registry.uri)
    assert again.code == 0 and again.tag == first.tag
    assert "already imported" in again.stdout
    assert store_listing(tmp_path) == listing
    forced = run_import(tmp_path, "--tracking-uri", server_registry.uri, "--force")
    assert forced.code == 0 and forced.tag != first.tag
    versions = [p for p in (tmp_path / "models" / "localization_model").iterdir() if p.is_dir()]
    assert len(versions) == 2


def test_model_without_feature_spec_gets_defaults_and_a_warning(
    server_registry: ServerRegistry, tmp_path: Path
) -> None:
    run = run_import(tmp_path, "--tracking-uri", server_registry.uri, "--name", "no_spec_model")
    assert run.code == 0, run.stderr
    assert "no feature_spec.json" in run.stderr
    _, info = stored(tmp_path, run.tag)
    assert info["labels"]["feature_spec"] == "defaults"
    assert info["metadata"]["warnings"] and info["metadata"]["feature_spec"]["n_mels"] == 128


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--name", "nobody"), 4, "registered model 'nobody' not found"),
        (("--stage", "Staging"), 4, "no version in stage 'Staging'"),
        (("--alias", "champion"), 4, "no alias 'champion'"),
        (("--version", "42"), 4, "no version '42'"),
        (
            ("--name", "wrong_input_model"),
            5,
            "input: expected exactly one input 'mel_spectrogram', got 'spectrogram'",
        ),
        (
            ("--name", "wrong_width_model"),
            5,
            "output 'uncertainties': expected [batch, 2] or [batch, 3], got ['batch', 4]",
        ),
        (("--name", "corrupt_model"), 6, "onnx.checker rejects model.onnx"),
        (("--name", "missing_weights_model"), 6, "corrupt or unreadable model"),
    ],
)
def test_failures_leave_the_store_unchanged(
    server_registry: ServerRegistry,
    seeded_home: Path,
    tmp_path: Path,
    args: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    shutil.copytree(seeded_home, tmp_path, dirs_exist_ok=True)
    before = store_listing(tmp_path)
    assert before == store_listing(seeded_home)
    run = run_import(tmp_path, "--tracking-uri", server_registry.uri, *args)
    assert run.code == code, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("import_model: error:")]
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert store_listing(tmp_path) == before


def test_unreachable_registry_fails_fast(tmp_path: Path) -> None:
    run = run_import(tmp_path, "--tracking-uri", f"http://user:secret@127.0.0.1:{free_port()}")
    assert run.code == 3
    assert "registry unreachable" in run.stderr and "secret" not in run.stderr
    assert run.seconds < 30  # a hang guard: MLflow's default retries would take minutes
    assert store_listing(tmp_path) == []


def test_missing_embedded_registry(tmp_path: Path) -> None:
    run = run_import(tmp_path / "home", env={"LOCAL_REGISTRY_DIR": str(tmp_path / "nothing")})
    assert run.code == 3 and "does not exist" in run.stderr
    assert not (tmp_path / "nothing").exists()


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    run = run_import(tmp_path, "--alias", "a", "--version", "1")
    assert run.code == 2 and "not allowed with" in run.stderr


def test_credentials_never_reach_logs_or_the_store(
    server_registry: ServerRegistry, tmp_path: Path
) -> None:
    uri = server_registry.uri.replace("http://", "http://operator:s3cr3t-token@")
    run = run_import(tmp_path, "--tracking-uri", uri, "--json")
    assert run.code == 0, run.stderr
    assert "s3cr3t-token" not in run.stdout + run.stderr
    tag = json.loads(run.stdout.strip().splitlines()[-1])["tag"]
    folder, info = stored(tmp_path, tag)
    text = (folder / "model.yaml").read_text()
    assert "s3cr3t-token" not in text and "***@127.0.0.1" in info["metadata"]["registry"]
