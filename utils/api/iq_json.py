"""`iq_data` JSON (`[[I, Q], ...]` per receiver) -> float32 arrays at parse speed.

A 2 MB `iq_data` body costs the standard path about 67 ms of CPU before any batching: the JSON
parser builds 170 000 Python floats and lists, pydantic walks them, numpy copies them again
(`benchmarks/decode_bench.py`). Here msgspec decodes the bytes of the field straight into typed
pairs (numbers only, pairs of exactly two, no booleans), and numpy takes them in one copy; the
rest of the body is split into raw spans without being parsed, so BentoML still validates every
other field as before.

A well-formed field takes a quicker way still (`_regular`): its bracket skeleton (the bytes left
once the numbers and whitespace are removed) is compared with the one exact nesting of
`receivers x samples` pairs, and simdjson reads the numbers straight into one float64 buffer,
with no Python float per value: 0.54 ms for the seed's 5 x 2048 pairs (507 kB) against 2.64
through msgspec's typed lists. Anything else (a wrong shape, a non-number, a number out of
range) goes the msgspec way, which names the spot.

Errors are `InvalidField` naming the field and the position, e.g. `iq_data[2][17][1]`.
Anything this fast path does not recognise (other nesting depths, invalid JSON, NaN) is left
to the standard path and its errors, so both paths answer the same inputs the same way.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import simdjson

from utils.api.errors import InvalidField

#: Where the ASGI fast path leaves a `ParsedIQ` in the request's scope.
SCOPE_KEY = "rfloc.parsed_iq"


@dataclass(frozen=True)
class ParsedIQ:
    """A request's IQ field, parsed from its bytes: one float32 array per capture."""

    field: str
    captures: list[np.ndarray]


def take_parsed(scope: MutableMapping[str, Any]) -> ParsedIQ | None:
    """The IQ field the ASGI fast path parsed from this request's bytes, if it did; taken out
    of the scope, since BentoML keeps a request's scope after the response is sent."""
    return scope.pop(SCOPE_KEY, None)


_PAIRS_2D = msgspec.json.Decoder(list[tuple[float, float]])  # one receiver: [[I, Q], ...]
_PAIRS_3D = msgspec.json.Decoder(list[list[tuple[float, float]]])  # [[[I, Q], ...], ...]
_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_PATH = re.compile(r" - at `\$((?:\[\d+\])*)`$")
_WHITESPACE = b" \t\r\n"
_GOT = re.compile(r"got `(\w+)`")
_NOT_NUMBERS = {"bool": "booleans", "str": "strings", "null": "null", "object": "objects"}


def nesting(raw: bytes) -> int:
    """How many `[` open the value before its first number (0 when it is not a list)."""
    depth = 0
    for byte in raw.lstrip(_WHITESPACE)[:16]:
        if byte == ord("["):
            depth += 1
        elif byte not in _WHITESPACE:
            break
    return depth


def split_fields(body: bytes) -> dict[str, msgspec.Raw] | None:
    """A JSON object's fields as raw byte spans, unparsed; None when it is not valid JSON
    (the standard path then answers its usual error)."""
    try:
        return _FIELDS.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # e.g. 100k `[`
        return None


def join_fields(fields: dict[str, msgspec.Raw | bytes]) -> bytes:
    """The inverse of `split_fields` (each span is already valid JSON)."""
    return (
        b"{" + b",".join(msgspec.json.encode(k) + b":" + bytes(v) for k, v in fields.items()) + b"}"
    )


#: What `_regular` removes to leave a field's skeleton: JSON number characters, whitespace.
_NUMBER_BYTES = b"0123456789.eE+-" + _WHITESPACE


def _regular(raw: bytes, depth: int) -> np.ndarray | None:
    """The quick way for a well-formed field: its exact nesting checked on its skeleton, its
    numbers read by simdjson into one buffer. None when the field is anything else."""
    skeleton = raw.translate(None, _NUMBER_BYTES)
    pairs = skeleton.count(b"[,]")
    receivers = skeleton.count(b"[[,]") if depth == 3 else 1
    if pairs == 0 or receivers == 0 or pairs % receivers:
        return None
    samples = pairs // receivers
    one = b"[" + b",".join([b"[,]"] * samples) + b"]"
    if skeleton != (b"[" + b",".join([one] * receivers) + b"]" if depth == 3 else one):
        return None
    try:  # a number simdjson refuses (out of range, malformed): msgspec's way decides
        values = simdjson.Parser().parse(raw).as_buffer(of_type="d")
    except (ValueError, TypeError):
        return None
    flat = np.frombuffer(values, dtype=np.float64)
    if flat.size != 2 * pairs:
        return None
    shape = (receivers, samples, 2) if depth == 3 else (samples, 2)
    with np.errstate(over="ignore"):  # 1e308: inf here, explained by `decode_iq_data`
        return flat.astype(np.float32).reshape(shape)


def parse_capture(raw: bytes, field: str) -> np.ndarray | None:
    """`[[I, Q], ...]` or `[[[I, Q], ...], ...]` -> float32 `[samples, 2]` or
    `[receivers, samples, 2]`; None for other shapes (the standard path explains those)."""
    depth = nesting(raw)
    if depth not in (2, 3):
        return None
    quick = _regular(raw, depth)
    return quick if quick is not None else _typed(raw, depth, field)


def _typed(raw: bytes, depth: int, field: str) -> np.ndarray | None:
    """msgspec's typed lists: slower than `_regular`, but its errors name the spot."""
    decoder = _PAIRS_2D if depth == 2 else _PAIRS_3D
    try:
        pairs = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        if "out of range" in str(exc):  # 1e999: the standard path reads inf and refuses it
            return None
        raise _invalid(field, str(exc)) from None
    except (msgspec.DecodeError, RecursionError):
        return None  # not JSON numbers (e.g. NaN): the standard path's error
    if depth == 3:
        lengths = [len(receiver) for receiver in pairs]
        odd = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
        if odd is not None:
            raise InvalidField(
                f"{field}[{odd}]",
                f"ragged nesting: {lengths[odd]} [I, Q] pairs, receiver 0 has {lengths[0]}; "
                "every receiver needs the same number",
            )
    with np.errstate(over="ignore"):  # 1e308: inf here, explained by `decode_iq_data`
        return np.asarray(pairs, dtype=np.float32)


def parse_captures(raw: bytes, field: str) -> list[np.ndarray] | None:
    """A `/predict_batch` list of captures; None when any item is not for the fast path."""
    try:
        items = _ITEMS.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    out = []
    for index, item in enumerate(items):
        parsed = parse_capture(bytes(item), f"{field}[{index}]")
        if parsed is None:
            return None
        out.append(parsed)
    return out


def _invalid(field: str, message: str) -> InvalidField:
    """msgspec's 'Expected `float`, got `str` - at `$[0][3][1]`' -> an error naming the spot."""
    found = _PATH.search(message)
    where = f"{field}{found.group(1)}" if found else field
    problem = message[: found.start()] if found else message
    got = _GOT.search(problem)
    if got and got.group(1) in _NOT_NUMBERS:
        return InvalidField(where, f"IQ values must be numbers, got {_NOT_NUMBERS[got.group(1)]}")
    if "length 2" in problem:
        return InvalidField(where, f"each sample must be an [I, Q] pair ({problem})")
    return InvalidField(where, f"expected [[I, Q], ...] per receiver: {problem}")
