"""The `/ellipse` answer: a 1-sigma covariance (metres, east/north) -> ellipse + GeoJSON."""

from __future__ import annotations

from utils.api.errors import InvalidField
from utils.api.schemas import Ellipse, EllipseRequest
from utils.geo.ellipse import MAX_DRAWABLE_M, covariance_ellipse, drawable
from utils.geo.geojson import ellipse_feature


def convert(req: EllipseRequest) -> Ellipse:
    """Raises `UncertaintyInputError` or `InvalidField`, each naming the field at fault."""
    params = covariance_ellipse(req.sigma_x, req.sigma_y, req.rho, req.confidence_level)
    if not drawable(params.semi_major_m):  # name the sigma that makes it too large
        field = "sigma_x" if req.sigma_x >= req.sigma_y else "sigma_y"
        raise InvalidField(
            field,
            f"at confidence_level {req.confidence_level:g} the ellipse's semi-major "
            f"axis would be {params.semi_major_m / 1000:.6g} km, more than the "
            f"{MAX_DRAWABLE_M / 1000:.0f} km an ellipse can span on the ellipsoid",
        )
    feature = ellipse_feature(
        req.latitude,
        req.longitude,
        params,
        req.num_points,
        {"sigma_x_m": req.sigma_x, "sigma_y_m": req.sigma_y, "rho": req.rho},
    )
    return Ellipse(
        semi_major_m=params.semi_major_m,
        semi_minor_m=params.semi_minor_m,
        orientation_deg=params.orientation_deg,
        area_m2=params.area_m2,
        confidence_level=params.confidence_level,
        geojson=feature,
    )
