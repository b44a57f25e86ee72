"""The iq_data fast path without a server: msgspec parse against the stdlib reference, errors
naming the spot, and the ASGI middleware's body rewrite through an ASGI client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from utils.api.errors import InvalidField
from utils.api.iq_json import (
    SCOPE_KEY,
    _regular,
    _typed,
    join_fields,
    nesting,
    parse_capture,
    parse_captures,
    split_fields,
)
from utils.asgi.iq_fast_path import IQFastPath

numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e30, max_value=1e30),
)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.lists(
            st.lists(st.tuples(numbers, numbers).map(list), min_size=n, max_size=n),
            min_size=1,
            max_size=5,
        )
    )
)
def test_parse_matches_the_stdlib_reference(capture: list[list[list[float]]]) -> None:
    raw = json.dumps(capture).encode()
    reference = np.asarray(json.loads(raw), dtype=np.float32)
    np.testing.assert_array_equal(parse_capture(raw, "iq_data"), reference)
    one = json.dumps(capture[0]).encode()  # one receiver: [[I, Q], ...]
    np.testing.assert_array_equal(parse_capture(one, "iq_data"), reference[0])


values = st.one_of(numbers, st.booleans(), st.none(), st.just("1"))
items = st.one_of(
    st.tuples(numbers, numbers).map(list),
    st.lists(values, min_size=0, max_size=3),  # a triple, a single, a non-number: irregular
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(items, min_size=1, max_size=5), min_size=1, max_size=4),
    st.sampled_from([None, 0, 2]),
)
def test_the_quick_way_answers_only_what_the_typed_way_answers_the_same(
    capture: list[list[Any]], indent: int | None
) -> None:
    """`_regular` (skeleton + simdjson) either declines or gives exactly what msgspec's typed
    lists give, whatever the nesting, values or whitespace; a regular field takes it."""
    for raw, depth in (
        (json.dumps(capture, indent=indent).encode(), 3),
        (json.dumps(capture[0], indent=indent).encode(), 2),
    ):
        quick = _regular(raw, depth)
        try:
            typed = _typed(raw, depth, "iq_data")
        except InvalidField:
            assert quick is None
            continue
        if quick is not None:
            np.testing.assert_array_equal(quick, typed)
        regular = all(
            len(row) == len(capture[0])
            and all(isinstance(v, list) and len(v) == 2 for v in row)
            and all(type(x) in (int, float) for v in row for x in v)
            for row in (capture if depth == 3 else capture[:1])
        )
        if regular:
            assert quick is not None


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ([[["a", 1]] * 3] * 2, "iq_data[0][0][0]", "IQ values must be numbers, got strings"),
        ([[[1, 2]] * 3, [[1, True]] * 3], "iq_data[1][0][1]", "must be numbers, got booleans"),
        ([[[1, None]]], "iq_data[0][0][1]", "must be numbers, got null"),
        ([[[1, 2, 3]] * 3] * 2, "iq_data[0][0]", "each sample must be an [I, Q] pair"),
        ([[[1, 2]] * 3, [[1, 2]] * 4], "iq_data[1]", "ragged nesting: 4 [I, Q] pairs"),
    ],
)
def test_bad_values_are_named_where_they_are(value: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_capture(json.dumps(value).encode(), "iq_data")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and message in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [b"[[[[1, 2]]]]", b"[]", b"[1, 2]", b'"text"', b"[[NaN, 1]]", b"[[1e999, 1]]"],
)
def test_other_shapes_and_non_json_numbers_are_left_to_the_standard_path(raw: bytes) -> None:
    try:
        assert parse_capture(raw, "iq_data") is None
    except InvalidField:
        pytest.fail("the fast path must not answer what the standard path explains")


def test_batch_items_are_named_by_index() -> None:
    good = [[[0.5, -0.5]] * 4] * 2
    parsed = parse_captures(json.dumps([good, good]).encode(), "iq_samples")
    assert parsed is not None and [p.shape for p in parsed] == [(2, 4, 2), (2, 4, 2)]
    with pytest.raises(InvalidField) as caught:
        parse_captures(json.dumps([good, [[["x", 1]] * 4] * 2]).encode(), "iq_samples")
    assert caught.value.field == "iq_samples[1][0][0][0]"
    assert parse_captures(json.dumps([good, [[[[1, 2]]]]]).encode(), "iq_samples") is None


def test_fields_split_and_join_without_parsing() -> None:
    body = b'{"iq_data": [[1, 2]], "session_id": "a\\"b", "confidence_level": 0.9}'
    fields = split_fields(body)
    assert fields is not None and bytes(fields["iq_data"]) == b"[[1, 2]]"
    assert json.loads(join_fields({**fields, "iq_data": b"[]"})) == {
        "iq_data": [],
        "session_id": 'a"b',
        "confidence_level": 0.9,
    }
    assert split_fields(b"{not json") is None and split_fields(b"[1]") is None
    deep = b'{"iq_data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert split_fields(deep) is None  # msgspec's recursion limit: the standard path answers
    assert parse_captures(b"[" * 100_000 + b"]" * 100_000, "iq_samples") is None
    assert [nesting(b) for b in (b" [[ [1", b"[1]", b"{}", b"[[[[")] == [3, 1, 0, 4]


# --- the middleware ---------------------------------------------------------------------------


class Echo:
    """Records the body and scope entry it was given; answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.parsed: list[Any] = []
        self.messages: list[int] = []  # body messages per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, more, count = b"", True, 0
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            count += 1
        self.bodies.append(body)
        self.messages.append(count)
        self.parsed.append(scope.get(SCOPE_KEY))
        length = dict(scope["headers"]).get(b"content-length")
        assert length is None or int(length) == len(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def post(app: Any, path: str, body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(
                path, content=body, headers={"content-type": "application/json"}
            )

    return asyncio.run(go())


FIELDS = {"/predict": "iq_data", "/predict_batch": "iq_samples"}


def test_middleware_parses_and_hands_a_placeholder_on() -> None:
    echo = Echo()
    capture = [[[0.25, -1]] * 3] * 2
    body = json.dumps({"iq_data": capture, "session_id": "s"}).encode()
    assert post(IQFastPath(echo, FIELDS), "/predict", body).status_code == 200
    assert json.loads(echo.bodies[0]) == {"iq_data": [], "session_id": "s"}
    (array,) = echo.parsed[0].captures
    np.testing.assert_array_equal(array, np.asarray(capture, np.float32))
    batch = json.dumps({"iq_samples": [capture, capture]}).encode()
    assert post(IQFastPath(echo, FIELDS), "/predict_batch", batch).status_code == 200
    # as many stand-ins as items: pydantic still checks the list's length
    assert json.loads(echo.bodies[1]) == {"iq_samples": [[], []]}
    assert len(echo.parsed[1].captures) == 2 and echo.parsed[1].field == "iq_samples"


def test_an_empty_batch_reaches_validation_as_empty() -> None:
    """The placeholder once stood for any batch (`[[]]`), so `{"iq_samples": []}` passed the
    schema's `min_length=1` and answered 200 with no predictions."""
    echo = Echo()
    assert (
        post(IQFastPath(echo, FIELDS), "/predict_batch", b'{"iq_samples": []}').status_code == 200
    )
    assert json.loads(echo.bodies[0]) == {"iq_samples": []}
    assert echo.parsed[0].captures == []


def test_a_value_beyond_float32_is_named_where_it_is() -> None:
    """1e308 is finite JSON but no float32: the fast path reads it as inf (without a warning),
    and the decoder names the spot and the bound, not "NaN or infinite"."""
    from utils.api.decoding import decode_iq_data
    from utils.dsp.feature_spec import FeatureSpec

    spec = FeatureSpec()
    capture = [[[0.1, 0.2]] * spec.n_fft for _ in range(spec.n_channels)]
    capture[1][7] = [0.1, 1e308]
    parsed = parse_capture(json.dumps(capture).encode(), "iq_data")
    assert parsed is not None
    with pytest.raises(InvalidField) as caught:
        decode_iq_data(parsed, spec, 65_536)
    assert caught.value.field == "iq_data[1][7][1]"
    assert "beyond the float32 range" in str(caught.value) and "at most 1e+06" in str(caught.value)


def test_middleware_refuses_a_bad_value_with_the_api_error_shape() -> None:
    echo = Echo()
    body = json.dumps({"iq_data": [[[1, 2]] * 3, [[1, "x"]] * 3]}).encode()
    response = post(IQFastPath(echo, FIELDS), "/predict", body)
    assert response.status_code == 400 and echo.bodies == []
    assert response.json() == {
        "error": "iq_data[1][0][1]: IQ values must be numbers, got strings",
        "field": "iq_data[1][0][1]",
        "detail": [
            {
                "type": "invalid_input",
                "loc": ["iq_data", 1, 0, 1],
                "msg": "IQ values must be numbers, got strings",
            }
        ],
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", b'{"iq_b64": "AAAA"}'),
        ("/predict", b'{"iq_data": [[[[1, 2]]]]}'),
        ("/predict", b"{not json"),
        ("/ellipse", b'{"iq_data": [[1, 2]]}'),
    ],
)
def test_middleware_passes_what_it_does_not_parse_unchanged(path: str, body: bytes) -> None:
    echo = Echo()
    assert post(IQFastPath(echo, FIELDS), path, body).status_code == 200
    assert echo.bodies == [body] and echo.parsed == [None]


def run_chunks(app: Any, path: str, chunks: list[bytes]) -> list[dict[str, Any]]:
    """Drive the ASGI app with a body arriving in `chunks`; the messages it sent back."""
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent


def test_an_iq_b64_body_streams_through_without_being_buffered() -> None:
    echo = Echo()
    chunks = [b'{"cache_enabled": false, "iq_b64": "AAAA', b"AAAA" * 1000, b'"}']
    app = IQFastPath(echo, FIELDS, others={"/predict": "iq_b64"})
    sent = run_chunks(app, "/predict", chunks)
    assert sent[0]["status"] == 200 and echo.bodies == [b"".join(chunks)]
    assert echo.parsed == [None] and echo.messages == [3]  # relayed as it came, not buffered


def test_a_field_name_split_across_chunks_is_still_found() -> None:
    echo = Echo()
    body = json.dumps({"iq_data": [[[1, 2]] * 3] * 2}).encode()
    chunks = [body[:5], body[5:9], body[9:]]  # '{"iq_' | 'data' | '": [...'
    app = IQFastPath(echo, FIELDS, others={"/predict": "iq_b64"})
    run_chunks(app, "/predict", chunks)
    assert json.loads(echo.bodies[0]) == {"iq_data": []}
    assert echo.parsed[0].captures[0].shape == (2, 3, 2)
