"""The service's own ASGI layers, outermost first: what a request passes through around BentoML.

One ordered list, so the order is read in one place and measured as it is served:
`service.py` adds each layer with `add_asgi_middleware` (the first added is the outermost),
and `benchmarks/asgi_layers.py` times the same stack around a stand-in app, each layer left
out in turn. Each layer is one file of this package and says why it exists.
"""

from __future__ import annotations

from typing import Any

from utils.api.request_fields import FieldCheck
from utils.api.schemas import (
    API_MODELS,
    EllipseRequest,
    PredictBatchRequest,
    PredictRequest,
    SampleSceneRequest,
)
from utils.asgi.admin_route import AdminRoutes
from utils.asgi.api_page import APIPage
from utils.asgi.arrival_count import ArrivalCount
from utils.asgi.body_deadline import BodyDeadline
from utils.asgi.body_size_limit import BodySizeLimit, Limits
from utils.asgi.client_gone import ClientGone
from utils.asgi.error_shape import ErrorShape
from utils.asgi.field_guard import FieldGuard
from utils.asgi.get_as_post import GetAsPost
from utils.asgi.inflight_budget import InflightBudget
from utils.asgi.internal_route import InternalRoutes
from utils.asgi.iq_fast_path import IQFastPath
from utils.asgi.json_only import JSONOnly
from utils.asgi.keepalive_bound import KeepAliveBound
from utils.asgi.map_page import MapRedirect
from utils.asgi.metrics_endpoint import MetricsEndpoint
from utils.asgi.openapi_fix import OpenAPIFix, nullable_fields
from utils.config import Settings
from utils.serving import metrics
from utils.serving.arrivals import Arrivals

#: a middleware class and the keyword arguments it is added with
Layer = tuple[type, dict[str, Any]]

INTERNAL = ("/infer",)
ADMIN = ("/model/reload",)
PREDICT_ROUTES = ("/predict", "/predict_batch")
JSON_ROUTES = (
    "/predict",
    "/predict_batch",
    "/ellipse",
    "/model/info",
    "/model/reload",
    "/sample_scene",
    "/infer",
)


def layers(settings: Settings, body_limits: Limits, arrivals: Arrivals) -> list[Layer]:
    """The layers in the order a request meets them (`body_limits`: bytes per route,
    `arrivals`: requests on their way to the greedy batcher)."""
    return [
        # outside the error shape: a client gone before its answer is a 499 and one INFO
        # line, not a 500; a prediction whose client left while it queued is not computed
        (ClientGone, {"watch": PREDICT_ROUTES}),
        # a keep-alive connection's term ends with `Connection: close`: a restarted worker
        # gets clients back
        (
            KeepAliveBound,
            {
                "max_requests": settings.connection_max_requests,
                "max_age_s": settings.connection_max_age_s,
            },
        ),
        # /metrics from one read of every worker's files shared by the scrapes at hand, off
        # the event loop
        (MetricsEndpoint, {"snapshots": metrics.SNAPSHOTS}),
        # every answer below, the framework's included, leaves in the one error shape
        (ErrorShape, {}),
        # /infer: the service's own calls (BATCH_DISPATCH=proxy) and operators (ADMIN_TOKEN)
        (InternalRoutes, {"paths": INTERNAL, "token": settings.admin_token}),
        # /model/reload: the token before the body is read, limited or validated
        (AdminRoutes, {"paths": ADMIN, "token": settings.admin_token}),
        (BodySizeLimit, {"limits": body_limits, "max_json_values": settings.max_json_values}),
        # per worker: bodies held at once (503 + Retry-After beyond); /infer carries a
        # predict's copy
        (InflightBudget, {"max_bytes": settings.max_inflight_bytes, "exempt": INTERNAL}),
        (BodyDeadline, {"timeout_s": settings.body_timeout_s}),
        (ArrivalCount, {"arrivals": arrivals, "paths": PREDICT_ROUTES}),
        (GetAsPost, {"paths": ("/model/info", "/sample_scene")}),
        (JSONOnly, {"paths": JSON_ROUTES}),
        # unknown keys and over-long lists refused before anything builds their values
        (FieldGuard, {"checks": field_checks(settings.max_batch_items)}),
        (
            IQFastPath,
            {
                "fields": {"/predict": "iq_data", "/predict_batch": "iq_samples"},
                "others": {"/predict": "iq_b64", "/predict_batch": "iq_b64_samples"},
            },
        ),
        (OpenAPIFix, {"nullable": nullable_fields(API_MODELS)}),
        (APIPage, {}),
        # `/map` -> `/map/` with a relative Location (the router's own takes the client's Host)
        (MapRedirect, {}),
    ]


def field_checks(max_batch_items: int) -> dict[str, FieldCheck]:
    """The request model of each route `FieldGuard` reads (`/model/reload` authenticates
    before it looks at a body), with `MAX_BATCH_ITEMS` for the batch lists."""
    batch = {"iq_samples": max_batch_items, "iq_b64_samples": max_batch_items}
    return {
        "/predict": FieldCheck.for_model("/predict", PredictRequest),
        "/predict_batch": FieldCheck.for_model("/predict_batch", PredictBatchRequest, batch),
        "/ellipse": FieldCheck.for_model("/ellipse", EllipseRequest),
        "/sample_scene": FieldCheck.for_model("/sample_scene", SampleSceneRequest),
    }
