"""Model outputs -> `PredictionResponse`: units, ellipse and GeoJSON by SPEC §5.

Kept apart from the service so the exact response can be computed (and tested) without a
server.  Model outputs are sanitised rather than trusted: a sigma that rounds to zero is
floored at a millimetre and rho is kept inside (-1, 1), because the ellipse of a degenerate
covariance is undefined and a model glitch must not turn into a 500.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from utils.geojson import ellipse_feature
from utils.schemas import Ellipse, Position, PredictionResponse, Uncertainty
from utils.uncertainty import (
    MAX_SIGMA_M,
    MIN_SIGMA_M,
    ONE_SIGMA_PROBABILITY,
    EllipseParams,
    ellipse_axes,
    model_uncertainty_to_metres,
)

MAX_ABS_RHO = 0.999_999


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_predictions(
    positions: np.ndarray,
    uncertainties: np.ndarray,
    confidence: np.ndarray | None,
    *,
    uncertainty_units: str,
    confidence_level: float,
    include_geojson: bool,
    model_version: str,
    inference_time_ms: float,
    session_id: str | None,
    cache_hit: bool = False,
    num_points: int = 64,
) -> list[PredictionResponse]:
    """One response per row, vectorised over the batch except for the optional GeoJSON."""
    lat = np.clip(positions[:, 0], -90.0, 90.0)
    lon = (positions[:, 1] + 180.0) % 360.0 - 180.0
    sx, sy, rho = model_uncertainty_to_metres(lat, uncertainties, uncertainty_units)
    sx = np.clip(np.nan_to_num(sx, nan=MIN_SIGMA_M), MIN_SIGMA_M, MAX_SIGMA_M)
    sy = np.clip(np.nan_to_num(sy, nan=MIN_SIGMA_M), MIN_SIGMA_M, MAX_SIGMA_M)
    rho = np.clip(np.nan_to_num(rho), -MAX_ABS_RHO, MAX_ABS_RHO)
    a, b, theta, area = ellipse_axes(sx, sy, rho, confidence_level)
    stamp = utc_now()
    out = []
    for i in range(positions.shape[0]):
        params = EllipseParams(float(a[i]), float(b[i]), float(theta[i]), float(area[i]),
                               confidence_level)
        geojson = None
        if include_geojson:
            geojson = ellipse_feature(float(lat[i]), float(lon[i]), params, num_points,
                                      {"sigma_x_m": float(sx[i]), "sigma_y_m": float(sy[i]),
                                       "rho": float(rho[i])})
        out.append(PredictionResponse(
            position=Position(latitude=float(lat[i]), longitude=float(lon[i])),
            uncertainty=Uncertainty(sigma_x=float(sx[i]), sigma_y=float(sy[i]),
                                    rho=float(rho[i]), theta=float(theta[i]),
                                    confidence_interval=ONE_SIGMA_PROBABILITY),
            ellipse=Ellipse(semi_major_m=params.semi_major_m, semi_minor_m=params.semi_minor_m,
                            orientation_deg=params.orientation_deg, area_m2=params.area_m2,
                            confidence_level=confidence_level, geojson=geojson),
            confidence=None if confidence is None else float(np.clip(confidence[i], 0.0, 1.0)),
            model_version=model_version,
            inference_time_ms=inference_time_ms,
            cache_hit=cache_hit,
            session_id=session_id,
            timestamp=stamp,
        ))
    return out
