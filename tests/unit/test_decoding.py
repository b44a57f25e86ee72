"""What `decode_iq_data` says of JSON IQ that is no float32 (`utils/api/decoding.py`): the
standard path's values, as pydantic hands them over (Python floats and ints)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from utils.api.decoding import decode_iq_b64, decode_iq_data, encode_capture
from utils.api.errors import InvalidField
from utils.dsp.feature_spec import FeatureSpec

SPEC = FeatureSpec()
READ = TypeAdapter(list[Any])  # how the standard path reads iq_data


def capture_with(value: str) -> str:
    """JSON IQ for every receiver with `value` written as receiver 1's 8th Q."""
    capture = [[[0.1, 0.2]] * SPEC.n_fft for _ in range(SPEC.n_channels)]
    capture[1][7] = [0.1, 0.5]
    return json.dumps(capture).replace("[0.1, 0.5]", f"[0.1, {value}]")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1e308", "a number beyond the float32 range (±3.4e+38)"),
        ("1" + "0" * 1000, "a number beyond the float32 range (±3.4e+38)"),
        ("1e999", "NaN, an infinity or a number beyond the float range (±1.8e308)"),
        ("NaN", "NaN, an infinity or a number beyond the float range (±1.8e308)"),
    ],
)
def test_a_value_no_float32_holds_is_named_with_the_bound(value: str, problem: str) -> None:
    text = capture_with(value)
    with pytest.raises(InvalidField) as caught:
        decode_iq_data(READ.validate_json(text), SPEC, 65_536)
    assert caught.value.field == "iq_data[1][7][1]"
    assert str(caught.value).startswith(f"iq_data[1][7][1]: {problem}; samples are finite, at")
    assert "NaN or infinite" not in str(caught.value) and "other values" not in str(caught.value)


@pytest.mark.parametrize(("value", "got"), [("null", "null"), ('{"a": 1}', "objects")])
def test_a_value_that_is_no_number_is_named_where_it_is(value: str, got: str) -> None:
    text = capture_with(value)
    with pytest.raises(InvalidField) as caught:
        decode_iq_data(READ.validate_json(text), SPEC, 65_536)
    assert str(caught.value) == f"iq_data[1][7][1]: IQ values must be numbers, got {got}"


def test_base64_bytes_may_hold_nan_and_say_so() -> None:
    import numpy as np

    capture = np.full((SPEC.n_channels, SPEC.n_fft), 0.1 + 0.1j, np.complex64)
    capture[0, 3] = complex(np.nan, 0)
    with pytest.raises(InvalidField, match="iq_b64: contains NaN or infinite values"):
        decode_iq_b64(encode_capture(capture), SPEC, 65_536)
