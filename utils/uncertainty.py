"""Uncertainty conventions of SPEC §5: degrees <-> metres and confidence scaling.

Errors are a 2-D Gaussian in the local east/north tangent plane, in metres.  The model reports
sigma of latitude and of longitude in degrees; they become metres through the WGS84 meridian
(north) and prime-vertical (east) radii of curvature at the predicted latitude.  Column 0
(latitude) is `sigma_y` (north), column 1 (longitude) is `sigma_x` (east).
"""

from __future__ import annotations

import numpy as np

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
    latitude_deg: np.ndarray, longitude_deg: np.ndarray, centre_lat: np.ndarray,
    centre_lon: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) metres of points from centres in the tangent plane at the centres."""
    north_per_deg, east_per_deg = metres_per_degree(centre_lat)
    dlon = (np.asarray(longitude_deg) - np.asarray(centre_lon) + 180.0) % 360.0 - 180.0
    return dlon * east_per_deg, (np.asarray(latitude_deg) - np.asarray(centre_lat)) * north_per_deg


def mahalanobis_sq(
    east_m: np.ndarray, north_m: np.ndarray, sigma_x_m: np.ndarray, sigma_y_m: np.ndarray,
    rho: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Squared Mahalanobis distance of offsets under `[[sx², ρsxsy], [ρsxsy, sy²]]`."""
    u = np.asarray(east_m) / sigma_x_m
    v = np.asarray(north_m) / sigma_y_m
    r = np.asarray(rho, dtype=np.float64)
    return (u * u - 2.0 * r * u * v + v * v) / (1.0 - r * r)
