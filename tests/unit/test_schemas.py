"""Request models at the JSON edge (`utils/api/schemas.py`): strict types, finite numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from utils.api.schemas import (
    EllipseRequest,
    PredictBatchRequest,
    PredictRequest,
    ReloadRequest,
    SampleSceneRequest,
)

ELLIPSE = {"latitude": 45, "longitude": 7, "sigma_x": 300, "sigma_y": 100}


def problems(model: type[BaseModel], body: str) -> list[tuple[str, tuple[Any, ...], str]]:
    try:
        model.model_validate_json(body)
    except ValidationError as exc:
        return [(e["type"], e["loc"], e["msg"]) for e in exc.errors()]
    return []


@pytest.mark.parametrize(
    ("model", "fields", "field", "kind"),
    [
        (EllipseRequest, {"latitude": True}, "latitude", "float_type"),
        (EllipseRequest, {"longitude": "7.69"}, "longitude", "float_type"),
        (EllipseRequest, {"sigma_x": "300"}, "sigma_x", "float_type"),
        (EllipseRequest, {"num_points": "8"}, "num_points", "int_type"),
        (EllipseRequest, {"num_points": 8.0}, "num_points", "int_type"),
        (PredictRequest, {"include_geojson": "yes"}, "include_geojson", "bool_type"),
        (PredictRequest, {"cache_enabled": 0}, "cache_enabled", "bool_type"),
        (PredictRequest, {"confidence_level": "0.5"}, "confidence_level", "float_type"),
        (PredictRequest, {"session_id": 5}, "session_id", "string_type"),
        (PredictBatchRequest, {"include_geojson": 1}, "include_geojson", "bool_type"),
        (SampleSceneRequest, {"seed": "5"}, "seed", "int_type"),
        (ReloadRequest, {"tag": 5}, "tag", "string_type"),
    ],
)
def test_a_value_of_another_json_type_is_refused(
    model: type[BaseModel], fields: dict[str, Any], field: str, kind: str
) -> None:
    base: dict[str, Any] = {
        EllipseRequest: ELLIPSE,
        PredictRequest: {"iq_b64": "AAAA"},
        PredictBatchRequest: {"iq_b64_samples": ["AAAA"]},
    }.get(model, {})
    assert [p[:2] for p in problems(model, json.dumps({**base, **fields}))] == [(kind, (field,))]


def test_json_integers_are_numbers() -> None:
    assert problems(EllipseRequest, json.dumps(ELLIPSE)) == []
    assert problems(PredictRequest, '{"iq_b64": "AAAA", "confidence_level": 0.5}') == []


@pytest.mark.parametrize(
    ("field", "written", "bounds"),
    [
        ("latitude", "1e999", ">= -90 and <= 90"),
        ("longitude", "1" + "0" * 1000, ">= -180 and <= 180"),
        ("sigma_x", "NaN", ">= 0.001 and <= 1e+07"),
        ("rho", "-Infinity", "> -1 and < 1"),
        ("confidence_level", "-" + "9" * 400, "> 0 and < 1"),
    ],
)
def test_a_number_no_float_holds_is_refused_with_the_fields_bounds(
    field: str, written: str, bounds: str
) -> None:
    body = json.dumps(ELLIPSE)[:-1] + f', "{field}": {written}}}'
    ((kind, loc, msg),) = problems(EllipseRequest, body)
    assert (kind, loc) == ("value_error", (field,))
    assert f"must be a finite number {bounds}" in msg and "beyond the float range" in msg
    assert len(msg) < 200  # what was written is not repeated


def test_a_finite_number_out_of_bounds_says_the_bound() -> None:
    body = json.dumps({**ELLIPSE, "latitude": 1e308})
    assert problems(EllipseRequest, body)[0][2] == "Input should be less than or equal to 90"
