"""A request body's top-level keys and list lengths, checked before any parser builds objects.

BentoML validates a body with pydantic, which reports every problem it finds, each with its
`loc`: a `/predict_batch` of 1 000 000 numbers for `iq_b64_samples` (a 2 MB body) made
1 000 000 errors, a 149 MB answer, 10.6 s of CPU and a worker 1.27 GB larger; a million
unknown keys made a 192 MB answer, and one 300 KB unknown key came back in the error whole.
The request models take a handful of known keys and lists of at most `MAX_BATCH_ITEMS` items,
so a body is first read here as raw spans (msgspec, no values built): the first unknown key
and the first list item beyond its limit stop the read and are refused in a few bytes of
answer, whatever follows. What passes can make pydantic report a bounded number of problems.

The check costs a fraction of a parse: in a body with few strings and no escapes (every valid
request of this service) each string longer than `LONG_STRING` is cut out first, so a 450 kB
base64 capture is found by `bytes.find`, not scanned; any other body is read by msgspec as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import BaseModel

#: strings longer than this are cut out of a body before its keys are read
LONG_STRING = 64
#: a body with more quotes than this is read as is (no valid request has that many strings)
MAX_QUOTES = 1024
_MARKER = b"\\u0000"  # what a cut-out string starts with: a key never has it in a body with no `\`
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`\Z", re.DOTALL)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class FieldRefused(Exception):
    """A body refused before validation; `field` is None when no field may be named."""

    def __init__(self, message: str, field: str | None, status: int, error_type: str) -> None:
        self.message, self.field, self.status, self.error_type = message, field, status, error_type
        super().__init__(message)


def skeleton(body: bytes) -> tuple[bytes, list[int]]:
    """`body` with each string longer than `LONG_STRING` bytes replaced by a short marker
    (`"\\u0000<n>"`), and the byte lengths of what was cut; the body as it is when it holds a
    backslash or more than `MAX_QUOTES` quotes (then a quote may not delimit a string)."""
    if b"\\" in body:
        return body, []
    quotes: list[int] = []
    at = body.find(b'"')
    while at >= 0:
        if len(quotes) >= MAX_QUOTES:
            return body, []
        quotes.append(at)
        at = body.find(b'"', at + 1)
    if len(quotes) % 2:  # not valid JSON: the parser behind explains it
        return body, []
    parts: list[bytes] = []
    cut: list[int] = []
    last = 0
    for start, end in zip(quotes[::2], quotes[1::2], strict=True):
        if end - start - 1 > LONG_STRING:
            parts += [body[last : start + 1], _MARKER, str(len(cut)).encode()]
            cut.append(end - start - 1)
            last = end
    if not cut:
        return body, []
    parts.append(body[last:])
    return b"".join(parts), cut


@dataclass(frozen=True)
class FieldCheck:
    """The keys and list limits of one route's request model."""

    route: str
    names: tuple[str, ...]
    decoder: msgspec.json.Decoder
    lists: dict[str, tuple[int, msgspec.json.Decoder]]

    @classmethod
    def for_model(
        cls, route: str, model: type[BaseModel], max_items: Mapping[str, int] | None = None
    ) -> FieldCheck:
        """`max_items`: the most items each list field takes (`MAX_BATCH_ITEMS`)."""
        names = tuple(model.model_fields)
        shape: Any = msgspec.defstruct(
            "Fields", [(name, msgspec.Raw, None) for name in names], forbid_unknown_fields=True
        )
        lists = {}
        for name, most in (max_items or {}).items():
            # an array of at most `most` items: the one after them stops the read
            items: Any = msgspec.defstruct(
                "Items",
                [(f"i{i}", msgspec.Raw, None) for i in range(most)],
                array_like=True,
                forbid_unknown_fields=True,
            )
            lists[name] = (most, msgspec.json.Decoder(items))
        return cls(route, names, msgspec.json.Decoder(shape), lists)

    def check(self, body: bytes) -> None:
        """Raise `FieldRefused` for an unknown key or a list over its limit; anything else
        (not JSON, not an object, a wrong type) is left for the validation behind."""
        view, cut = skeleton(body)
        try:
            fields = self.decoder.decode(view)
        except msgspec.ValidationError as exc:
            unknown = _UNKNOWN.match(str(exc))
            if unknown is not None:
                raise self._unknown(unknown.group(1), cut) from None
            return
        except (msgspec.DecodeError, RecursionError):  # nesting too deep: validation says so
            return
        for name, (most, items) in self.lists.items():
            raw = getattr(fields, name)
            if raw is None:
                continue
            try:
                items.decode(raw)
            except msgspec.ValidationError as exc:
                if "at most length" in str(exc):
                    raise FieldRefused(
                        f"{name}: more than {most} items, at most {most} per request "
                        "(MAX_BATCH_ITEMS)",
                        name,
                        413,
                        "too_large",
                    ) from None
            except (msgspec.DecodeError, RecursionError):
                return

    def _unknown(self, key: str, cut: list[int]) -> FieldRefused:
        """An unknown key, named only when it could be a field name (it is then short)."""
        known = f"{self.route} takes {', '.join(self.names)}"
        longest = max(len(name) for name in self.names)
        if len(key) <= longest and _NAME.fullmatch(key):
            return FieldRefused(f"{key}: not a field; {known}", key, 400, "extra_forbidden")
        if key.startswith("\0") and key[1:].isdigit() and int(key[1:]) < len(cut):
            size = f"{cut[int(key[1:])]} bytes"
        else:
            size = f"{len(key)} characters"
        return FieldRefused(
            f"request body: a key of {size} is not a field; {known}",
            None,
            400,
            "extra_forbidden",
        )
