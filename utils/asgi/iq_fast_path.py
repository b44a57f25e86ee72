"""ASGI middleware: parse `iq_data` / `iq_samples` before BentoML does, at msgspec speed.

BentoML parses a request body into Python objects and validates it with pydantic before the
API method runs; for tens of thousands of `[I, Q]` pairs that is most of the request's cost.
This middleware reads the body (already bounded by `BodySizeLimit`), parses the IQ field with
`utils.api.iq_json` into float32 arrays, leaves them in the ASGI scope under `SCOPE_KEY`, and
hands BentoML the same body with that field's value replaced by an empty placeholder: every
other field is still validated by the API's pydantic model. The API method takes the arrays
from the scope (`bentoml.Context.request.scope`). A body the fast path does not recognise
passes through unchanged; a bad IQ value is answered here with 400 naming the field and spot.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.api.errors import InvalidField, to_response
from utils.api.iq_json import (
    SCOPE_KEY,
    ParsedIQ,
    join_fields,
    parse_capture,
    parse_captures,
    split_fields,
)
from utils.serving import metrics

#: What replaces a parsed field in the body BentoML sees: valid for the schema, never used.
PLACEHOLDERS = {"iq_data": b"[]", "iq_samples": b"[[]]"}


class IQFastPath:
    def __init__(self, app: ASGIApp, fields: Mapping[str, str]) -> None:
        self.app = app
        self.fields = dict(fields)  # path -> the IQ field parsed there

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        field = self.fields.get(scope.get("path", "")) if scope["type"] == "http" else None
        if field is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nothing to answer
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if f'"{field}"'.encode() in body:  # not for iq_b64 bodies
            try:  # a few ms of CPU per MB: off the event loop, as BentoML runs sync APIs
                body = await anyio.to_thread.run_sync(self._parse, scope, body, field)
            except InvalidField as exc:  # answered like every other API error
                metrics.IQ_FAST_PATH.labels("refused").inc()
                await to_response(exc, model_tag="")(scope, receive, send)
                return
            metrics.IQ_FAST_PATH.labels("parsed" if SCOPE_KEY in scope else "passed").inc()
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: disconnect notices
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(_with_length(scope, len(body)), replay, send)

    @staticmethod
    def _parse(scope: Scope, body: bytes, field: str) -> bytes:
        fields = split_fields(body)
        if fields is None or field not in fields:
            return body
        raw = bytes(fields[field])
        if field == "iq_samples":
            captures = parse_captures(raw, field)
        else:
            one = parse_capture(raw, field)
            captures = None if one is None else [one]
        if captures is None:
            return body
        scope[SCOPE_KEY] = ParsedIQ(field, captures)
        return join_fields({**fields, field: PLACEHOLDERS[field]})


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}
