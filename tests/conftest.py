"""Shared fixtures: an isolated settings object and one genuinely trained demo registry.

The demo registry is trained once per session at full size (the product's own default), into a
temporary embedded MLflow registry, so tests judge the model users actually get.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry import make_settings
from utils.config import Settings
from utils.dsp.feature_spec import FeatureSpec

# The suite must never touch a developer's own registry, cache or BentoML store.
for _var in (
    "MLFLOW_TRACKING_URI",
    "MODEL_NAME",
    "MODEL_STAGE",
    "MODEL_ALIAS",
    "MODEL_VERSION",
    "REDIS_URL",
    "BENTO_MODEL_TAG",
):
    os.environ.pop(_var, None)

_REPORT: list[str] = []


@pytest.fixture(scope="session")
def report() -> list[str]:
    """Lines appended here are printed in the terminal summary (measured figures)."""
    return _REPORT


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ is marked: `-m "not integration"` runs the fast
    half (tests/unit/, no server, no registry)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORT:
        terminalreporter.section("measured figures")
        for line in _REPORT:
            terminalreporter.write_line(line)


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
    """A BentoML home of the module's own with the demo model imported: the session's first is
    a real import_model.py run, the others copies of it (`import_demo_model`)."""
    from tests.support.serving import import_demo_model

    settings, _ = demo_registry
    bentoml_home = tmp_path_factory.mktemp("bentoml-home")
    import_demo_model(bentoml_home, settings.local_registry_dir)
    return bentoml_home


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's headless Chromium driven by Playwright (no browser download): the pages the
    service serves are tested where users read them. Fails, never skips, without Chromium.
    Module-scoped on purpose: Playwright's sync API keeps an event loop running on this
    thread while it lives, and later tests call `asyncio.run`."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser tests need Debian's chromium (.ci/run installs it)"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()
