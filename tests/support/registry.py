"""Test helpers for the demo registry: isolated settings, a registered version's files."""

from __future__ import annotations

from pathlib import Path

from utils.config import Settings


def make_settings(registry_dir: Path, **overrides: object) -> Settings:
    return Settings(_env_file=None, local_registry_dir=registry_dir, **overrides)


def download_registered_model(
    settings: Settings, *, alias: str | None = None, stage: str | None = None
) -> Path:
    """The whole artifact folder of a registered version, through the import's own resolver.

    An explicit registry URI throughout: `models:/` URIs would resolve against MLflow's global
    registry URI, not the test's own registry.
    """
    import tempfile

    from utils.model.registry import download, resolve

    uri = settings.tracking_uri
    resolved = resolve(
        uri, settings.model_name, stage=None if alias else (stage or "Production"), alias=alias
    )
    return download(uri, resolved, Path(tempfile.mkdtemp(prefix="registered-")) / "model")
