"""Model outputs -> `PredictionResponse`: units, ellipse and GeoJSON (docs/api.md §5), a verdict.

Kept apart from the service so the exact response can be computed (and tested) without a
server.  Model outputs are checked, never patched into confidence: a non-finite position or
sigma, a sigma <= 0 or |rho| > 1 is a broken model (`ModelOutputError`, which the service turns
into a 5xx naming the model), while a finite answer from an input the model was not trained for
is returned as it is with `quality: "no_fix"` and the reasons (`utils.model.quality`).  The only
adjustments make the numbers *less* certain: a sigma below a millimetre is raised to one, and
|rho| is kept a hair below 1 so the ellipse of a near-degenerate covariance exists.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from utils.api.schemas import Ellipse, Position, PredictionResponse, Uncertainty
from utils.dsp.feature_spec import FeatureSpec
from utils.geo.ellipse import (
    MAX_DRAWABLE_M,
    MIN_SIGMA_M,
    ONE_SIGMA_PROBABILITY,
    EllipseParams,
    drawable,
    ellipse_axes,
    model_uncertainty_to_metres,
)
from utils.geo.geojson import ellipse_feature
from utils.model.quality import FixEnvelope, assess
from utils.model.runtime import RawPredictions

MAX_ABS_RHO = 0.999_999
#: Vertices of the GeoJSON ring of a prediction (`/ellipse` takes its own `num_points`).
GEOJSON_POINTS = 64


class ModelOutputError(RuntimeError):
    """The model answered a valid input with outputs no model may give: it is broken."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"sample {index}: {reason}")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_outputs(raw: RawPredictions) -> None:
    """Raise `ModelOutputError` for the first sample whose outputs break docs/api.md §8."""
    u = raw.uncertainties
    checks = (
        (~np.isfinite(raw.positions).all(axis=1), "non-finite position"),
        (~np.isfinite(u).all(axis=1), "non-finite uncertainties"),
        (~(u[:, :2] > 0.0).all(axis=1), "sigma <= 0"),
        (np.abs(u[:, 2]) > 1.0 if u.shape[1] == 3 else np.zeros(len(u), bool), "|rho| > 1"),
        (
            ~np.isfinite(raw.confidence) if raw.confidence is not None else np.zeros(len(u), bool),
            "non-finite confidence",
        ),
    )
    for bad, what in checks:
        if bad.any():
            raise ModelOutputError(int(np.argmax(bad)), what)


def build_predictions(
    raw: RawPredictions,
    *,
    spec: FeatureSpec,
    envelope: FixEnvelope,
    confidence_level: float,
    include_geojson: bool,
    model_version: str,
    inference_time_ms: float,
    session_id: str | None,
    cache_hit: bool = False,
    num_points: int = GEOJSON_POINTS,
) -> list[PredictionResponse]:
    """One response per row, vectorised over the batch except for the optional GeoJSON."""
    check_outputs(raw)
    lat = np.clip(raw.positions[:, 0], -90.0, 90.0)
    lon = (raw.positions[:, 1] + 180.0) % 360.0 - 180.0
    sx, sy, rho = model_uncertainty_to_metres(lat, raw.uncertainties, spec.uncertainty_units)
    sx, sy = np.maximum(sx, MIN_SIGMA_M), np.maximum(sy, MIN_SIGMA_M)
    rho = np.clip(rho, -MAX_ABS_RHO, MAX_ABS_RHO)
    a, b, theta, area = ellipse_axes(sx, sy, rho, confidence_level)
    one_sigma_major, _, _, _ = ellipse_axes(sx, sy, rho, ONE_SIGMA_PROBABILITY)
    verdicts = assess(
        lat, lon, one_sigma_major, raw.power_db, raw.spread_db, raw.frames, envelope, spec
    )
    stamp = utc_now()
    out = []
    for i in range(lat.shape[0]):
        params = EllipseParams(
            float(a[i]), float(b[i]), float(theta[i]), float(area[i]), confidence_level
        )
        warnings = list(verdicts[i].warnings)
        geojson = None
        if include_geojson and drawable(params.semi_major_m):
            geojson = ellipse_feature(
                float(lat[i]),
                float(lon[i]),
                params,
                num_points,
                {"sigma_x_m": float(sx[i]), "sigma_y_m": float(sy[i]), "rho": float(rho[i])},
            )
        elif include_geojson:
            warnings.append(
                f"GeoJSON omitted: the ellipse's semi-major axis "
                f"({params.semi_major_m / 1000:.4g} km) is larger than the "
                f"{MAX_DRAWABLE_M / 1000:.0f} km an ellipse can span on the "
                "ellipsoid"
            )
        out.append(
            PredictionResponse(
                position=Position(latitude=float(lat[i]), longitude=float(lon[i])),
                uncertainty=Uncertainty(
                    sigma_x=float(sx[i]),
                    sigma_y=float(sy[i]),
                    rho=float(rho[i]),
                    theta=float(theta[i]),
                    confidence_interval=ONE_SIGMA_PROBABILITY,
                ),
                ellipse=Ellipse(
                    semi_major_m=params.semi_major_m,
                    semi_minor_m=params.semi_minor_m,
                    orientation_deg=params.orientation_deg,
                    area_m2=params.area_m2,
                    confidence_level=confidence_level,
                    geojson=geojson,
                ),
                quality=verdicts[i].quality,
                warnings=warnings,
                confidence=None
                if raw.confidence is None
                else float(np.clip(raw.confidence[i], 0.0, 1.0)),
                model_version=model_version,
                inference_time_ms=inference_time_ms,
                cache_hit=cache_hit,
                session_id=session_id,
                timestamp=stamp,
            )
        )
    return out
