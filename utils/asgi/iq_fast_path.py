"""ASGI middleware: parse `iq_data` / `iq_samples` before BentoML does, at msgspec speed.

BentoML parses a request body into Python objects and validates it with pydantic before the
API method runs; for tens of thousands of `[I, Q]` pairs that is most of the request's cost.
This middleware reads the body (already bounded by `BodySizeLimit`), parses the IQ field with
`utils.api.iq_json` into float32 arrays, leaves them in the ASGI scope under `SCOPE_KEY`, and
hands BentoML the same body with that field's value replaced by a placeholder of as many
items: every other field, and the field's length, is still validated by the API's pydantic
model. The API method takes the arrays
from the scope (`bentoml.Context.request.scope`). A body the fast path does not recognise
passes through unchanged; a bad IQ value is answered here with 400 naming the field and spot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from utils.api.errors import InvalidField, to_response
from utils.api.iq_json import (
    SCOPE_KEY,
    ParsedIQ,
    join_fields,
    parse_capture,
    parse_captures,
    split_fields,
)
from utils.asgi.replay import prepend_body
from utils.serving import metrics

log = logging.getLogger("bentoml.service.localization")


def placeholder(field: str, items: int) -> bytes:
    """What replaces a parsed field in the body BentoML sees: valid for the schema, never used,
    and as long as the field was, so that pydantic still checks its length (an empty
    `iq_samples` is refused as an empty `iq_b64_samples` is)."""
    if field == "iq_samples":
        return b"[" + b",".join([b"[]"] * items) + b"]"
    return b"[]"


class IQFastPath:
    def __init__(
        self, app: ASGIApp, fields: Mapping[str, str], others: Mapping[str, str] | None = None
    ) -> None:
        self.app = app
        self.fields = dict(fields)  # path -> the IQ field parsed there
        self.others = dict(others or {})  # path -> the other encoding's field (streams through)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        field = self.fields.get(scope.get("path", "")) if scope["type"] == "http" else None
        if field is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        key, other = f'"{field}"'.encode(), f'"{self.others.get(scope["path"], field)}"'.encode()
        chunks: list[bytes] = []
        tail, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nothing to answer
            chunk = message.get("body", b"")
            chunks.append(chunk)
            more = message.get("more_body", False)
            # the field names near the start, searched in place (no copy of 64 KB a chunk) and
            # across the boundary with the previous chunk; the fast path's field only before
            # the other's, since base64 holds no quote (after it, the standard parser decides)
            seam = tail + chunk[:32]
            at = chunk.find(other, 0, 65536)
            if (at >= 0 or other in seam) and not (key in seam or chunk.find(key, 0, at) >= 0):
                # the other encoding (iq_b64): the rest streams through untouched, and the
                # body is not searched for a field it does not carry
                await self.app(scope, prepend_body(b"".join(chunks), receive, more), send)
                return
            tail = chunk[-32:]
        body = b"".join(chunks)
        # the chunks are a second copy of the body: not kept alive while the request runs
        del chunks
        if key in body:
            # On the event loop, as BentoML's own body parse (which took twice as long) was.
            parsed = None
            try:
                body, parsed = self._parse(body, field)
            except InvalidField as exc:  # answered like every other API error
                metrics.IQ_FAST_PATH.labels("refused").inc()
                await to_response(exc, model_tag="")(scope, receive, send)
                return
            except Exception:  # a fault here must not cost the request: the standard path
                log.exception(
                    "iq fast path failed on a %d-byte body; parsing it as usual", len(body)
                )
            metrics.IQ_FAST_PATH.labels("passed" if parsed is None else "parsed").inc()
            # A scope of this request's own: BentoML keeps the original past the response,
            # and the API method takes the arrays out of this one (utils.api.iq_json.take_parsed).
            scope = _with_length(scope, len(body))
            if parsed is not None:
                scope[SCOPE_KEY] = parsed
            del parsed  # the API method takes it from the scope; nothing here holds it on
        replay = prepend_body(body, receive, more_body=False)
        del body  # `replay` lets go of it once BentoML has read it
        await self.app(scope, replay, send)

    @staticmethod
    def _parse(body: bytes, field: str) -> tuple[bytes, ParsedIQ | None]:
        """The body BentoML gets (the field replaced by a placeholder) and the parsed field;
        the body unchanged and None when the fast path does not take it."""
        fields = split_fields(body)
        if fields is None or field not in fields:
            return body, None
        raw = bytes(fields[field])
        if field == "iq_samples":
            captures = parse_captures(raw, field)
        else:
            one = parse_capture(raw, field)
            captures = None if one is None else [one]
        if captures is None:
            return body, None
        stand_in = placeholder(field, len(captures))
        return join_fields({**fields, field: stand_in}), ParsedIQ(field, captures)


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}
