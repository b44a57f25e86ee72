"""Errors that know their request field, and the one place that turns errors into responses.

Every client-facing error body has one shape (docs/api.md §1.3):
`{"error": "<field>: <problem>", "field": "<field>"|null, "detail": [{"type", "loc", "msg"}]}`.
`error` is for people, `field` points at the input, `detail` is for programs and lists every
problem (pydantic's validation errors arrive with several). Not
`bentoml.exceptions.InvalidArgument`: BentoML 1.4.40 renders its own exceptions as
`{"error": message}` with no field, and its validation errors name an internal class
(`PredictRequestIODescriptor`); `utils/asgi/error_shape.py` reshapes those on the way out.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

from utils.dsp.preprocessing import InvalidCaptureError
from utils.geo.ellipse import UncertaintyInputError
from utils.serving import metrics
from utils.serving.departure import ClientLeft
from utils.serving.greedy import Overloaded
from utils.serving.model_store import UnknownModel
from utils.serving.reload import ReloadConflict, ReloadRefused

if TYPE_CHECKING:
    from utils.api.responses import ModelOutputError

log = logging.getLogger("bentoml.service.localization")


class InvalidField(InvalidCaptureError):
    """A request field that cannot be used; the message starts with the field's name."""

    def __init__(self, field: str, problem: str, status: int = 400) -> None:
        self.field = field
        self.status = status
        super().__init__(f"{field}: {problem}")


class AdminRefused(Exception):
    """An operator's route refused: 401 (no credentials) or 403 (wrong, or the route is off)."""

    def __init__(self, status: int, problem: str) -> None:
        self.status = status
        super().__init__(f"authorization: {problem}")


class BrokenModel(Exception):
    """A valid request answered with outputs no model may give (`ModelOutputError`), with
    the request field of the sample that showed it, so the 500 can name both."""

    def __init__(self, error: ModelOutputError, field: str) -> None:
        self.error = error
        self.field = field
        super().__init__(f"{field}: {error}")


# `detail[].type` of the errors this service raises itself, by status (pydantic's keep theirs)
ERROR_TYPES: dict[int, str] = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "model_refused",
    500: "server_error",
    503: "overloaded",
    504: "timeout",
}
# a problem with no single field (an empty `loc`) is the request body's as a whole
WHOLE_BODY = "request body"
# an error lists at most this many problems in `detail`, then one entry counting the rest
MAX_DETAIL = 20
# longest `msg` of a problem, and of `error` (what a message quotes is cut beyond)
MAX_MSG = 300
MAX_ERROR = 1000
# a `loc` part that could be a field name; any other (an unknown key) is not echoed
_LOC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# a framework class a pydantic message could name (`... instance of PredictRequestIODescriptor`)
_CLASS_NAME = re.compile(r"\b[A-Z]\w*(?:IODescriptor|Request)\b")
UNNAMED_KEY = "<key>"
_LOC_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def loc_to_field(loc: list[str | int] | tuple[str | int, ...]) -> str | None:
    """`["iq_b64_samples", 2]` -> `iq_b64_samples[2]`: the spelling the service's own errors use."""
    field = ""
    for part in loc:
        if isinstance(part, int):
            field += f"[{part}]"
        else:
            field += f".{part}" if field else str(part)
    return field or None


def field_to_loc(field: str) -> list[str | int]:
    """`iq_data[1][0]` -> `["iq_data", 1, 0]`: pydantic's `loc` for the service's own errors."""
    loc: list[str | int] = []
    for name, index in _LOC_PART.findall(field):
        loc.append(int(index) if index else name)
    return loc or [field]


def encode_error(payload: dict[str, Any]) -> bytes:
    """The one spelling of every error body (compact, UTF-8: Starlette's `JSONResponse`),
    whoever sends it: the API's errors, the ASGI layers' and the reshaped framework's."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class ErrorResponse(JSONResponse):
    """A `JSONResponse` rendered by `encode_error`."""

    def render(self, content: Any) -> bytes:
        return encode_error(content)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def error_payload(
    message: str, field: str | None, status: int, error_type: str | None = None
) -> dict[str, Any]:
    """The one error shape, for an error with one problem. `message` starts with `field: `."""
    message = _cut(message, MAX_ERROR)
    problem = message[len(field) + 2 :] if field and message.startswith(f"{field}: ") else message
    detail = {
        "type": error_type or ERROR_TYPES.get(status, "error"),
        "loc": field_to_loc(field) if field else [],
        "msg": problem,
    }
    return {"error": message, "field": field, "detail": [detail]}


def _loc_part(part: Any) -> str | int:
    if isinstance(part, int) and not isinstance(part, bool):
        return part
    return str(part) if _LOC_NAME.fullmatch(str(part)) else UNNAMED_KEY


def validation_payload(items: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    """pydantic's error list (as BentoML sends it) in the one shape: `error` and `field` from
    the first problem, the first `MAX_DETAIL` problems in `detail` with only `type`, `loc` and
    `msg` (no input echoed back: a key that could not be a field name is `<key>`; no
    documentation links, no class names), then one entry counting the others. `total`: how
    many problems there were, when `items` holds only the first."""
    total = max(total or 0, len(items))
    detail = []
    for item in items[:MAX_DETAIL]:
        msg = str(item.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        msg = _cut(_CLASS_NAME.sub("the request body", msg), MAX_MSG)
        loc = [_loc_part(p) for p in item.get("loc", ())]
        detail.append({"type": str(item.get("type", "invalid_input")), "loc": loc, "msg": msg})
    if not detail:
        return error_payload(f"{WHOLE_BODY}: invalid", None, 400)
    field = loc_to_field(detail[0]["loc"])
    message = f"{field or WHOLE_BODY}: {detail[0]['msg']}"
    more = total - 1
    if total > len(detail):
        detail.append(
            {
                "type": "too_many_errors",
                "loc": [],
                "msg": f"{total - len(detail)} more problems not listed",
            }
        )
        message += f" (and {more} more problems; detail lists the first {MAX_DETAIL})"
    elif more:
        message += f" (and {more} more problem{'s' if more > 1 else ''} in detail)"
    return {"error": message, "field": field, "detail": detail}


def error_body(
    message: str, field: str | None, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    payload = error_payload(message, field, status)
    return ErrorResponse(payload, status_code=status, headers=headers)


def to_response(exc: Exception, model_tag: str) -> JSONResponse:
    """The response (and the metric) for every error an API method lets through."""
    if isinstance(exc, Overloaded):  # the expected wait as Retry-After: when to come back
        metrics.OVERLOADED.inc()
        return error_body(
            f"overloaded: {exc}; retry after {exc.retry_after_s:.1f} s",
            None,
            503,
            {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
        )
    if isinstance(exc, BrokenModel):  # the model is at fault: 5xx naming it and the sample
        metrics.ERRORS.labels("model_output").inc()
        reason = exc.error.reason
        log.error("model %s returned invalid outputs (%s) for %s", model_tag, reason, exc.field)
        return error_body(
            f"model {model_tag} returned invalid outputs ({reason}) for "
            f"{exc.field}: the model is broken, not the request",
            None,
            500,
        )
    if isinstance(exc, ClientLeft):  # nobody reads it: ClientGone answers 499 to the logs
        return error_body(str(exc), None, 499)
    if isinstance(exc, InvalidField):
        metrics.ERRORS.labels("too_many_items" if exc.status == 413 else "invalid_input").inc()
        return error_body(str(exc), exc.field, exc.status)
    if isinstance(exc, UnknownModel | ReloadRefused | ReloadConflict):  # POST /model/reload
        return error_body(f"tag: {exc}", "tag", exc.status)
    if isinstance(exc, AdminRefused):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_body(str(exc), "authorization", exc.status, headers)
    if isinstance(exc, UncertaintyInputError):
        return error_body(str(exc), exc.field, 400)
    if isinstance(exc, InvalidCaptureError):  # raised below the API layer: no field known
        metrics.ERRORS.labels("invalid_input").inc()
        return error_body(str(exc), None, 400)
    raise exc
