"""RF transmitter localization service (BentoML, adaptive batching).

    bentoml serve service:Localization --port 3000

Wiring only: the model is declared below and loaded in `__init__`; each API method hands its
request to `utils/api/pipeline.py` (decode → cache → batched inference → cache fill) and lets
`utils/api/errors.py` answer its errors. The HTTP contract is `docs/api.md`; how requests are
batched (`BATCH_DISPATCH`) is `utils/serving/batching.py` and the README's "Batching".
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# One worker per core: BLAS (the mel matmul) must not spawn threads of its own in each worker,
# or two workers on two cores run four busy threads. Set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import bentoml  # noqa: E402

from utils.api import ellipse_conversion, errors, model_info  # noqa: E402
from utils.api.pipeline import (  # noqa: E402
    Pipeline,
    batcher_dispatch,
    infer_batch,
    infer_canonical,
    proxy_dispatch,
)
from utils.api.responses import utc_now  # noqa: E402
from utils.api.schemas import (  # noqa: E402
    BatchPredictionResponse,
    Ellipse,
    EllipseRequest,
    ModelInfo,
    PredictBatchRequest,
    PredictionResponse,
    PredictRequest,
)
from utils.asgi.body_size_limit import BodySizeLimit  # noqa: E402
from utils.asgi.get_as_post import GetAsPost  # noqa: E402
from utils.asgi.json_only import JSONOnly  # noqa: E402
from utils.asgi.openapi_fix import OpenAPIFix, nullable_fields  # noqa: E402
from utils.config import get_settings  # noqa: E402
from utils.model.runtime import (  # noqa: E402
    ModelLoadError,
    ModelRuntime,
    default_intra_threads,
    verify_model_files,
)
from utils.serving import log_filters, metrics  # noqa: E402
from utils.serving.batching import make_batcher  # noqa: E402
from utils.serving.cache import make_cache  # noqa: E402

log = logging.getLogger("bentoml.service.localization")
log_filters.install()
settings = get_settings()
WORKERS = settings.service_workers or (os.cpu_count() or 1)
MODEL_TAG = settings.bento_model_tag or f"{settings.bento_model_name}:latest"
_NEVER = 2**31 - 1


def _preflight() -> None:
    """Refuse to start with one clear line instead of letting every worker crash and restart
    (runs in the serve process before it spawns workers, and in `bentoml build`)."""
    try:
        stored = bentoml.models.get(MODEL_TAG)
    except bentoml.exceptions.NotFound:
        raise SystemExit(f"rf_localization: model {MODEL_TAG} is not in the BentoML model store; "
                         "import one with import_model.py or set BENTO_MODEL_TAG") from None
    try:
        verify_model_files(Path(stored.path), dict(stored.info.metadata))
    except ModelLoadError as exc:
        raise SystemExit(f"rf_localization: cannot serve {stored.tag}: {exc}") from None


_preflight()


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
        stored = self.model
        self.tag = str(stored.tag)
        self.info = stored.info
        self.ready = False
        self.runtime = ModelRuntime(
            Path(stored.path), dict(stored.info.metadata),
            intra_threads=settings.ort_intra_op_threads or default_intra_threads(WORKERS),
            inter_threads=settings.ort_inter_op_threads, providers=list(settings.ort_providers))
        meta = self.runtime.metadata
        self.model_version = f"{meta.mlflow_version or stored.tag.version}+" \
                             f"{self.runtime.sha256[:12]}"
        self.loaded_at = utc_now()
        self.batcher = make_batcher(
            settings.batch_dispatch, lambda captures: infer_batch(self.runtime, captures),
            max_batch_size=settings.batch_max_size, max_latency_ms=settings.batch_max_latency_ms,
            wait_budget_s=settings.batch_wait_budget_s,
            queue_delay_s=settings.batch_queue_delay_ms / 1000.0, observer=metrics.observe_batch)
        self.cache = make_cache(settings.redis_url, settings.cache_ttl_seconds,
                                settings.cache_max_entries, settings.redis_timeout_ms)
        dispatch = batcher_dispatch(self.batcher.submit) if self.batcher is not None \
            else proxy_dispatch(lambda texts: self.to_async.infer(texts))
        self.pipeline = Pipeline(
            self.runtime, self.cache, dispatch, model_version=self.model_version,
            cache_prefix=settings.cache_key_prefix, max_samples=settings.max_samples_per_capture,
            max_batch_items=settings.max_batch_items)
        self.runtime.warm_up()
        self.ready = True
        metrics.MODEL_INFO.labels(meta.registered_name or stored.tag.name, meta.mlflow_version,
                                  self.runtime.sha256, self.tag).set(1)
        for warning in self.runtime.warnings:
            log.warning(warning)
        log.info("serving %s (%s) with %s, %s cache", self.tag, self.model_version,
                 self.runtime.providers, self.cache.backend)

    def __is_ready__(self) -> bool:
        """Ready once the session is loaded and the warm-up inference succeeded."""
        return self.ready

    @bentoml.on_startup
    async def _open_cache(self) -> None:
        """Each worker builds its own Redis pool on its own event loop."""
        await self.cache.start()

    @bentoml.on_shutdown
    async def _close_cache(self) -> None:
        if self.batcher is not None:
            await self.batcher.shutdown()
        await self.cache.close()

    @bentoml.api(batchable=True, max_batch_size=settings.batch_max_size,
                 max_latency_ms=settings.batch_max_latency_ms)
    def infer(self, captures: list[str]) -> list[dict[str, Any]]:
        """Low-level batched inference on canonical captures (base64 complex64
        `[channels, samples]`); raw model outputs per item (`BATCH_DISPATCH=proxy` uses it)."""
        return infer_canonical(self.runtime, captures)

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, **request: Any) -> PredictionResponse:
        """Predict one transmitter position from one capture per receiver."""
        req = PredictRequest.model_construct(**request)
        started = time.perf_counter()
        try:
            capture = await self.pipeline.decode_one(req)
            metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
            field = "iq_b64" if req.iq_b64 is not None else "iq_data"
            (response,) = await self.pipeline.predict([capture], req, started, field)
        except Exception as exc:  # noqa: BLE001 - to_response re-raises what it does not know
            return errors.to_response(exc, self.tag)  # type: ignore[return-value]
        metrics.count_predictions("predict", 1, time.perf_counter() - started)
        return response

    @bentoml.api(route="/predict_batch", input_spec=PredictBatchRequest)
    async def predict_batch(self, **request: Any) -> BatchPredictionResponse:
        """Predict several samples; results come back in request order."""
        req = PredictBatchRequest.model_construct(**request)
        started = time.perf_counter()
        try:
            captures, field = await self.pipeline.decode_many(req)
            metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
            predictions = await self.pipeline.predict(captures, req, started, field)
        except Exception as exc:  # noqa: BLE001 - to_response re-raises what it does not know
            return errors.to_response(exc, self.tag)  # type: ignore[return-value]
        elapsed = time.perf_counter() - started
        metrics.count_predictions("predict_batch", len(predictions), elapsed)
        return BatchPredictionResponse(
            predictions=predictions, total_time_ms=1000.0 * elapsed,
            samples_per_second=len(predictions) / elapsed if elapsed > 0 else 0.0)

    @bentoml.api(route="/ellipse", input_spec=EllipseRequest)
    def ellipse(self, **request: Any) -> Ellipse:
        """Pure conversion: a 1-sigma covariance (metres, east/north) -> ellipse + GeoJSON."""
        try:
            return ellipse_conversion.convert(EllipseRequest.model_construct(**request))
        except Exception as exc:  # noqa: BLE001 - to_response re-raises what it does not know
            return errors.to_response(exc, self.tag)  # type: ignore[return-value]

    @bentoml.api(route="/model/info")
    def model_info(self) -> ModelInfo:
        """The served model: registry origin, feature spec, training figures, live counters."""
        return model_info.describe(
            self.runtime, tag=self.tag, tag_name=self.info.tag.name,
            tag_version=self.info.tag.version, created_at=self.info.creation_time.isoformat(),
            loaded_at=self.loaded_at)


Localization.add_asgi_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes,
                                 max_json_values=settings.max_json_values)
Localization.add_asgi_middleware(GetAsPost, paths=("/model/info",))
Localization.add_asgi_middleware(JSONOnly, paths=("/predict", "/predict_batch", "/ellipse",
                                                  "/model/info", "/infer"))
Localization.add_asgi_middleware(OpenAPIFix, nullable=nullable_fields(
    [PredictionResponse, BatchPredictionResponse, Ellipse, ModelInfo, PredictRequest,
     PredictBatchRequest, EllipseRequest]))
