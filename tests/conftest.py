"""Shared fixtures: an isolated settings object and one genuinely trained demo registry.

The demo registry is trained once per session at full size (the product's own default), into a
temporary embedded MLflow registry, so tests judge the model users actually get.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from utils.config import Settings
from utils.dsp.feature_spec import FeatureSpec

# The suite must never touch a developer's own registry, cache or BentoML store.
for _var in ("MLFLOW_TRACKING_URI", "MODEL_NAME", "MODEL_STAGE", "MODEL_ALIAS", "MODEL_VERSION",
             "REDIS_URL", "BENTO_MODEL_TAG"):
    os.environ.pop(_var, None)

_REPORT: list[str] = []


@pytest.fixture(scope="session")
def report() -> list[str]:
    """Lines appended here are printed in the terminal summary (measured figures)."""
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.section("measured figures")
        for line in _REPORT:
            terminalreporter.write_line(line)


def make_settings(registry_dir: Path, **overrides: object) -> Settings:
    return Settings(_env_file=None, local_registry_dir=registry_dir, **overrides)


@pytest.fixture()
def spec() -> FeatureSpec:
    return FeatureSpec()


@pytest.fixture(scope="session")
def demo_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, object]]:
    """(settings pointing at a temporary embedded registry, BootstrapResult)."""
    from demo.bootstrap import bootstrap

    settings = make_settings(tmp_path_factory.mktemp("registry"))
    result = bootstrap(settings)
    yield settings, result


@pytest.fixture(scope="module")
def home(demo_registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BentoML home of the module's own with the demo model imported (a real import run)."""
    from tests.serving import import_demo_model

    settings, _ = demo_registry
    bentoml_home = tmp_path_factory.mktemp("bentoml-home")
    import_demo_model(bentoml_home, settings.local_registry_dir)
    return bentoml_home


def download_registered_model(settings: Settings, *, alias: str | None = None,
                              stage: str | None = None) -> Path:
    """The whole artifact folder of a registered version, through the import's own resolver.

    An explicit registry URI throughout: `models:/` URIs would resolve against MLflow's global
    registry URI, not the test's own registry.
    """
    import tempfile

    from utils.model.registry import download, resolve

    uri = settings.tracking_uri
    resolved = resolve(uri, settings.model_name, stage=None if alias else (stage or "Production"),
                       alias=alias)
    return download(uri, resolved, Path(tempfile.mkdtemp(prefix="registered-")) / "model")
