"""Bootstrap into real MLflow registries (embedded SQLite): state, idempotency, --force, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from demo.bootstrap import _experiment_id, bootstrap, production_version, register_onnx_model
from tests.support.model_factory import toy_model
from tests.support.registry import download_registered_model, make_settings
from utils.config import PROJECT_ROOT
from utils.dsp.feature_spec import FEATURE_SPEC_FILENAME, FeatureSpec


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_registry_state_after_bootstrap(demo_registry, report: list[str]) -> None:
    settings, result = demo_registry
    client = _client(settings.tracking_uri)
    name = settings.model_name
    assert result.created and result.version == "1"
    by_alias = client.get_model_version_by_alias(name, "production")
    assert str(by_alias.version) == "1" and by_alias.current_stage == "Production"

    run = client.get_run(by_alias.run_id)
    metrics = run.data.metrics
    for key in ("accuracy_meters", "ellipse_coverage_95", "training_samples"):
        assert key in metrics
    assert 0.90 <= metrics["ellipse_coverage_95"] <= 0.98
    assert metrics["training_samples"] >= 5000
    assert metrics["train_seconds"] < 180
    report.append(
        f"bootstrap: trained in {metrics['train_seconds']:.0f} s on "
        f"{metrics['training_samples']:.0f} scenes, run median error "
        f"{metrics['accuracy_meters'] / 1000:.1f} km, 95% coverage "
        f"{metrics['ellipse_coverage_95']:.3f}"
    )

    folder = download_registered_model(settings, alias="production")
    files = {p.name for p in folder.iterdir()}
    assert {"model.onnx", FEATURE_SPEC_FILENAME, "MLmodel"} <= files
    spec = FeatureSpec.load(folder / FEATURE_SPEC_FILENAME)
    assert [r.name for r in spec.receivers][:2] == ["Torino", "Milano-Baggio"]
    assert spec.uncertainty_units == "degrees" and spec.norm_std_db > 1
    mlmodel = (folder / "MLmodel").read_text()
    assert "feature_spec" in mlmodel  # mirrored in the model's metadata


def test_second_bootstrap_changes_nothing(demo_registry) -> None:
    settings, first = demo_registry
    again = bootstrap(settings)
    assert not again.created and again.version == first.version
    versions = _client(settings.tracking_uri).search_model_versions(f"name='{settings.model_name}'")
    assert len(versions) == 1


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "demo.bootstrap", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_cli_force_registers_and_promotes_a_new_version(tmp_path: Path) -> None:
    """`--force` trains and promotes over a version in production. That version is a toy
    registered as bootstrap registers its own (same experiment, stage and alias): training it
    too would prove nothing more (the first bootstrap is tested above)."""
    settings = make_settings(tmp_path)
    uri = settings.tracking_uri
    client = _client(uri)
    first, _ = register_onnx_model(
        client,
        _experiment_id(client, settings, uri),
        settings.model_name,
        toy_model(),
        FeatureSpec(),
    )
    assert first == "1" and production_version(client, settings.model_name) == "1"

    forced = _cli("--tracking-uri", uri, "--force", "--scenes", "500")
    assert forced.returncode == 0, forced.stderr
    out = json.loads(forced.stdout.strip().splitlines()[-1])
    assert out["created"] is True and out["version"] == "2"

    assert str(client.get_model_version_by_alias("localization_model", "production").version) == "2"
    assert client.get_model_version("localization_model", "1").current_stage == "Archived"
    assert client.get_model_version("localization_model", "2").current_stage == "Production"
    trained = client.get_run(client.get_model_version("localization_model", "2").run_id)
    assert trained.data.metrics["training_samples"] > 0  # a new training, not the toy again

    idle = _cli("--tracking-uri", uri)
    assert idle.returncode == 0, idle.stderr
    assert json.loads(idle.stdout.strip().splitlines()[-1])["created"] is False
    assert len(client.search_model_versions("name='localization_model'")) == 2


def test_main_command_leaves_a_configured_registry_alone(tmp_path: Path) -> None:
    registry = tmp_path / "untouched"
    done = _cli(
        "--only-embedded",
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "LOCAL_REGISTRY_DIR": str(registry)},
    )
    assert done.returncode == 0, done.stderr
    assert "no demo model bootstrapped" in done.stdout
    assert not registry.exists()


@pytest.mark.parametrize("bad", ["--scenes", "--seed"])
def test_cli_rejects_bad_arguments(bad: str) -> None:
    done = _cli(bad, "many")
    assert done.returncode == 2 and "invalid int value" in done.stderr
