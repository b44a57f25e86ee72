"""Ellipse conventions (docs/api.md §5): analytic cases, Monte Carlo coverage, geodesy,
properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.geo.ellipse import (
    ONE_SIGMA_PROBABILITY,
    EllipseParams,
    UncertaintyInputError,
    confidence_scale,
    covariance_ellipse,
    ellipse_axes,
    ellipse_probability,
    metres_per_degree,
    model_uncertainty_to_metres,
    sigmas_deg_to_m,
    sigmas_m_to_deg,
)
from utils.geo.geojson import ellipse_feature, signed_area


def test_known_k_values() -> None:
    assert confidence_scale(0.3935) == pytest.approx(1.000, abs=5e-4)
    assert confidence_scale(0.95) == pytest.approx(2.4477, abs=5e-5)
    assert ellipse_probability(1.0) == pytest.approx(0.3935, abs=5e-5)
    assert ONE_SIGMA_PROBABILITY == pytest.approx(0.393469, abs=1e-6)


def test_axis_aligned() -> None:
    k = confidence_scale(0.95)
    east = covariance_ellipse(300.0, 100.0)
    assert east.semi_major_m == pytest.approx(300 * k)
    assert east.semi_minor_m == pytest.approx(100 * k)
    assert east.orientation_deg == pytest.approx(90.0)  # major axis east-west
    north = covariance_ellipse(100.0, 300.0)
    assert north.orientation_deg == pytest.approx(0.0)
    assert north.area_m2 == pytest.approx(math.pi * 300 * 100 * k * k)


def test_circle_has_orientation_zero() -> None:
    e = covariance_ellipse(250.0, 250.0, 0.0, 0.5)
    assert e.orientation_deg == 0.0
    assert e.semi_major_m == pytest.approx(e.semi_minor_m)


@pytest.mark.parametrize(("rho", "bearing"), [(0.5, 45.0), (-0.5, 135.0)])
def test_45_degree_correlation(rho: float, bearing: float) -> None:
    e = covariance_ellipse(100.0, 100.0, rho, ONE_SIGMA_PROBABILITY)
    assert e.orientation_deg == pytest.approx(bearing)
    assert e.semi_major_m == pytest.approx(100 * math.sqrt(1 + abs(rho)))
    assert e.semi_minor_m == pytest.approx(100 * math.sqrt(1 - abs(rho)))


def test_rho_close_to_one_keeps_precision() -> None:
    a, b, theta, area = ellipse_axes(100.0, 50.0, 0.999_999_9, ONE_SIGMA_PROBABILITY)
    # det = sx² sy² (1 - rho²): b = sqrt(det) / a exactly
    expected_b = 100 * 50 * math.sqrt(1 - 0.999_999_9**2) / float(a)
    assert float(b) == pytest.approx(expected_b, rel=1e-6) and float(b) > 0
    assert 0 <= float(theta) < 180 and np.isfinite(area)


def test_degrees_metres_reference_values() -> None:
    # textbook WGS84 lengths of one degree
    north, east = metres_per_degree(0.0)
    assert float(north) == pytest.approx(110_574.3, abs=1.0)
    assert float(east) == pytest.approx(111_319.5, abs=1.0)
    north, east = metres_per_degree(45.0)
    assert float(north) == pytest.approx(111_132.0, abs=1.5)
    assert float(east) == pytest.approx(78_846.8, abs=1.0)
    # against an independent geodesic over a small step
    geod = Geodesic.WGS84
    d_north = geod.Inverse(45.0 - 5e-4, 7.0, 45.0 + 5e-4, 7.0)["s12"] / 1e-3
    d_east = geod.Inverse(45.0, 7.0 - 5e-4, 45.0, 7.0 + 5e-4)["s12"] / 1e-3
    north, east = metres_per_degree(45.0)
    assert float(north) == pytest.approx(d_north, rel=1e-6)
    assert float(east) == pytest.approx(d_east, rel=1e-6)


def test_model_columns_map_to_north_and_east() -> None:
    lat = np.array([45.0])
    sx, sy, rho = model_uncertainty_to_metres(lat, np.array([[0.1, 0.2, 0.3]]))
    north, east = metres_per_degree(45.0)
    assert float(sy[0]) == pytest.approx(0.1 * float(north))  # latitude column -> north
    assert float(sx[0]) == pytest.approx(0.2 * float(east))  # longitude column -> east
    assert float(rho[0]) == 0.3
    lat_deg, lon_deg = sigmas_m_to_deg(lat, *sigmas_deg_to_m(lat, 0.1, 0.2)[::1])
    assert float(lat_deg[0]) == pytest.approx(0.1) and float(lon_deg[0]) == pytest.approx(0.2)
    _, _, rho2 = model_uncertainty_to_metres(lat, np.array([[0.1, 0.2]]))
    assert rho2[0] == 0.0
    with pytest.raises(UncertaintyInputError, match="uncertainties"):
        model_uncertainty_to_metres(lat, np.ones((1, 4)))


def _inside(points: np.ndarray, e: EllipseParams) -> np.ndarray:
    """Geometric test in the ellipse's own axes (independent of the Mahalanobis formula)."""
    phi = math.radians(e.orientation_deg)
    major = np.array([math.sin(phi), math.cos(phi)])  # (east, north) of the bearing
    minor = np.array([-math.cos(phi), math.sin(phi)])
    u, v = points @ major, points @ minor
    return (u / e.semi_major_m) ** 2 + (v / e.semi_minor_m) ** 2 <= 1.0


@pytest.mark.parametrize("p", [ONE_SIGMA_PROBABILITY, 0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize(
    ("sx", "sy", "rho"),
    [(100.0, 100.0, 0.0), (300.0, 100.0, 0.6), (50.0, 500.0, -0.8), (1000.0, 100.0, 0.95)],
)
def test_monte_carlo_coverage(p: float, sx: float, sy: float, rho: float) -> None:
    rng = np.random.default_rng(12345)
    cov = np.array([[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]])
    points = rng.multivariate_normal([0.0, 0.0], cov, size=200_000)
    share = _inside(points, covariance_ellipse(sx, sy, rho, p)).mean()
    assert abs(share - p) < 0.005


def _ring_points(geometry: dict) -> list[list[list[float]]]:
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"][0]]
    return [poly[0] for poly in geometry["coordinates"]]


def _radius_at(e: EllipseParams, bearing_deg: float) -> float:
    psi = math.radians(bearing_deg - e.orientation_deg)
    a, b = e.semi_major_m, e.semi_minor_m
    return a * b / math.hypot(b * math.cos(psi), a * math.sin(psi))


@pytest.mark.parametrize(
    ("lat", "lon", "sx", "sy", "rho"),
    [
        (45.0, 7.6, 3.0, 2.0, 0.2),  # a few metres
        (45.0, 7.6, 20_000.0, 8_000.0, -0.4),  # the demo model's scale
        (45.0, 7.6, 150_000.0, 60_000.0, 0.7),  # hundreds of kilometres
        (-33.9, 151.2, 5_000.0, 5_000.0, 0.0),  # southern hemisphere circle
        (84.0, 30.0, 40_000.0, 10_000.0, 0.3),  # near a pole
        (10.0, 179.95, 20_000.0, 10_000.0, 0.0),  # across the antimeridian
        (-10.0, -179.9, 60_000.0, 20_000.0, -0.5),  # across it from the west
    ],
)
def test_vertices_lie_on_the_geodesic_ellipse(
    lat: float, lon: float, sx: float, sy: float, rho: float
) -> None:
    e = covariance_ellipse(sx, sy, rho, 0.95)
    feature = ellipse_feature(lat, lon, e, 64)
    assert feature["type"] == "Feature"
    geod = Geodesic.WGS84
    crossing = feature["geometry"]["type"] == "MultiPolygon"
    assert crossing == (abs(lon) > 179.0)
    for ring in _ring_points(feature["geometry"]):
        assert ring[0] == ring[-1], "ring closed"
        assert signed_area(ring) > 0, "counter-clockwise"
        for x, y in ring:
            assert -180.0 <= x <= 180.0 and -90.0 <= y <= 90.0
        for x, y in ring[:-1]:
            if crossing and abs(abs(x) - 180.0) < 1e-9:
                continue  # cut points on the antimeridian are interpolated, not vertices
            inv = geod.Inverse(lat, lon, y, x)
            assert inv["s12"] == pytest.approx(_radius_at(e, inv["azi1"]), rel=1e-3)
    props = feature["properties"]
    assert props["semi_major_m"] == e.semi_major_m and props["confidence_level"] == 0.95


def test_ellipse_around_a_pole_covers_the_cap() -> None:
    e = covariance_ellipse(30_000.0, 20_000.0, 0.1, 0.95)
    for lat, cap in ((89.9, 90.0), (-89.9, -90.0)):
        geometry = ellipse_feature(lat, 45.0, e, 64)["geometry"]
        assert geometry["type"] == "Polygon"
        ring = geometry["coordinates"][0]
        assert ring[0] == ring[-1] and signed_area(ring) > 0
        assert [180.0, cap] in ring and [-180.0, cap] in ring
        assert all(-180.0 <= x <= 180.0 for x, _ in ring)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sigma_x_m": 0.0}, "sigma_x"),
        ({"sigma_x_m": -3.0}, "sigma_x"),
        ({"sigma_y_m": float("nan")}, "sigma_y"),
        ({"sigma_y_m": float("inf")}, "sigma_y"),
        ({"rho": 1.0}, "rho"),
        ({"rho": -1.5}, "rho"),
        ({"confidence_level": 0.0}, "confidence_level"),
        ({"confidence_level": 1.0}, "confidence_level"),
        ({"confidence_level": float("nan")}, "confidence_level"),
    ],
)
def test_bad_ellipse_input_names_the_argument(kwargs: dict, field: str) -> None:
    args = {"sigma_x_m": 10.0, "sigma_y_m": 10.0, "rho": 0.0, "confidence_level": 0.95, **kwargs}
    with pytest.raises(UncertaintyInputError) as info:
        covariance_ellipse(**args)
    assert info.value.field == field and str(info.value).startswith(field)


@pytest.mark.parametrize(
    ("lat", "lon", "points", "field"),
    [
        (91.0, 0.0, 64, "latitude"),
        (float("nan"), 0.0, 64, "latitude"),
        (0.0, float("inf"), 64, "longitude"),
        (0.0, 0.0, 3, "num_points"),
        (0.0, 0.0, 100_000, "num_points"),
    ],
)
def test_bad_geojson_input_names_the_argument(
    lat: float, lon: float, points: int, field: str
) -> None:
    with pytest.raises(UncertaintyInputError) as info:
        ellipse_feature(lat, lon, covariance_ellipse(10.0, 10.0), points)
    assert info.value.field == field


sigmas = st.floats(1e-3, 1e6, allow_nan=False, allow_infinity=False)
rhos = st.floats(-0.999_999, 0.999_999, allow_nan=False)
levels = st.floats(1e-6, 0.999_999, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(sx=sigmas, sy=sigmas, rho=rhos, p=levels)
def test_ellipse_properties(sx: float, sy: float, rho: float, p: float) -> None:
    e = covariance_ellipse(sx, sy, rho, p)
    values = [e.semi_major_m, e.semi_minor_m, e.orientation_deg, e.area_m2]
    assert all(math.isfinite(v) for v in values)
    assert e.semi_major_m >= e.semi_minor_m > 0
    assert 0.0 <= e.orientation_deg < 180.0
    assert e.area_m2 == pytest.approx(math.pi * e.semi_major_m * e.semi_minor_m, rel=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    lat=st.floats(-89.0, 89.0),
    lon=st.floats(-180.0, 180.0),
    sx=st.floats(1.0, 300_000.0),
    sy=st.floats(1.0, 300_000.0),
    rho=rhos,
)
def test_geojson_is_always_valid(lat: float, lon: float, sx: float, sy: float, rho: float) -> None:
    geometry = ellipse_feature(lat, lon, covariance_ellipse(sx, sy, rho, 0.95), 32)["geometry"]
    for ring in _ring_points(geometry):
        assert ring[0] == ring[-1] and len(ring) >= 4
        assert signed_area(ring) > 0
        assert all(-180.0 <= x <= 180.0 and -90.0 <= y <= 90.0 for x, y in ring)
        assert all(math.isfinite(x) and math.isfinite(y) for x, y in ring)
