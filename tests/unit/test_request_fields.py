"""Keys and list lengths checked before validation (`utils/api/request_fields.py`) and the
ASGI layer that applies them (`utils/asgi/field_guard.py`), without a server."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.asgi import Recorder, call
from utils.api.request_fields import LONG_STRING, FieldCheck, FieldRefused, skeleton
from utils.api.schemas import PredictBatchRequest, PredictRequest
from utils.asgi.field_guard import FieldGuard

PREDICT = FieldCheck.for_model("/predict", PredictRequest)
BATCH = FieldCheck.for_model(
    "/predict_batch", PredictBatchRequest, {"iq_samples": 100, "iq_b64_samples": 100}
)


def refusal(check: FieldCheck, body: bytes) -> FieldRefused | None:
    try:
        check.check(body)
    except FieldRefused as exc:
        return exc
    return None


@pytest.mark.parametrize(
    "body",
    [
        b'{"iq_b64": "' + b"A" * 400_000 + b'", "session_id": "s", "confidence_level": 0.9}',
        b'{"iq_data": [[[1, 2]]], "include_geojson": true, "cache_enabled": false}',
        b'{"iq_b64": "a\\"b", "session_id": null}',  # an escape: read as it is
        b"{}",
        b"",  # not JSON: left to the validation behind
        b"[1, 2]",  # not an object: the same
        b'{"iq_b64": 5}',  # a wrong type: the same
    ],
)
def test_what_only_validation_can_judge_passes(body: bytes) -> None:
    assert refusal(PREDICT, body) is None


def test_an_unknown_key_that_could_be_a_field_is_named() -> None:
    exc = refusal(PREDICT, b'{"iq_b64": "AAAA", "foo": 1}')
    assert exc is not None and exc.status == 400 and exc.field == "foo"
    assert exc.error_type == "extra_forbidden"
    assert exc.message.startswith("foo: not a field; /predict takes session_id, ")
    assert exc.message.endswith(", iq_data, iq_b64")


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("k" * 300_000, "300000 bytes"),  # cut out of the skeleton: its length is known
        ("<script>alert(1)</script>", "25 characters"),
        ("x" * 40, "40 characters"),  # a name, but longer than any field's
    ],
)
def test_an_unknown_key_that_is_no_field_name_is_not_echoed(key: str, size: str) -> None:
    body = json.dumps({"iq_b64": "AAAA", key: 1}).encode()
    exc = refusal(PREDICT, body)
    assert exc is not None and exc.status == 400 and exc.field is None
    assert exc.message.startswith(f"request body: a key of {size} is not a field")
    assert key not in exc.message and len(exc.message) < 200


def test_a_million_unknown_keys_stop_at_the_first() -> None:
    body = b"{" + b",".join(b'"k%d":1' % i for i in range(1_000_000)) + b"}"
    exc = refusal(PREDICT, body)
    assert exc is not None and exc.field == "k0"


@pytest.mark.parametrize("field", ["iq_b64_samples", "iq_samples"])
def test_a_list_beyond_its_limit_is_refused_unread(field: str) -> None:
    body = json.dumps({field: [1] * 1_000_000}).encode()
    exc = refusal(BATCH, body)
    assert exc is not None and exc.status == 413 and exc.field == field
    assert exc.message == f"{field}: more than 100 items, at most 100 per request (MAX_BATCH_ITEMS)"
    assert refusal(BATCH, json.dumps({field: [1] * 100}).encode()) is None  # validation's
    assert refusal(BATCH, json.dumps({field: []}).encode()) is None  # min_length: validation's


def test_a_long_string_in_a_batch_is_skipped_not_scanned() -> None:
    items = ["A" * (LONG_STRING + 1)] * 101
    view, cut = skeleton(json.dumps({"iq_b64_samples": items}).encode())
    assert cut == [LONG_STRING + 1] * 101 and len(view) < 2000
    assert refusal(BATCH, json.dumps({"iq_b64_samples": items}).encode()) is not None


@given(
    st.dictionaries(
        st.sampled_from(["iq_b64", "session_id", "foo", "x" * 70, "cache_enabled"]),
        st.one_of(st.text(max_size=200), st.integers(), st.booleans(), st.none()),
    )
)
def test_the_skeleton_reads_keys_as_the_body_does(fields: dict[str, Any]) -> None:
    """Cutting long strings out changes no verdict: the same refusal as msgspec on the body."""
    body = json.dumps(fields).encode()
    view, _ = skeleton(body)
    on_view = refusal(PREDICT, view)
    exc = refusal(PREDICT, body)
    assert (exc is None) == (on_view is None)
    if exc is not None and on_view is not None:
        assert exc.field == on_view.field


# --- the middleware ---------------------------------------------------------------------------


def test_the_guard_refuses_in_the_shape_and_passes_the_rest_whole() -> None:
    echo = Recorder()
    guard = FieldGuard(echo, {"/predict": PREDICT, "/predict_batch": BATCH})
    refused = call(
        guard, "POST", "/predict_batch", content=json.dumps({"iq_b64_samples": [1] * 1000}).encode()
    )
    assert refused.status_code == 413 and echo.bodies == []
    assert refused.json()["field"] == "iq_b64_samples"
    assert refused.json()["detail"] == [
        {"type": "too_large", "loc": ["iq_b64_samples"], "msg": refused.json()["error"][16:]}
    ]
    unknown = call(guard, "POST", "/predict", content=b'{"' + b"k" * 300_000 + b'": 1}')
    assert unknown.status_code == 400 and len(unknown.content) < 500
    assert unknown.json()["detail"][0]["type"] == "extra_forbidden"
    body = b'{"iq_b64": "' + b"A" * 200_000 + b'"}'
    assert call(guard, "POST", "/predict", content=body).status_code == 200 and echo.bodies == [
        body
    ]
    assert (
        call(guard, "POST", "/elsewhere", content=b'{"k": 1}').status_code == 200
    )  # not a guarded route


def test_a_refused_body_logs_one_info_line_without_its_input(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Like a body BentoML's validation refuses (log_filters.py): one INFO line, no input."""
    guard = FieldGuard(Recorder(), {"/predict": PREDICT})
    with caplog.at_level(logging.INFO, logger="bentoml.service.localization"):
        assert (
            call(guard, "POST", "/predict", content=b'{"' + b"q" * 3000 + b'": 1}').status_code
            == 400
        )
    lines = [r for r in caplog.records if "rejected input (" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].getMessage().startswith("POST /predict: rejected input (")
    assert "qqq" not in lines[0].getMessage() and len(lines[0].getMessage()) < 300
