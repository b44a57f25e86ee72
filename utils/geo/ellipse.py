"""Uncertainty ellipses by the conventions of docs/api.md §5 (framework-free, vectorised).

Errors are a 2-D Gaussian in the local east/north tangent plane, in metres.  The model reports
sigma of latitude and of longitude in degrees; they become metres through the WGS84 meridian
(north) and prime-vertical (east) radii of curvature at the predicted latitude.  Column 0
(latitude) is `sigma_y` (north), column 1 (longitude) is `sigma_x` (east); rho is the same
correlation in either order.

The ellipse of covariance `[[sx², ρ·sx·sy], [ρ·sx·sy, sy²]]` at confidence p has semi-axes
`k·sqrt(eigenvalue)` with `k = sqrt(-2 ln(1 - p))` (chi-square, 2 dof): the 1-sigma ellipse
holds 39.3 %, not 68 %.  Orientation is the bearing of the semi-major axis, clockwise from true
north, in [0, 180); a circle has orientation 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_POINTS = 8
MAX_POINTS = 4096
#: Physical range of a 1-sigma error: a millimetre to half the Earth's circumference. Outside
#: it the squares of the sigmas under- or overflow and no ellipse exists on the globe anyway.
MIN_SIGMA_M = 1e-3
MAX_SIGMA_M = 2.0e7
#: Largest semi-major axis drawn as GeoJSON: a quarter meridian. A larger ellipse covers more
#: than a hemisphere; its ring in longitude/latitude no longer bounds one unambiguous area.
MAX_DRAWABLE_M = 1.0e7
#: Probability held by the 1-sigma ellipse of a 2-D Gaussian (what `confidence_interval` states).
ONE_SIGMA_PROBABILITY = float(-np.expm1(-0.5))

WGS84_A = 6_378_137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)


def wgs84_radii(latitude_deg: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Meridian radius M and prime-vertical radius N (metres) at a geodetic latitude."""
    s2 = np.sin(np.radians(latitude_deg)) ** 2
    w = np.sqrt(1.0 - WGS84_E2 * s2)
    return WGS84_A * (1.0 - WGS84_E2) / w**3, WGS84_A / w


def metres_per_degree(latitude_deg: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(north metres per degree of latitude, east metres per degree of longitude)."""
    m, n = wgs84_radii(latitude_deg)
    rad = np.pi / 180.0
    return m * rad, n * np.cos(np.radians(latitude_deg)) * rad


def sigmas_deg_to_m(
    latitude_deg: np.ndarray | float,
    sigma_lat_deg: np.ndarray | float,
    sigma_lon_deg: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """Model sigmas (degrees) -> (`sigma_x` east, `sigma_y` north) in metres."""
    north_per_deg, east_per_deg = metres_per_degree(latitude_deg)
    return np.asarray(sigma_lon_deg) * east_per_deg, np.asarray(sigma_lat_deg) * north_per_deg


def sigmas_m_to_deg(
    latitude_deg: np.ndarray | float,
    sigma_x_m: np.ndarray | float,
    sigma_y_m: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """(`sigma_x` east, `sigma_y` north) metres -> (sigma_lat, sigma_lon) degrees."""
    north_per_deg, east_per_deg = metres_per_degree(latitude_deg)
    return np.asarray(sigma_y_m) / north_per_deg, np.asarray(sigma_x_m) / east_per_deg


def confidence_scale(p: np.ndarray | float) -> np.ndarray:
    """k such that the k-sigma ellipse of a 2-D Gaussian holds probability p (chi-square, 2 dof)."""
    return np.sqrt(-2.0 * np.log1p(-np.asarray(p, dtype=np.float64)))


def ellipse_probability(k: np.ndarray | float) -> np.ndarray:
    """Probability inside the k-sigma ellipse: 1 - exp(-k^2 / 2) (k=1 gives 0.393)."""
    return -np.expm1(-0.5 * np.asarray(k, dtype=np.float64) ** 2)


def local_offsets_m(
    latitude_deg: np.ndarray,
    longitude_deg: np.ndarray,
    centre_lat: np.ndarray,
    centre_lon: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) metres of points from centres in the tangent plane at the centres."""
    north_per_deg, east_per_deg = metres_per_degree(centre_lat)
    dlon = (np.asarray(longitude_deg) - np.asarray(centre_lon) + 180.0) % 360.0 - 180.0
    return dlon * east_per_deg, (np.asarray(latitude_deg) - np.asarray(centre_lat)) * north_per_deg


def mahalanobis_sq(
    east_m: np.ndarray,
    north_m: np.ndarray,
    sigma_x_m: np.ndarray,
    sigma_y_m: np.ndarray,
    rho: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Squared Mahalanobis distance of offsets under `[[sx², ρsxsy], [ρsxsy, sy²]]`."""
    u = np.asarray(east_m) / sigma_x_m
    v = np.asarray(north_m) / sigma_y_m
    r = np.asarray(rho, dtype=np.float64)
    return (u * u - 2.0 * r * u * v + v * v) / (1.0 - r * r)


class UncertaintyInputError(ValueError):
    """Bad ellipse input; `field` names the argument so an API can point at it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class EllipseParams:
    """An uncertainty ellipse in the tangent plane (metres, bearing in degrees)."""

    semi_major_m: float
    semi_minor_m: float
    orientation_deg: float
    area_m2: float
    confidence_level: float


def _fail_if(bad: np.ndarray, field: str, message: str) -> None:
    if np.any(bad):
        raise UncertaintyInputError(field, message)


def validate_inputs(
    sigma_x_m: np.ndarray | float,
    sigma_y_m: np.ndarray | float,
    rho: np.ndarray | float = 0.0,
    confidence_level: np.ndarray | float = 0.95,
    latitude: np.ndarray | float | None = None,
    longitude: np.ndarray | float | None = None,
    num_points: int | None = None,
) -> None:
    """Raise `UncertaintyInputError` naming the first argument outside the valid space."""
    if latitude is not None:
        lat = np.asarray(latitude, dtype=np.float64)
        _fail_if(
            ~np.isfinite(lat) | (np.abs(lat) > 90.0),
            "latitude",
            "must be a finite number in [-90, 90]",
        )
    if longitude is not None:
        _fail_if(
            ~np.isfinite(np.asarray(longitude, dtype=np.float64)),
            "longitude",
            "must be a finite number",
        )
    for name, value in (("sigma_x", sigma_x_m), ("sigma_y", sigma_y_m)):
        v = np.asarray(value, dtype=np.float64)
        _fail_if(~np.isfinite(v) | ~(v > 0.0), name, "must be a finite number > 0 (metres)")
        _fail_if(
            (v < MIN_SIGMA_M) | (v > MAX_SIGMA_M),
            name,
            f"must be between {MIN_SIGMA_M:g} and {MAX_SIGMA_M:g} metres",
        )
    r = np.asarray(rho, dtype=np.float64)
    _fail_if(~np.isfinite(r) | ~(np.abs(r) < 1.0), "rho", "must be in the open interval (-1, 1)")
    p = np.asarray(confidence_level, dtype=np.float64)
    _fail_if(
        ~np.isfinite(p) | ~((p > 0.0) & (p < 1.0)),
        "confidence_level",
        "must be in the open interval (0, 1)",
    )
    if num_points is not None and not MIN_POINTS <= num_points <= MAX_POINTS:
        raise UncertaintyInputError(
            "num_points", f"must be between {MIN_POINTS} and {MAX_POINTS}, got {num_points}"
        )


def ellipse_axes(
    sigma_x_m: np.ndarray | float,
    sigma_y_m: np.ndarray | float,
    rho: np.ndarray | float,
    confidence_level: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(semi-major m, semi-minor m, orientation deg, area m²), vectorised, no validation.

    The small eigenvalue is taken as det/large so it keeps its precision when rho nears ±1.
    """
    sx = np.asarray(sigma_x_m, dtype=np.float64)
    sy = np.asarray(sigma_y_m, dtype=np.float64)
    r = np.asarray(rho, dtype=np.float64)
    vxx, vyy, vxy = sx * sx, sy * sy, r * sx * sy
    half_trace = 0.5 * (vxx + vyy)
    disc = np.hypot(0.5 * (vxx - vyy), vxy)
    large = half_trace + disc
    small = (vxx * vyy * (1.0 - r * r)) / large
    k = confidence_scale(confidence_level)
    semi_major = k * np.sqrt(large)
    semi_minor = np.minimum(k * np.sqrt(small), semi_major)  # a circle may round b above a
    # angle of the major axis from east, counter-clockwise; bearing is clockwise from north
    alpha = 0.5 * np.degrees(np.arctan2(2.0 * vxy, vxx - vyy))
    bearing = np.mod(90.0 - alpha, 180.0)
    bearing = np.where(bearing >= 180.0, bearing - 180.0, bearing)
    circle = disc <= 1e-12 * half_trace
    orientation = np.where(circle, 0.0, bearing)
    return semi_major, semi_minor, orientation, np.pi * semi_major * semi_minor


def drawable(semi_major_m: float) -> bool:
    """True when an ellipse with this semi-major axis can be drawn on the ellipsoid."""
    return bool(np.isfinite(semi_major_m) and 0.0 <= semi_major_m <= MAX_DRAWABLE_M)


def covariance_ellipse(
    sigma_x_m: float, sigma_y_m: float, rho: float = 0.0, confidence_level: float = 0.95
) -> EllipseParams:
    """The validated ellipse of one covariance (sigma_x east, sigma_y north, metres)."""
    validate_inputs(sigma_x_m, sigma_y_m, rho, confidence_level)
    a, b, theta, area = ellipse_axes(sigma_x_m, sigma_y_m, rho, confidence_level)
    return EllipseParams(float(a), float(b), float(theta), float(area), float(confidence_level))


def model_uncertainty_to_metres(
    latitude_deg: np.ndarray, uncertainties: np.ndarray, units: str = "degrees"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model output `uncertainties` `[B, 2]` or `[B, 3]` -> (sigma_x m, sigma_y m, rho).

    Column 0 is the latitude sigma (north), column 1 the longitude sigma (east), optional
    column 2 the correlation.
    """
    u = np.asarray(uncertainties, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] not in (2, 3):
        raise UncertaintyInputError("uncertainties", f"expected [B, 2] or [B, 3], got {u.shape}")
    rho = u[:, 2] if u.shape[1] == 3 else np.zeros(u.shape[0])
    if units == "metres":
        return u[:, 1], u[:, 0], rho
    sx, sy = sigmas_deg_to_m(latitude_deg, u[:, 0], u[:, 1])
    return sx, sy, rho
