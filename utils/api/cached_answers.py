"""Cached values -> answers, served only when checked as strictly as a model's outputs.

Whoever can write to the cache's Redis can put any bytes under any key the service reads. A
value read back is served only if it is an answer this service could have written under that
key (docs/api.md §6):

- size: at most `MAX_VALUE_BYTES`, checked before anything parses it;
- signature (with `CACHE_SIGNING_KEY`): an HMAC-SHA256 over key and value (`seal_value`);
- json and schema: the `PredictionResponse` without its per-request fields, strict (no strings
  for numbers, no unknown fields), parsed by pydantic's own parser, which refuses deep nesting
  instead of recursing into it;
- model: the `model_version` of the model serving the request (the key holds its sha256);
- options: the `confidence_level` of the key, and GeoJSON only when the key asked for it;
- bounds: what `build_predictions` guarantees of a fix: finite numbers, latitude and
  longitude in range, sigmas in [1 mm, 20 000 km], |rho| <= 0.999999, confidence null exactly
  when the model has none and else in [0, 1], the ellipse recomputed from the covariance, the
  position and 1-sigma axis inside the model's fix envelope, a GeoJSON ring equal to the one
  drawn for that ellipse.

Anything else is a miss: counted (`rfloc_cache_rejected_total{reason}`), logged at most once
per `log_every_s`, and overwritten by the fresh answer when that is a fix. Without a signing
key, a value that passes is a plausible answer, not necessarily the true one for that capture:
only the key makes it unforgeable. Checking a typical hit costs about 40 µs (the MAC 2 µs of
it), a hit with GeoJSON about 0.35 ms (the ring is redrawn, as a miss draws it), against 1.7 ms
for a hit over HTTP and several ms for a miss.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from utils.api.responses import GEOJSON_POINTS, MAX_ABS_RHO, utc_now
from utils.api.schemas import PredictionResponse, PredictOptions
from utils.geo.ellipse import (
    MAX_SIGMA_M,
    MIN_SIGMA_M,
    ONE_SIGMA_PROBABILITY,
    EllipseParams,
    confidence_scale,
    drawable,
    ellipse_axes,
)
from utils.geo.geojson import ellipse_feature
from utils.model.runtime import ModelRuntime
from utils.model.served import ServedModel
from utils.serving import metrics
from utils.serving.cache import (
    PER_REQUEST_FIELDS,
    RefusedValue,
    encode_value,
    open_value,
    seal_value,
)

log = logging.getLogger(__name__)

#: The stored form of an answer: the response model without its per-request fields.
#: (built from the model, so a field added to the response is checked here too)
CachedAnswer: Any = create_model(
    "CachedAnswer",
    __config__=ConfigDict(strict=True, extra="forbid"),
    **{
        name: (field.annotation, field)
        for name, field in PredictionResponse.model_fields.items()
        if name not in PER_REQUEST_FIELDS
    },
)
#: A fix carries at most two warnings (receivers without a signal, GeoJSON omitted): room left.
MAX_WARNINGS = 4
#: Derived numbers are recomputed and compared to this relative tolerance (another CPU's
#: vectorised maths may differ in the last bits: a replica must accept its peers' answers).
REL_TOL = 1e-9


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)


def _same(value: Any, expected: Any) -> bool:
    """JSON `value` equals `expected` in structure, floats within `REL_TOL`."""
    if isinstance(expected, dict):
        return (
            isinstance(value, dict)
            and value.keys() == expected.keys()
            and all(_same(value[k], v) for k, v in expected.items())
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(value, list)
            and len(value) == len(expected)
            and all(map(_same, value, expected))
        )
    if isinstance(expected, float):
        return type(value) is float and _close(value, expected)
    return type(value) is type(expected) and value == expected


def violation(answer: Any, runtime: ModelRuntime, include_geojson: bool) -> str | None:
    """The first property of a fix `answer` (a validated `CachedAnswer`) breaks, or None."""
    p, u, e = answer.position, answer.uncertainty, answer.ellipse
    numbers = (
        p.latitude,
        p.longitude,
        u.sigma_x,
        u.sigma_y,
        u.rho,
        u.theta,
        u.confidence_interval,
        e.semi_major_m,
        e.semi_minor_m,
        e.orientation_deg,
        e.area_m2,
    )
    if not all(map(math.isfinite, numbers)):
        return "non-finite number"
    if answer.quality != "fix":
        return "quality (only fixes are cached)"
    if not (-90.0 <= p.latitude <= 90.0 and -180.0 <= p.longitude <= 180.0):
        return "position"
    if not (MIN_SIGMA_M <= u.sigma_x <= MAX_SIGMA_M and MIN_SIGMA_M <= u.sigma_y <= MAX_SIGMA_M):
        return "sigma"
    if not abs(u.rho) <= MAX_ABS_RHO:
        return "rho"
    if (answer.confidence is None) == runtime.has_confidence or not (
        answer.confidence is None or 0.0 <= answer.confidence <= 1.0
    ):
        return "confidence"
    if not _close(u.confidence_interval, ONE_SIGMA_PROBABILITY):
        return "confidence_interval"
    if len(answer.warnings) > MAX_WARNINGS:
        return "warnings"
    major, minor, bearing, area = (
        float(x) for x in ellipse_axes(u.sigma_x, u.sigma_y, u.rho, e.confidence_level)
    )
    round_ = major - minor <= 1e-6 * major  # a circle's orientation is arbitrary
    turn = abs(e.orientation_deg - bearing) % 180.0
    if not (
        _close(e.semi_major_m, major)
        and _close(e.semi_minor_m, minor)
        and _close(e.area_m2, area)
        and 0.0 <= e.orientation_deg < 180.0
        and u.theta == e.orientation_deg
        and (round_ or min(turn, 180.0 - turn) <= 1e-6)
    ):
        return "ellipse"
    one_sigma_major = major / float(confidence_scale(e.confidence_level))
    envelope = runtime.envelope
    if bool(envelope.outside(p.latitude, p.longitude)) or one_sigma_major > envelope.max_sigma_m * (
        1.0 + REL_TOL
    ):
        return "fix envelope"
    if include_geojson:
        if (e.geojson is not None) != drawable(e.semi_major_m):
            return "geojson"
        if e.geojson is not None:
            params = EllipseParams(
                e.semi_major_m, e.semi_minor_m, e.orientation_deg, e.area_m2, e.confidence_level
            )
            drawn = ellipse_feature(
                p.latitude,
                p.longitude,
                params,
                GEOJSON_POINTS,
                {"sigma_x_m": u.sigma_x, "sigma_y_m": u.sigma_y, "rho": u.rho},
            )
            if not _same(e.geojson, drawn):
                return "geojson"
    return None


class CachedAnswers:
    """Seals answers for the cache and opens what it returns, for one worker."""

    def __init__(self, signing_key: bytes | None = None, log_every_s: float = 60.0) -> None:
        self.secret = signing_key
        self.log_every_s = log_every_s
        self._refused = {r: metrics.CACHE_REJECTED.labels(r) for r in metrics.CACHE_REJECT_REASONS}
        self._last_log = -math.inf
        self._suppressed = 0

    def seal(self, key: str, response: PredictionResponse) -> bytes:
        """The value stored under `key` for a fresh answer."""
        return seal_value(encode_value(response.model_dump(mode="json")), key, self.secret)

    def check(
        self, key: str, raw: bytes, served: ServedModel, confidence_level: float, geojson: bool
    ) -> Any:
        """The `CachedAnswer` stored under `key`, or `RefusedValue` (module docstring)."""
        payload = open_value(raw, key, self.secret)
        try:
            answer = CachedAnswer.model_validate_json(payload, strict=True, extra="forbid")
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
            reason = "json" if first["type"] == "json_invalid" else "schema"
            raise RefusedValue(reason, ".".join(map(str, first["loc"]))) from None
        if answer.model_version != served.model_version:
            raise RefusedValue("model")
        ellipse = answer.ellipse
        if ellipse.confidence_level != confidence_level:
            raise RefusedValue("options", "confidence_level")
        if ellipse.geojson is not None and not geojson:
            raise RefusedValue("options", "geojson")
        problem = violation(answer, served.runtime, geojson)
        if problem is not None:
            raise RefusedValue("bounds", problem)
        return answer

    def open(
        self, key: str, raw: bytes, served: ServedModel, options: PredictOptions
    ) -> PredictionResponse | None:
        """The answer to serve as a hit, or None (a miss) for a value that is not one."""
        try:
            answer = self.check(key, raw, served, options.confidence_level, options.include_geojson)
        except RefusedValue as exc:
            self._refuse(key, exc.reason, exc.detail)
            return None
        except Exception as exc:  # noqa: BLE001 - nothing under a cache key may fail a request
            self._refuse(key, "schema", type(exc).__name__)
            return None
        return PredictionResponse.model_construct(
            **dict(answer),
            cache_hit=True,
            session_id=options.session_id,
            timestamp=utc_now(),
            inference_time_ms=0.0,
        )

    def _refuse(self, key: str, reason: str, detail: str) -> None:
        """Counted always, logged at most once per `log_every_s` (never the value itself)."""
        self._refused[reason].inc()
        now = time.monotonic()
        if now - self._last_log < self.log_every_s:
            self._suppressed += 1
            return
        extra = f"; {self._suppressed} more since the last report" if self._suppressed else ""
        log.warning(
            "cached value under %s refused (%s%s): served uncached, and overwritten when the "
            "fresh answer is a fix%s",
            key,
            reason,
            f": {detail}" if detail else "",
            extra,
        )
        self._last_log, self._suppressed = now, 0
