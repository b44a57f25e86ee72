"""docs/api.md stays true to the API: every route and every request/response field is in it."""

from __future__ import annotations

import re

import pytest

from utils.api.schemas import API_MODELS
from utils.config import PROJECT_ROOT

DOC = (PROJECT_ROOT / "docs" / "api.md").read_text()


def test_every_route_of_the_service_is_documented() -> None:
    source = (PROJECT_ROOT / "service.py").read_text()
    routes = re.findall(r'route="(/[^"]*)"', source)
    methods = re.findall(r"\n    (?:async )?def (\w+)\(self", source)
    assert routes and "infer" in methods  # the batchable API keeps its default route /infer
    for route in [*routes, "/infer", "/metrics", "/readyz", "/livez", "/docs.json"]:
        assert f"`{route}`" in DOC or f" {route}`" in DOC, route


@pytest.mark.parametrize("model", API_MODELS, ids=lambda m: m.__name__)
def test_every_field_is_documented(model: type) -> None:
    missing = [name for name in model.model_fields if f"`{name}`" not in DOC]
    assert not missing, f"{model.__name__}: {missing} not in docs/api.md"


def test_the_code_cites_the_contract_in_the_repo() -> None:
    cited = set()
    for path in [*(PROJECT_ROOT / "utils").rglob("*.py"), PROJECT_ROOT / "service.py"]:
        cited |= set(re.findall(r"docs/api\.md §(\d+(?:\.\d+)?)", path.read_text()))
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", DOC, re.M))
    assert cited and cited <= headings, cited - headings
