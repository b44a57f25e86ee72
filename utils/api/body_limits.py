"""How large a request body each route can need, so everything larger is refused unread (413).

`MAX_REQUEST_BYTES` (64 MiB) has to admit the largest `/predict_batch`, but one `/predict`
carries one capture set: at most `MAX_SAMPLES_PER_CAPTURE` samples per receiver. Its largest
valid body is that capture as `iq_data` in JSON, and anything beyond it is a client error or an
attack that would otherwise be read, parsed and decoded before its 400 (16 concurrent 60 MB
bodies took a worker to 0.86 GB). The routes that take a handful of fields get a small budget.

Sizes: a JSON number in its shortest round-trip form is at most 24 characters
(`-2.2250738585072014e-308`); a sample `[I, Q], ` is then 54 bytes, 27 per value. 32 per value
leaves room for spaces; a pretty-printed body (a number per line) is refused: send compact JSON
or `iq_b64`, which needs 5.3 bytes per value (base64 of a float32).
"""

from __future__ import annotations

from collections.abc import Iterable

BYTES_PER_JSON_VALUE = 32
OTHER_FIELDS_BYTES = 64 * 1024  # session_id (256 characters, escaped), options, key names
SMALL_BODY_BYTES = 64 * 1024  # /ellipse, /model/reload, /sample_scene, /model/info
SMALL_BODY_ROUTES = ("/ellipse", "/model/reload", "/sample_scene", "/model/info")


def predict_body_bytes(max_samples_per_capture: int, receivers: int) -> int:
    """The largest `/predict` body a valid request can need (`iq_data`, compact JSON)."""
    return 2 * BYTES_PER_JSON_VALUE * max_samples_per_capture * receivers + OTHER_FIELDS_BYTES


class RouteBodyLimits:
    """Body budget per path; `set_receivers` follows the served model (start and reloads).

    `predict_override` (`MAX_PREDICT_BYTES`) replaces the derived `/predict` budget; every
    budget is capped by `max_bytes` (`MAX_REQUEST_BYTES`), the budget of every other path.
    """

    def __init__(
        self,
        max_bytes: int,
        max_samples_per_capture: int,
        predict_override: int | None = None,
        small_routes: Iterable[str] = SMALL_BODY_ROUTES,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_samples_per_capture = max_samples_per_capture
        self.predict_override = predict_override
        self.small_routes = frozenset(small_routes)
        self.receivers: int | None = None

    def set_receivers(self, receivers: int) -> None:
        self.receivers = receivers

    def __call__(self, path: str) -> tuple[int, str]:
        """(limit in bytes, why: what the 413's message tells the client the limit comes from)."""
        if path == "/predict":
            if self.predict_override:
                return self._capped(self.predict_override, "MAX_PREDICT_BYTES")
            if self.receivers is not None:
                derived = predict_body_bytes(self.max_samples_per_capture, self.receivers)
                why = (
                    f"{self.max_samples_per_capture} samples (MAX_SAMPLES_PER_CAPTURE) x "
                    f"{self.receivers} receivers as compact JSON; iq_b64 needs a fifth of that"
                )
                return self._capped(derived, why)
        if path in self.small_routes:
            return self._capped(SMALL_BODY_BYTES, "a few fields")
        return self.max_bytes, "MAX_REQUEST_BYTES"

    def _capped(self, limit: int, why: str) -> tuple[int, str]:
        return (limit, why) if limit <= self.max_bytes else (self.max_bytes, "MAX_REQUEST_BYTES")
