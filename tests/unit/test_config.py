from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from utils.config import Settings


def test_defaults_point_at_embedded_registry(tmp_path: Path) -> None:
    s = Settings(_env_file=None, local_registry_dir=tmp_path)
    assert s.uses_embedded_registry
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert s.model_name == "localization_model" and s.model_stage == "Production"
    assert s.max_batch_items == 100 and s.redis_url is None


def test_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "REDIS_URL=redis://127.0.0.1:6379/3\nCACHE_TTL_SECONDS=60\nMODEL_ALIAS=champion\n"
    )
    monkeypatch.setenv("ORT_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("BATCH_MAX_SIZE", "32")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://registry:5000")
    s = Settings(_env_file=env_file)
    assert s.redis_url == "redis://127.0.0.1:6379/3"
    assert s.cache_ttl_seconds == 60
    assert s.ort_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.batch_max_size == 32
    assert s.tracking_uri == "http://registry:5000" and not s.uses_embedded_registry
    assert s.model_alias == "champion" and s.model_stage is None  # alias wins over the stage


def test_blank_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "  ")
    s = Settings(_env_file=None)
    assert s.redis_url is None and s.uses_embedded_registry


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("BATCH_MAX_SIZE", "0"),
        ("CACHE_TTL_SECONDS", "-1"),
        ("ORT_PROVIDERS", "TPUProvider"),
        ("MAX_BATCH_ITEMS", "many"),
    ],
)
def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert var.lower() in str(info.value)


def test_alias_and_version_are_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ALIAS", "production")
    monkeypatch.setenv("MODEL_VERSION", "3")
    with pytest.raises(ValidationError, match="MODEL_ALIAS and MODEL_VERSION"):
        Settings(_env_file=None)
