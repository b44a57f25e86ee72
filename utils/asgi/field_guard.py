"""ASGI middleware: a body's keys and list lengths checked before BentoML validates it.

pydantic, behind BentoML, builds every value and reports every problem of a body: unknown keys
and over-long lists cost the worker seconds and gigabytes and came back in an error of
hundreds of MB (`utils/api/request_fields.py`). This layer reads the body (already bounded by
`BodySizeLimit`, `InflightBudget` and `BodyDeadline`), refuses the first unknown key (400,
named only when it could be a field name) or a list beyond its limit (413), and hands the body
on as one message otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from utils.api.request_fields import FieldCheck, FieldRefused
from utils.asgi.error_shape import send_error
from utils.asgi.replay import prepend_body
from utils.serving import metrics

log = logging.getLogger("bentoml.service.localization")


class FieldGuard:
    def __init__(self, app: ASGIApp, checks: Mapping[str, FieldCheck]) -> None:
        self.app = app
        self.checks = dict(checks)  # path -> its request model's keys and list limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        check = self.checks.get(scope.get("path", "")) if scope["type"] == "http" else None
        if check is None or scope.get("method") != "POST":
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
        del chunks  # one copy of the body, not two, while the request runs
        try:
            check.check(body)
        except FieldRefused as exc:
            # the one INFO line a body refused by validation gets (log_filters.py), no input
            log.info("%s %s: rejected input (%s)", scope["method"], scope["path"], exc.message)
            if exc.status == 413:
                metrics.ERRORS.labels("too_many_items").inc()
            await send_error(send, exc.status, exc.message, exc.field, error_type=exc.error_type)
            return
        replay = prepend_body(body, receive, more_body=False)
        del body  # `replay` lets go of it once it has been read
        await self.app(scope, replay, send)
