"""Errors that know their request field, and the one place that turns errors into responses.

Every client-facing error body is `{"error": "<field>: <problem>", "field": "<field>"|null}`
(docs/api.md §1). Not `bentoml.exceptions.InvalidArgument`: BentoML 1.4.40 renders its own
exceptions as `{"error": message}` with no field, so a client could not point at the input.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse

from utils.dsp.preprocessing import InvalidCaptureError
from utils.geo.ellipse import UncertaintyInputError
from utils.serving import metrics
from utils.serving.greedy import Overloaded
from utils.serving.model_store import UnknownModel
from utils.serving.reload import ReloadRefused

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


def error_body(
    message: str, field: str | None, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


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
    if isinstance(exc, InvalidField):
        metrics.ERRORS.labels("too_many_items" if exc.status == 413 else "invalid_input").inc()
        return error_body(str(exc), exc.field, exc.status)
    if isinstance(exc, UnknownModel | ReloadRefused):  # POST /model/reload: nothing changed
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
