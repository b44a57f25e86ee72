"""Make BentoML's `/docs.json` a valid OpenAPI 3.0 document that tells the truth.

BentoML 1.4 publishes OpenAPI 3.0.2 but passes pydantic's JSON Schema 2020-12 through: numeric
`exclusiveMinimum`/`exclusiveMaximum` (3.0 wants booleans beside `minimum`/`maximum`),
`{"type": "null"}` members (3.0 says `nullable: true`), optional response fields flattened to
a non-null type although the API returns `null` (`confidence`, `session_id`, ...), and a 400
schema that does not describe the error bodies. Code
generators and contract testers (schemathesis) reject or misread such a document, so this ASGI
middleware rewrites the JSON on its way out; nothing else is touched. It also replaces BentoML's
`info` (a README whose badges load images from shields.io and readthedocs in every visitor's
browser, and BentoML's own contact) with this service's: the API page calls no third party.
And BentoML's error schemas (a string `detail` for 404 and 500) become the one error shape
every error response has (`utils/asgi/error_shape.py`).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATH = "/docs.json"
INFO: dict[str, Any] = {
    "title": "RF transmitter localization",
    "description": "IQ captures from several receivers in; the transmitter's position, its "
    "uncertainty ellipse and a fix / no-fix verdict out. The contract (fields, errors, units, "
    "ellipse conventions) is `docs/api.md` in the project; the map page is [/map/](/map/).",
}

# the one error shape (docs/api.md §1.3, `utils/api/errors.py`)
ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "required": ["error", "field", "detail"],
    "properties": {
        "error": {"type": "string", "description": "<field>: <what is wrong>, for people"},
        "field": {
            "type": "string",
            "nullable": True,
            "description": "the request field at fault, e.g. iq_b64_samples[2]; null when "
            "no single field is",
        },
        "detail": {
            "type": "array",
            "description": "every problem found, for programs",
            "items": {
                "type": "object",
                "required": ["type", "loc", "msg"],
                "properties": {
                    "type": {"type": "string"},
                    "loc": {
                        "type": "array",
                        "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                },
            },
        },
    },
}


def nullable_fields(models: list[type[BaseModel]]) -> dict[str, set[str]]:
    """{schema title: fields that may be null}, from the models' own annotations."""
    out: dict[str, set[str]] = {}
    for model in models:
        names = set()
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
                None
            ) in typing.get_args(annotation):
                names.add(name)
        for title in (model.__name__, f"{model.__name__}IODescriptor"):
            out[title] = names
    return out


def _fix_node(node: Any, nullable: dict[str, set[str]]) -> Any:
    if isinstance(node, list):
        return [_fix_node(item, nullable) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _fix_node(v, nullable) for k, v in node.items()}
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        value = node.get(flag)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[bound] = value
            node[flag] = True
    for key in ("anyOf", "oneOf"):
        members = node.get(key)
        if isinstance(members, list) and {"type": "null"} in members:
            rest = [m for m in members if m != {"type": "null"}]
            node.pop(key)
            node["nullable"] = True
            if len(rest) == 1:
                inner = rest[0]
                if "$ref" in inner:
                    node["allOf"] = [inner]
                else:
                    node = {**inner, **node}
            else:
                node[key] = rest
    if node.get("type") == "object" and isinstance(node.get("properties"), dict):
        for name in nullable.get(str(node.get("title", "")), set()):
            prop = node["properties"].get(name)
            if isinstance(prop, dict):
                prop["nullable"] = True
    return node


def fix_spec(spec: dict[str, Any], nullable: dict[str, set[str]]) -> dict[str, Any]:
    fixed = _fix_node(spec, nullable)
    info = fixed.get("info")
    fixed["info"] = {"version": str(info.get("version")) if isinstance(info, dict) else "", **INFO}
    schemas = fixed.get("components", {}).get("schemas", {})
    for name in ERROR_SCHEMAS:  # BentoML's per-status error schemas: all the one shape
        if isinstance(schemas.get(name), dict):
            schemas[name] = {**ERROR_SCHEMA, "description": schemas[name].get("description", "")}
    return fixed


class OpenAPIFix:
    """Rewrites `/docs.json` once: the document is fixed for the process's life (the API is
    declared at import), so its first fixed answer is kept and every later `GET` is answered
    from it (BentoML building it and the rewrite cost 20 ms of CPU a request; for a `HEAD`
    the server sends the headers only)."""

    def __init__(self, app: ASGIApp, nullable: dict[str, set[str]]) -> None:
        self.app = app
        self.nullable = nullable
        self._answer: tuple[Message, bytes] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != DOCS_PATH:
            await self.app(scope, receive, send)
            return
        if self._answer is not None and scope.get("method") in ("GET", "HEAD"):
            kept_start, kept_body = self._answer
            await send(kept_start)
            await send({"type": "http.response.body", "body": kept_body})
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._emit(start, b"".join(chunks), send)

        await self.app(scope, receive, buffer)

    async def _emit(self, start: Message, body: bytes, send: Send) -> None:
        fixed = False
        if start.get("status") == 200:
            try:
                body = json.dumps(fix_spec(json.loads(body), self.nullable)).encode()
                fixed = True
            except ValueError:
                pass
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        start = {**start, "headers": headers}
        if fixed:
            self._answer = (start, body)
        await send(start)
        await send({"type": "http.response.body", "body": body})
