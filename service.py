"""RF transmitter localization service (BentoML, adaptive batching).

    bentoml serve service:Localization --port 3000

The service class only wires the framework-free modules in `utils/`: decoding and validation
(`decoding`), preprocessing + ONNX (`inference`), units and ellipses (`responses`), metrics.

Batching: `/predict` and `/predict_batch` hand their validated captures to one batched
inference (`_infer_batch`: preprocessing + ONNX over the whole batch), so concurrent single
requests run as one batch. `BATCH_DISPATCH=greedy` (default) batches them in the worker without
any memory of past load, `cork` with BentoML's own dispatcher in the worker (`utils/serving/batching.py`);
`BATCH_DISPATCH=proxy` calls the batchable `infer` API through `self.to_async.infer`, BentoML's
in-process HTTP client, whose session refresh every 100 calls breaks requests in flight in
1.4.30-1.4.40 (bentoml#5540): `runner_connection` raises both refresh limits out of reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# One worker per core: BLAS (the mel matmul) must not spawn threads of its own in each worker,
# or two workers on two cores run four busy threads. Set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import anyio.to_thread  # noqa: E402
import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from utils.serving import log_filters, metrics  # noqa: E402
from utils.serving.batching import make_batcher  # noqa: E402
from utils.serving.greedy import BatchRecord, Overloaded  # noqa: E402
from utils.serving.cache import cache_key, decode_value, encode_value, make_cache  # noqa: E402
from utils.config import get_settings  # noqa: E402
from utils.asgi.json_only import JSONOnly  # noqa: E402
from utils.api.decoding import (  # noqa: E402
    check_amplitude,
    decode_capture,
    decode_iq_b64,
    decode_iq_data,
    encode_capture,
    is_verbatim,
)
from utils.geo.geojson import ellipse_feature  # noqa: E402
from utils.asgi.get_as_post import GetAsPost  # noqa: E402
from utils.model.runtime import (  # noqa: E402
    ModelLoadError,
    ModelRuntime,
    default_intra_threads,
    verify_model_files,
)
from utils.asgi.body_size_limit import BodySizeLimit  # noqa: E402
from utils.asgi.openapi_fix import OpenAPIFix, nullable_fields  # noqa: E402
from utils.dsp.preprocessing import InvalidCaptureError  # noqa: E402
from utils.model.runtime import RawPredictions  # noqa: E402
from utils.api.responses import ModelOutputError, build_predictions, utc_now  # noqa: E402
from utils.api.schemas import (  # noqa: E402
    BatchPredictionResponse,
    Ellipse,
    EllipseRequest,
    ModelInfo,
    PredictBatchRequest,
    PredictionResponse,
    PredictRequest,
)
from utils.geo.ellipse import (  # noqa: E402
    MAX_DRAWABLE_M,
    UncertaintyInputError,
    covariance_ellipse,
    drawable,
)

log = logging.getLogger("bentoml.service.localization")
log_filters.install()
settings = get_settings()
WORKERS = settings.service_workers or (os.cpu_count() or 1)
MODEL_TAG = settings.bento_model_tag or f"{settings.bento_model_name}:latest"
_NEVER = 2**31 - 1


def _preflight() -> None:
    """Refuse to start with one clear line instead of letting every worker crash and restart.

    Runs wherever service.py is imported (the serve process before it spawns workers, and
    `bentoml build`): a missing model, a missing file or a file whose sha256 differs from the
    import's is reported once and the process exits non-zero.
    """
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


def _observe_batch(record: BatchRecord) -> None:
    """Greedy batcher -> metrics: why each batch left, and each item's queue wait."""
    metrics.BATCHES.labels(record.reason).inc()
    for wait in record.waits_s:
        metrics.QUEUE_WAIT_SECONDS.observe(wait)


def overloaded(exc: Overloaded) -> JSONResponse:
    """503 with the expected wait as `Retry-After`: the client learns when to come back."""
    metrics.OVERLOADED.inc()
    return JSONResponse({"error": f"overloaded: {exc}; retry after "
                                  f"{exc.retry_after_s:.1f} s", "field": None},
                        status_code=503,
                        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})


def bad_request(message: str, status: int = 400) -> JSONResponse:
    """4xx with `{"error": ..., "field": ...}`; the field is the message's prefix."""
    field = message.split(":", 1)[0] if ":" in message else None
    return JSONResponse({"error": message, "field": field}, status_code=status)


@bentoml.service(
    name="rf_localization",
    workers=WORKERS,
    traffic={"timeout": settings.request_timeout_s},
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
        meta: dict[str, Any] = dict(stored.info.metadata)
        self.runtime = ModelRuntime(
            Path(stored.path), meta,
            intra_threads=settings.ort_intra_op_threads or default_intra_threads(WORKERS),
            inter_threads=settings.ort_inter_op_threads,
            providers=list(settings.ort_providers),
        )
        self.spec = self.runtime.spec
        self.meta = meta
        self.model_version = f"{meta.get('mlflow_version', stored.tag.version)}+" \
                             f"{self.runtime.sha256[:12]}"
        self.loaded_at = utc_now()
        self.batcher = make_batcher(
            settings.batch_dispatch, self._infer_batch, max_batch_size=settings.batch_max_size,
            max_latency_ms=settings.batch_max_latency_ms,
            wait_budget_s=settings.batch_wait_budget_s,
            queue_delay_s=settings.batch_queue_delay_ms / 1000.0, observer=_observe_batch)
        self.cache = make_cache(settings.redis_url, settings.cache_ttl_seconds,
                                settings.cache_max_entries, settings.redis_timeout_ms)
        self.ready = False
        self.runtime.warm_up()
        self.ready = True
        metrics.MODEL_INFO.labels(meta.get("registered_name", stored.tag.name),
                                  str(meta.get("mlflow_version", "")), self.runtime.sha256,
                                  self.tag).set(1)
        for warning in self.runtime.warnings:
            log.warning(warning)
        log.info("serving %s (%s) with %s, %s cache", self.tag, self.model_version,
                 self.runtime.providers, self.cache.backend)

    def __is_ready__(self) -> bool:
        """Ready once the session is loaded and the warm-up inference succeeded."""
        return self.ready

    # --- the one batched inference path --------------------------------------------------
    @bentoml.api(batchable=True, max_batch_size=settings.batch_max_size,
                 max_latency_ms=settings.batch_max_latency_ms)
    def infer(self, captures: list[str]) -> list[dict[str, Any]]:
        """Low-level batched inference on canonical captures (base64 complex64
        `[channels, samples]`); returns raw model outputs per item. An item that does not
        decode gets an `error` instead of failing the batch it shares with other requests."""
        decoded: list[np.ndarray | None] = []
        for text in captures:
            try:
                capture = decode_capture(text, self.spec.n_channels)
                check_amplitude(capture, self.spec, "capture")
                decoded.append(capture if capture.shape[1] >= self.spec.n_fft else None)
            except (ValueError, TypeError):  # InvalidCaptureError is a ValueError
                decoded.append(None)
        results = iter(self._infer_batch([c for c in decoded if c is not None]))
        return [next(results) if c is not None else {"error": "not a valid canonical capture"}
                for c in decoded]

    def _infer_batch(self, captures: list[np.ndarray]) -> list[dict[str, Any]]:
        """The one batched inference: preprocessing + ONNX over the whole batch. Both
        dispatch paths (in-process batcher, batchable `infer` API) end here."""
        if not captures:
            return []
        raw = self.runtime.predict(captures)
        metrics.BATCH_SIZE.observe(len(captures))
        metrics.MODEL_INFERENCES.inc(len(captures))
        metrics.INFERENCE_SECONDS.observe(raw.preprocess_s + raw.model_s)
        metrics.STAGE_SECONDS.labels("preprocess").observe(raw.preprocess_s)
        metrics.STAGE_SECONDS.labels("model").observe(raw.model_s)
        batch_ms = 1000.0 * (raw.preprocess_s + raw.model_s)
        return [{**item, "batch_ms": batch_ms, "batch_size": len(captures)}
                for item in raw.items()]

    # --- lifecycle -------------------------------------------------------------------------
    @bentoml.on_startup
    async def _open_cache(self) -> None:
        """Each worker builds its own Redis pool on its own event loop."""
        await self.cache.start()

    @bentoml.on_shutdown
    async def _close_cache(self) -> None:
        if self.batcher is not None:
            await self.batcher.shutdown()
        await self.cache.close()

    # --- public API -----------------------------------------------------------------------
    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, **request: Any) -> PredictionResponse:
        """Predict one transmitter position from one capture per receiver."""
        req = PredictRequest.model_construct(**request)
        started = time.perf_counter()
        try:
            if req.iq_b64 is not None:
                capture = decode_iq_b64(req.iq_b64, self.spec, settings.max_samples_per_capture)
            else:  # the heavy path: off the event loop so the batch dispatcher keeps ticking
                capture = await anyio.to_thread.run_sync(
                    decode_iq_data, req.iq_data or [], self.spec, settings.max_samples_per_capture)
        except InvalidCaptureError as exc:
            metrics.ERRORS.labels("invalid_input").inc()
            return bad_request(str(exc))  # type: ignore[return-value]
        metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
        try:
            (response,) = await self._predict_captures([capture], req, started)
        except Overloaded as exc:
            return overloaded(exc)  # type: ignore[return-value]
        except ModelOutputError as exc:
            return self._broken_model(exc, "iq_b64" if req.iq_b64 is not None  # type: ignore
                                      else "iq_data")
        metrics.PREDICTIONS.labels("predict").inc()
        metrics.WORKER_PREDICTIONS.inc()
        metrics.REQUEST_SECONDS.labels("predict").observe(time.perf_counter() - started)
        return response

    @bentoml.api(route="/predict_batch", input_spec=PredictBatchRequest)
    async def predict_batch(self, **request: Any) -> BatchPredictionResponse:
        """Predict several samples; results come back in request order."""
        req = PredictBatchRequest.model_construct(**request)
        started = time.perf_counter()
        items: list[Any] = list(req.iq_b64_samples or req.iq_samples or [])
        field = "iq_b64_samples" if req.iq_b64_samples is not None else "iq_samples"
        if len(items) > settings.max_batch_items:
            metrics.ERRORS.labels("too_many_items").inc()
            return bad_request(f"{field}: {len(items)} items, at most "  # type: ignore[return-value]
                               f"{settings.max_batch_items} per request", 413)
        try:
            captures = await anyio.to_thread.run_sync(self._decode_items, items, field)
        except InvalidCaptureError as exc:
            metrics.ERRORS.labels("invalid_input").inc()
            return bad_request(str(exc))  # type: ignore[return-value]
        metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
        try:
            predictions = await self._predict_captures(captures, req, started)
        except Overloaded as exc:
            return overloaded(exc)  # type: ignore[return-value]
        except ModelOutputError as exc:
            return self._broken_model(exc, f"{field}[{exc.index}]")  # type: ignore[return-value]
        elapsed = time.perf_counter() - started
        metrics.PREDICTIONS.labels("predict_batch").inc(len(predictions))
        metrics.WORKER_PREDICTIONS.inc(len(predictions))
        metrics.REQUEST_SECONDS.labels("predict_batch").observe(elapsed)
        return BatchPredictionResponse(
            predictions=predictions, total_time_ms=1000.0 * elapsed,
            samples_per_second=len(predictions) / elapsed if elapsed > 0 else 0.0)

    def _broken_model(self, exc: ModelOutputError, field: str) -> JSONResponse:
        """A valid input answered with outputs no model may give: the model is at fault, so
        a 5xx that names it (and the sample, so it can be reproduced), never a patched answer."""
        metrics.ERRORS.labels("model_output").inc()
        reason = str(exc).split(": ", 1)[1]
        log.error("model %s returned invalid outputs (%s) for %s", self.tag, reason, field)
        return JSONResponse({"error": f"model {self.tag} returned invalid outputs ({reason}) "
                                      f"for {field}: the model is broken, not the request",
                             "field": None}, status_code=500)

    def _decode_items(self, items: list[Any], field: str) -> list[np.ndarray]:
        """Validate every batch item; errors name `field[index]`."""
        decode = decode_iq_b64 if field == "iq_b64_samples" else decode_iq_data
        return [decode(item, self.spec, settings.max_samples_per_capture, f"{field}[{index}]")
                for index, item in enumerate(items)]

    async def _predict_captures(self, captures: list[np.ndarray],
                                req: PredictRequest | PredictBatchRequest,
                                started: float) -> list[PredictionResponse]:
        """Cache lookup, batched inference of the misses, cache fill; request order kept."""
        keys: list[str] = []
        cached: list[bytes | None] = [None] * len(captures)
        if req.cache_enabled:
            keys = [cache_key(settings.cache_key_prefix, self.runtime.sha256, c.data,
                              req.confidence_level, req.include_geojson) for c in captures]
            cached = await self.cache.get_many(keys)
        else:
            metrics.CACHE_BYPASS.inc(len(captures))
        out: list[PredictionResponse | None] = [None] * len(captures)
        for i, raw in enumerate(cached):
            if raw is None:
                continue
            try:
                out[i] = PredictionResponse(**decode_value(raw), cache_hit=True,
                                            session_id=req.session_id, timestamp=utc_now(),
                                            inference_time_ms=0.0)
            except (ValueError, TypeError):  # garbage in the cache: a miss, and counted
                metrics.CACHE_ERRORS.labels("decode").inc()
        misses = [i for i, r in enumerate(out) if r is None]
        if req.cache_enabled:
            metrics.CACHE_HITS.inc(len(captures) - len(misses))
            metrics.CACHE_MISSES.inc(len(misses))
        if misses:
            if self.batcher is not None:
                results = list(await asyncio.gather(
                    *(self.batcher.submit(captures[i]) for i in misses)))
            else:
                verbatim = getattr(req, "iq_b64", None)
                payload = [verbatim if verbatim and len(captures) == 1 and
                           is_verbatim(captures[0], verbatim) else encode_capture(captures[i])
                           for i in misses]
                results = await self.to_async.infer(payload)
            try:
                fresh = self._responses(results, req, started)
            except ModelOutputError as exc:  # attribute it to the request's own index
                raise ModelOutputError(misses[exc.index], str(exc).split(": ", 1)[1]) from None
            for i, response in zip(misses, fresh, strict=True):
                out[i] = response
            if req.cache_enabled:  # only fixes: a no_fix answer is never served from cache
                await self.cache.set_many([(keys[i], encode_value(out[i].model_dump(mode="json")))
                                           for i in misses
                                           if out[i] is not None and out[i].quality == "fix"])
        elapsed_ms = 1000.0 * (time.perf_counter() - started)
        final = [r for r in out if r is not None]
        for response in final:
            if response.cache_hit:
                response.inference_time_ms = elapsed_ms
        return final

    def _responses(self, results: list[dict[str, Any]],
                   req: PredictRequest | PredictBatchRequest,
                   started: float) -> list[PredictionResponse]:
        if any("error" in r for r in results):  # cannot happen for captures decoded above
            metrics.ERRORS.labels("internal").inc()
            raise RuntimeError("batched inference rejected a validated capture")
        return build_predictions(
            RawPredictions.stack(results),
            spec=self.spec,
            envelope=self.runtime.envelope,
            confidence_level=req.confidence_level,
            include_geojson=req.include_geojson,
            model_version=self.model_version,
            inference_time_ms=1000.0 * (time.perf_counter() - started),
            session_id=req.session_id,
        )

    @bentoml.api(route="/ellipse", input_spec=EllipseRequest)
    def ellipse(self, **request: Any) -> Ellipse:
        """Pure conversion: a 1-sigma covariance (metres, east/north) -> ellipse + GeoJSON."""
        req = EllipseRequest.model_construct(**request)
        try:
            params = covariance_ellipse(req.sigma_x, req.sigma_y, req.rho, req.confidence_level)
        except UncertaintyInputError as exc:
            return bad_request(str(exc))  # type: ignore[return-value]
        if not drawable(params.semi_major_m):  # name the sigma that makes it too large
            field = "sigma_x" if req.sigma_x >= req.sigma_y else "sigma_y"
            return bad_request(  # type: ignore[return-value]
                f"{field}: at confidence_level {req.confidence_level:g} the ellipse's semi-major "
                f"axis would be {params.semi_major_m / 1000:.6g} km, more than the "
                f"{MAX_DRAWABLE_M / 1000:.0f} km an ellipse can span on the ellipsoid")
        feature = ellipse_feature(req.latitude, req.longitude, params, req.num_points,
                                  {"sigma_x_m": req.sigma_x, "sigma_y_m": req.sigma_y,
                                   "rho": req.rho})
        return Ellipse(semi_major_m=params.semi_major_m, semi_minor_m=params.semi_minor_m,
                       orientation_deg=params.orientation_deg, area_m2=params.area_m2,
                       confidence_level=params.confidence_level, geojson=feature)

    @bentoml.api(route="/model/info")
    def model_info(self) -> ModelInfo:
        """The served model: registry origin, feature spec, training figures, live counters."""
        meta = self.meta
        training = meta.get("metrics") or {}
        count, avg_ms, hit_rate = metrics.service_stats()
        return ModelInfo(
            name=str(meta.get("registered_name", self.info.tag.name)),
            version=str(meta.get("mlflow_version", self.info.tag.version)),
            # SPEC §4: "stage (or alias)"
            stage=meta.get("mlflow_stage") or meta.get("mlflow_alias") or None,
            alias=meta.get("mlflow_alias") or None,
            mlflow_run_id=meta.get("mlflow_run_id") or None,
            bento_model_tag=self.tag,
            created_at=self.info.creation_time.isoformat(),
            sha256=self.runtime.sha256,
            feature_spec=self.spec.model_dump(mode="json"),
            feature_spec_source=self.runtime.spec_source,
            accuracy_meters=training.get("accuracy_meters"),
            training_samples=int(training["training_samples"])
            if "training_samples" in training else None,
            last_reloaded=self.loaded_at,
            inference_count=count,
            avg_latency_ms=avg_ms,
            cache_hit_rate=hit_rate,
            warnings=list(self.runtime.warnings),
            fix_envelope=dataclasses.asdict(self.runtime.envelope),
        )


Localization.add_asgi_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes,
                                 max_json_values=settings.max_json_values)
Localization.add_asgi_middleware(GetAsPost, paths=("/model/info",))
Localization.add_asgi_middleware(JSONOnly, paths=("/predict", "/predict_batch", "/ellipse",
                                                  "/model/info", "/infer"))
Localization.add_asgi_middleware(OpenAPIFix, nullable=nullable_fields(
    [PredictionResponse, BatchPredictionResponse, Ellipse, ModelInfo, PredictRequest,
     PredictBatchRequest, EllipseRequest]))
