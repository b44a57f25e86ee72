"""RF transmitter localization service (BentoML, adaptive batching).

    bentoml serve service:Localization --port 3000

Wiring only: the model is declared below and loaded in `__init__`; each API method hands its
request to `utils/api/pipeline.py` (decode → cache → batched inference → cache fill) and lets
`utils/api/errors.py` answer its errors. The HTTP contract is `docs/api.md`; how requests are
batched (`BATCH_DISPATCH`) is `utils/serving/batching.py` and the README's "Batching"; how a new
model version is taken up without a restart is `utils/serving/reload.py` ("Model updates").
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# One worker per core: BLAS (the mel matmul) must not spawn threads of its own in each worker,
# or two workers on two cores run four busy threads. Set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import bentoml  # noqa: E402

from utils.api import ellipse_conversion, errors  # noqa: E402
from utils.api.body_limits import RouteBodyLimits  # noqa: E402
from utils.api.iq_json import take_parsed  # noqa: E402
from utils.api.model_info import describe  # noqa: E402
from utils.api.model_reload import authorize, reload_response  # noqa: E402
from utils.api.pipeline import Pipeline, infer_canonical  # noqa: E402
from utils.api.responses import utc_now  # noqa: E402
from utils.api.sample_scene import sample_scene  # noqa: E402
from utils.api.schemas import (  # noqa: E402
    BatchPredictionResponse,
    Ellipse,
    EllipseRequest,
    ModelInfo,
    PredictBatchRequest,
    PredictionResponse,
    PredictRequest,
    ReloadRequest,
    ReloadResponse,
    SampleScene,
    SampleSceneRequest,
)
from utils.asgi import http_protocol, route_labels, stack  # noqa: E402
from utils.asgi.internal_route import internal_call  # noqa: E402
from utils.asgi.map_page import map_page  # noqa: E402
from utils.config import get_settings  # noqa: E402
from utils.model.served import ServedModel, StoredModel, load_served  # noqa: E402
from utils.serving import (  # noqa: E402
    announce,
    arrivals,
    collector,
    log_filters,
    metrics,
    model_store,
)
from utils.serving.departure import SCOPE_KEY as DEPARTURE  # noqa: E402
from utils.serving.model_control import ModelControl  # noqa: E402
from utils.serving.preflight import check_model_store  # noqa: E402
from utils.serving.reload import ModelReloader, initial_model  # noqa: E402

log = logging.getLogger("bentoml.service.localization")
log_filters.install()
settings = get_settings()
# BentoML's request metrics by route, not raw path: invented paths add no series (private class)
route_labels.install(settings.metrics_route_labels)
# the HTTP connection bounded before a request reaches the service: header size, count and
# deadline, open connections per worker, malformed HTTP in the one error shape
http_protocol.install(settings)
WORKERS = settings.service_workers or (os.cpu_count() or 1)
MODEL_TAG = settings.bento_model_tag or f"{settings.bento_model_name}:latest"
_NEVER = 2**31 - 1
START = check_model_store(MODEL_TAG)
# the workers' shared record of the model to serve: created here by the serve process
CONTROL, _ = ModelControl.for_serve_process()
CONTROL.initialize(START.tag, model_store.latest_tag(START.name))
# requests on their way to the greedy batcher: an idle batcher waits only for these
ARRIVALS = arrivals.Arrivals()
# body budget per route; /predict's follows the served model's receiver count (`_load`)
BODY_LIMITS = RouteBodyLimits(
    settings.max_request_bytes, settings.max_samples_per_capture, settings.max_predict_bytes
)


@bentoml.service(
    name="rf_localization",
    workers=WORKERS,
    traffic={"timeout": settings.request_timeout_s},
    # bentoml#5540: the in-process client's session refresh breaks requests in flight (proxy)
    runner_connection={"max_requests": _NEVER, "max_age": float(_NEVER)},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    logging={"access": {"enabled": settings.access_log}},
)
class Localization:
    """Predicts a transmitter's position and uncertainty ellipse from receiver IQ captures."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.ready = False
        self.full_collections: collector.FullCollections | None = None
        name = self.model.tag.name

        def resolve(tag: str | None) -> StoredModel:
            return model_store.stored(name, tag)

        # after a reload, a (re)started worker takes up the reloaded model, not the start one
        served, generation, error = initial_model(
            CONTROL, model_store.from_bento(self.model), resolve, self._load
        )
        self.pipeline = Pipeline.build(
            served,
            settings,
            lambda texts: internal_call(self.to_async.infer, texts),
            arrivals=ARRIVALS,
        )
        self.reloader = ModelReloader(
            self.pipeline,
            CONTROL,
            resolve=resolve,
            load=self._load,
            latest=lambda: model_store.latest_tag(name),
            expected_workers=WORKERS,
            watch_s=settings.model_watch_seconds,
            converge_timeout_s=settings.reload_wait_s,
            generation=generation,
            error=error,
        )
        self.ready = True
        metrics.initialise(served)  # every known series at 0, and the served model
        for warning in served.runtime.warnings:
            log.warning(warning)
        cache = self.pipeline.cache.backend
        log.info(
            "serving %s (%s), %s cache, %s",
            served.tag,
            served.model_version,
            cache,
            self.pipeline.batching_note(),
        )
        if bentoml.server_context.worker_index in (None, 1):  # once per server, not per worker
            announce.log_start(log, str(served.tag))

    @staticmethod
    def _load(stored: StoredModel) -> ServedModel:
        """sha256, contract, warm-up: the same checks at start and at every reload."""
        served = load_served(stored, settings, WORKERS, utc_now())
        BODY_LIMITS.set_receivers(served.runtime.spec.n_channels)
        return served

    def __is_ready__(self) -> bool:
        """Ready once the model is loaded and its warm-up inference succeeded."""
        return self.ready

    @bentoml.on_startup
    async def _start(self) -> None:
        await self.pipeline.start()
        self.reloader.start()
        # Python's garbage collector off the tail (utils/serving/collector.py)
        collector.watch()  # every collection's pause, on /metrics
        if settings.gc_freeze:
            log.info("garbage collector: %d start-up objects frozen", collector.settle())
        if settings.gc_full_max_interval_s > 0:
            collector.defer_full()
            self.full_collections = collector.FullCollections(
                lambda: ARRIVALS.total,
                lambda: ARRIVALS.pending == 0 and self.pipeline.idle(),
                max_interval_s=settings.gc_full_max_interval_s,
            )
            self.full_collections.start()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        if self.full_collections is not None:
            await self.full_collections.stop()
        await self.reloader.stop()
        await self.pipeline.close()

    @bentoml.api(
        batchable=True,
        # BentoML's dispatcher refuses 1; BATCH_MAX_SIZE=1 still holds the greedy batcher to 1
        max_batch_size=max(2, settings.batch_max_size),
        max_latency_ms=settings.batch_max_latency_ms,
    )
    def infer(self, captures: list[str]) -> list[dict[str, Any]]:
        """Low-level batched inference on canonical captures (base64 complex64
        `[channels, samples]`); raw model outputs per item (`BATCH_DISPATCH=proxy` uses it)."""
        return infer_canonical(self.pipeline.runtime_for, captures)

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, ctx: bentoml.Context, **request: Any) -> PredictionResponse:
        """Predict one transmitter position from one capture per receiver."""
        req = PredictRequest.model_construct(**request)
        started = time.perf_counter()
        try:
            scope = ctx.request.scope
            response = await self.pipeline.predict_one(
                req,
                started,
                take_parsed(scope),
                scope.get(arrivals.SCOPE_KEY),
                scope.get(DEPARTURE),
            )
        except Exception as exc:  # noqa: BLE001 - to_response re-raises what it does not know
            return self._error(ctx, exc)
        metrics.count_predictions("predict", 1, time.perf_counter() - started)
        return response

    @bentoml.api(route="/predict_batch", input_spec=PredictBatchRequest)
    async def predict_batch(self, ctx: bentoml.Context, **request: Any) -> BatchPredictionResponse:
        """Predict several samples; results come back in request order."""
        req = PredictBatchRequest.model_construct(**request)
        started = time.perf_counter()
        try:
            scope = ctx.request.scope
            predictions = await self.pipeline.predict_many(
                req,
                started,
                take_parsed(scope),
                scope.get(arrivals.SCOPE_KEY),
                scope.get(DEPARTURE),
            )
        except Exception as exc:  # noqa: BLE001 - to_response re-raises what it does not know
            return self._error(ctx, exc)
        elapsed = time.perf_counter() - started
        metrics.count_predictions("predict_batch", len(predictions), elapsed)
        return BatchPredictionResponse(
            predictions=predictions,
            total_time_ms=1000.0 * elapsed,
            samples_per_second=len(predictions) / elapsed if elapsed > 0 else 0.0,
        )

    def _error(self, ctx: bentoml.Context, exc: Exception) -> Any:
        """An API error as a response; with a `ctx` parameter BentoML takes the status from it."""
        response = errors.to_response(exc, self.pipeline.served.tag)
        ctx.response.status_code = response.status_code
        return response

    @bentoml.api(route="/ellipse", input_spec=EllipseRequest)
    def ellipse(self, **request: Any) -> Ellipse:
        """Pure conversion: a 1-sigma covariance (metres, east/north) -> ellipse + GeoJSON."""
        try:
            return ellipse_conversion.convert(EllipseRequest.model_construct(**request))
        except Exception as exc:  # noqa: BLE001 - to_response re-raises what it does not know
            return errors.to_response(exc, self.pipeline.served.tag)  # type: ignore[return-value]

    @bentoml.api(route="/model/info")
    def model_info(self) -> ModelInfo:
        """The served model: registry origin, feature spec, training figures, live counters,
        and what every worker serves."""
        return describe(self.pipeline.served, *self.reloader.workers())

    @bentoml.api(route="/sample_scene", input_spec=SampleSceneRequest)
    def sample_scene(self, **request: Any) -> SampleScene:
        """A synthetic capture set for the served model and its true transmitter (the map)."""
        seed = SampleSceneRequest.model_construct(**request).seed
        return sample_scene(self.pipeline.served.runtime.spec, seed)

    @bentoml.api(route="/model/reload", input_spec=ReloadRequest)
    async def model_reload(self, ctx: bentoml.Context, **request: Any) -> ReloadResponse:
        """Operators only (Bearer ADMIN_TOKEN): serve another stored version of the model,
        the newest import by default; every worker takes it up. Checked before it serves."""
        try:
            authorize(ctx.request.headers.get("authorization"), settings.admin_token)
            outcome = await self.reloader.reload(ReloadRequest.model_construct(**request).tag)
        except Exception as exc:  # noqa: BLE001 - to_response re-raises what it does not know
            return self._error(ctx, exc)
        return reload_response(outcome)


# the service's own ASGI layers around BentoML, outermost first (utils/asgi/stack.py)
for layer, options in stack.layers(settings, BODY_LIMITS, ARRIVALS):
    Localization.add_asgi_middleware(layer, **options)
Localization.mount_asgi_app(map_page(), path="/map")
