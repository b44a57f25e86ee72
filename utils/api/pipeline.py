"""One request's way through the service: decode → cache lookup → batched inference → cache fill.

The service's API methods only call these; everything here is testable with a fake dispatch
and either cache backend. Errors leave as `InvalidField` / `BrokenModel` / `Overloaded`, which
`utils/api/errors.py` turns into responses.

A reload swaps the served model while requests are in flight (`utils/serving/reload.py`): each
request takes the model serving when it starts (`self.served`) and keeps it to its end:
decoding, cache key, inference and response all use that one. Batch items carry their model,
and a batch that holds items of two models runs as two inferences, each on one model.

A request whose client has gone (`utils/serving/departure.py`) is not dispatched, and leaves
the greedy batcher's queue unrun: `ClientLeft` leaves instead of an answer. Its client is
watched from its start when it arrives to a busy batcher, else from when it has to queue.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio.to_thread
import numpy as np

from utils.api.cached_answers import CachedAnswers
from utils.api.decoding import (
    check_amplitude,
    decode_capture,
    decode_iq_b64,
    decode_iq_data,
    encode_capture,
    is_verbatim,
)
from utils.api.errors import BrokenModel, InvalidField
from utils.api.iq_json import ParsedIQ
from utils.api.responses import ModelOutputError, build_predictions
from utils.api.schemas import PredictBatchRequest, PredictionResponse, PredictRequest
from utils.config import Settings
from utils.model.runtime import ModelRuntime, RawPredictions
from utils.model.served import ServedModel
from utils.serving import metrics
from utils.serving.arrivals import Arrivals, Ticket
from utils.serving.batching import Batcher, Greedy, make_batcher
from utils.serving.cache import (
    PredictionCache,
    cache_key,
    make_cache,
)
from utils.serving.departure import Departure, check
from utils.serving.on_loop import MAX_LOOP_BATCH_S, batches_on_loop, full_batch_s, where
from utils.serving.queue_delay import queue_delay_s

#: Batched inference over canonical captures on the given model, one raw result dict per
#: capture, same order (the `str` is an `iq_b64` text the proxy may forward as sent; the
#: `Departure` drops the captures from the greedy batcher's queue if the client leaves).
Dispatch = Callable[
    [ServedModel, list[np.ndarray], str | None, Departure | None],
    Awaitable[list[dict[str, Any]]],
]
#: A batch item of the in-worker batchers: the capture and the model it must run on.
Job = tuple[ModelRuntime, np.ndarray]
#: Separates the model key from the capture in a pinned `infer` text (not in base64's alphabet).
PIN = ":"


def infer_batch(runtime: ModelRuntime, captures: list[np.ndarray]) -> list[dict[str, Any]]:
    """The one batched inference (preprocessing + ONNX over the whole batch) and its metrics;
    every dispatch path ends here, in a worker thread."""
    if not captures:
        return []
    raw = runtime.predict(captures, validated=True)
    metrics.BATCH_SIZE.observe(len(captures))
    metrics.MODEL_INFERENCES.inc(len(captures))
    metrics.INFERENCE_SECONDS.observe(raw.preprocess_s + raw.model_s)
    metrics.STAGE_SECONDS.labels("preprocess").observe(raw.preprocess_s)
    metrics.STAGE_SECONDS.labels("model").observe(raw.model_s)
    batch_ms = 1000.0 * (raw.preprocess_s + raw.model_s)
    return [{**item, "batch_ms": batch_ms, "batch_size": len(captures)} for item in raw.items()]


def infer_jobs(jobs: list[Job]) -> list[dict[str, Any]]:
    """The in-worker batchers' batch function: one inference per model in the batch (one,
    except while a reload swaps models), results in item order."""
    groups: dict[int, list[int]] = {}
    for i, (runtime, _) in enumerate(jobs):
        groups.setdefault(id(runtime), []).append(i)
    results: list[dict[str, Any]] = [{}] * len(jobs)
    for indices in groups.values():
        runtime = jobs[indices[0]][0]
        for i, result in zip(
            indices, infer_batch(runtime, [jobs[i][1] for i in indices]), strict=True
        ):
            results[i] = result
    return results


def infer_canonical(
    runtime_for: Callable[[str | None], ModelRuntime | None], texts: list[str]
) -> list[dict[str, Any]]:
    """The batchable `infer` API: base64 canonical captures in, each optionally pinned to a
    model as `<model key>:<base64>` (the proxy dispatch does, so a request keeps its model
    across a reload); unpinned ones run on the serving model. An item that does not decode, or
    names a model no longer loaded, gets an `error` instead of failing the batch it shares."""
    jobs: list[Job] = []
    slots: list[int | str] = []
    for text in texts:
        key, _, body = text.rpartition(PIN)
        runtime = runtime_for(key or None)
        if runtime is None:
            slots.append(f"model {key} is not loaded in this worker")
            continue
        spec = runtime.spec
        try:
            capture = decode_capture(body, spec.n_channels)
            check_amplitude(capture, spec, "capture")
        except (ValueError, TypeError):  # InvalidCaptureError is a ValueError
            capture = None
        if capture is None or capture.shape[1] < spec.n_fft:
            slots.append("not a valid canonical capture")
            continue
        slots.append(len(jobs))
        jobs.append((runtime, capture))
    results = infer_jobs(jobs)
    return [results[s] if isinstance(s, int) else {"error": s} for s in slots]


class Pipeline:
    """Decode, cache and dispatch for `/predict` and `/predict_batch` of one worker."""

    def __init__(
        self,
        served: ServedModel,
        cache: PredictionCache,
        dispatch: Dispatch,
        *,
        cache_prefix: str,
        max_samples: int,
        max_batch_items: int,
        batcher: Batcher | None = None,
        queue_delay_setting: float | Literal["auto"] = 0.0,
        on_loop_setting: bool | Literal["auto"] = False,
        signing_key: bytes | None = None,
    ) -> None:
        self.served = served
        # models a request in flight may still pin (proxy dispatch); gone with their last user
        self._live: weakref.WeakValueDictionary[str, ModelRuntime] = weakref.WeakValueDictionary(
            {served.key: served.runtime}
        )
        self.cache = cache
        self.answers = CachedAnswers(signing_key)  # what a cached value must be to be served
        self.dispatch = dispatch
        self.cache_prefix = cache_prefix
        self.max_samples = max_samples
        self.max_batch_items = max_batch_items
        self.batcher = batcher
        self.queue_delay_setting = queue_delay_setting
        self.on_loop_setting = on_loop_setting

    def swap(self, new: ServedModel) -> ServedModel:
        """Serve `new` from the next request on; requests in flight keep theirs. The greedy
        batcher's `auto` wait follows the new model's batch profile."""
        previous, self.served = self.served, new
        self._live[new.key] = new.runtime
        if isinstance(self.batcher, Greedy):
            self.batcher.set_queue_delay(queue_delay_s(self.queue_delay_setting, new.batch_profile))
            self.batcher.set_on_loop(
                batches_on_loop(
                    self.on_loop_setting, new.batch_profile, self.batcher.max_batch_size
                )
            )
        return previous

    def batching_note(self) -> str:
        """For the start-up log: the greedy wait in force and the measurement behind it."""
        if not isinstance(self.batcher, Greedy):
            return "batching by BentoML's dispatcher"
        note = f"queue delay {1000 * self.batcher.queue_delay_s:.1f} ms"
        profile = self.served.batch_profile
        if profile is not None:
            note += (
                f" (auto: {1000 * profile.single_s:.1f} ms alone, {profile.gain:.2f}x cheaper "
                f"per sample at batch {profile.batch})"
            )
        size = self.batcher.max_batch_size
        note += f", {where(self.batcher.on_loop, size)}"
        if profile is not None and self.on_loop_setting == "auto":
            full = full_batch_s(profile, size)
            note += (
                f" (auto: {1000 * profile.single_s:.1f} ms alone, {1000 * full:.1f} ms for a "
                f"batch of {size}, the loop held up to {1000 * MAX_LOOP_BATCH_S:.0f} ms)"
            )
        return note

    def idle(self) -> bool:
        """No prediction queued or running in the greedy batcher (the other dispatchers do
        not say: never idle, as far as they are concerned)."""
        return isinstance(self.batcher, Greedy) and not self.batcher.busy

    def runtime_for(self, key: str | None) -> ModelRuntime | None:
        """The model a pinned `infer` item names (None: the serving one)."""
        return self.served.runtime if key is None else self._live.get(key)

    @classmethod
    def build(
        cls,
        served: ServedModel,
        settings: Settings,
        infer_api: Callable[[list[str]], Awaitable[list[dict[str, Any]]]],
        arrivals: Arrivals | None = None,
    ) -> Pipeline:
        """The worker's pipeline as configured: its batcher (`BATCH_DISPATCH`; none for
        `proxy`, which goes through the batchable `infer_api`) and its cache."""
        batcher = make_batcher(
            settings.batch_dispatch,
            infer_jobs,
            max_batch_size=settings.batch_max_size,
            max_latency_ms=settings.batch_max_latency_ms,
            wait_budget_s=settings.batch_wait_budget_s,
            queue_delay_s=queue_delay_s(settings.batch_queue_delay_ms, served.batch_profile),
            observer=metrics.observe_batch,
            arrivals=arrivals,
            on_loop=batches_on_loop(
                settings.batch_on_loop, served.batch_profile, settings.batch_max_size
            ),
        )
        cache = make_cache(
            settings.redis_url,
            settings.cache_ttl_seconds,
            settings.cache_max_entries,
            settings.redis_timeout_ms,
        )
        dispatch = batcher_dispatch(batcher.submit) if batcher else proxy_dispatch(infer_api)
        return cls(
            served,
            cache,
            dispatch,
            cache_prefix=settings.cache_key_prefix,
            max_samples=settings.max_samples_per_capture,
            max_batch_items=settings.max_batch_items,
            batcher=batcher,
            queue_delay_setting=settings.batch_queue_delay_ms,
            on_loop_setting=settings.batch_on_loop,
            signing_key=settings.cache_signing_key.get_secret_value().encode()
            if settings.cache_signing_key
            else None,
        )

    async def start(self) -> None:
        """On the worker's own event loop: the Redis pool belongs to it."""
        await self.cache.start()

    async def close(self) -> None:
        """Run what is queued, then close the cache."""
        if self.batcher is not None:
            await self.batcher.shutdown()
        await self.cache.close()

    # --- decoding ----------------------------------------------------------------------------
    async def decode_one(
        self, served: ServedModel, req: PredictRequest, parsed: ParsedIQ | None = None
    ) -> np.ndarray:
        spec = served.runtime.spec
        if req.iq_b64 is not None:
            return decode_iq_b64(req.iq_b64, spec, self.max_samples)
        if parsed is not None:  # parsed from the bytes already (utils/asgi/iq_fast_path.py)
            return decode_iq_data(parsed.captures[0], spec, self.max_samples)
        # the slow path: off the event loop so the batcher keeps dispatching
        return await anyio.to_thread.run_sync(
            decode_iq_data, req.iq_data or [], spec, self.max_samples
        )

    async def decode_many(
        self, served: ServedModel, req: PredictBatchRequest, parsed: ParsedIQ | None = None
    ) -> tuple[list[np.ndarray], str]:
        items: list[Any] = list(
            req.iq_b64_samples or (parsed.captures if parsed else req.iq_samples) or []
        )
        field = "iq_b64_samples" if req.iq_b64_samples is not None else "iq_samples"
        if len(items) > self.max_batch_items:
            raise InvalidField(
                field, f"{len(items)} items, at most {self.max_batch_items} per request", status=413
            )
        decode = decode_iq_b64 if field == "iq_b64_samples" else decode_iq_data
        spec, limit = served.runtime.spec, self.max_samples

        def all_items() -> list[np.ndarray]:
            return [decode(item, spec, limit, f"{field}[{i}]") for i, item in enumerate(items)]

        return await anyio.to_thread.run_sync(all_items), field

    # --- prediction --------------------------------------------------------------------------
    async def predict(
        self,
        served: ServedModel,
        captures: list[np.ndarray],
        req: PredictRequest | PredictBatchRequest,
        started: float,
        field: str,
        ticket: Ticket | None = None,
        departure: Departure | None = None,
    ) -> list[PredictionResponse]:
        """Cache lookup, batched inference of the misses, cache fill; request order kept.
        `field` names the request field the captures came from, for a broken-model error;
        `ticket` (`utils/serving/arrivals.py`) is closed as the misses reach the batcher;
        `departure`: misses of a client gone are not dispatched (`ClientLeft`)."""
        keys: list[str] = []
        cached: list[bytes | None] = [None] * len(captures)
        if req.cache_enabled:
            keys = [
                cache_key(
                    self.cache_prefix,
                    served.runtime.sha256,
                    c.data,
                    req.confidence_level,
                    req.include_geojson,
                )
                for c in captures
            ]
            cached = await self.cache.get_many(keys)
        else:
            metrics.CACHE_BYPASS.inc(len(captures))
        out: list[PredictionResponse | None] = [None] * len(captures)
        for i, raw in enumerate(cached):
            if raw is not None:  # a value that is not a genuine answer: a miss, counted
                out[i] = self.answers.open(keys[i], raw, served, req)
        misses = [i for i, r in enumerate(out) if r is None]
        if req.cache_enabled:
            metrics.CACHE_HITS.inc(len(captures) - len(misses))
            metrics.CACHE_MISSES.inc(len(misses))
        if misses:
            verbatim = getattr(req, "iq_b64", None) if len(captures) == 1 else None
            if ticket is not None:  # at the batcher now: no longer company on its way
                ticket.close()
            check(departure)
            results = await self.dispatch(
                served, [captures[i] for i in misses], verbatim, departure
            )
            try:
                fresh = self._responses(served, results, req, started)
            except ModelOutputError as exc:  # attribute it to the request's own index
                index = misses[exc.index]
                raise BrokenModel(
                    ModelOutputError(index, exc.reason),
                    field if isinstance(req, PredictRequest) else f"{field}[{index}]",
                ) from None
            for i, response in zip(misses, fresh, strict=True):
                out[i] = response
            if req.cache_enabled:  # only fixes: a no_fix answer is never served from cache
                await self.cache.set_many(
                    [
                        (keys[i], self.answers.seal(keys[i], out[i]))
                        for i in misses
                        if out[i] is not None and out[i].quality == "fix"
                    ]
                )
        elapsed_ms = 1000.0 * (time.perf_counter() - started)
        final = [r for r in out if r is not None]
        for response in final:
            if response.cache_hit:
                response.inference_time_ms = elapsed_ms
        return final

    async def predict_one(
        self,
        req: PredictRequest,
        started: float,
        parsed: ParsedIQ | None = None,
        ticket: Ticket | None = None,
        departure: Departure | None = None,
    ) -> PredictionResponse:
        """`/predict`: decode, then the shared path, on the model serving now."""
        served = self.served
        self._watch_if_waiting(departure)
        capture = await self.decode_one(served, req, parsed)
        metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
        field = "iq_b64" if req.iq_b64 is not None else "iq_data"
        (response,) = await self.predict(served, [capture], req, started, field, ticket, departure)
        return response

    async def predict_many(
        self,
        req: PredictBatchRequest,
        started: float,
        parsed: ParsedIQ | None = None,
        ticket: Ticket | None = None,
        departure: Departure | None = None,
    ) -> list[PredictionResponse]:
        """`/predict_batch`: decode every item (errors name `field[i]`), then the shared path."""
        served = self.served
        self._watch_if_waiting(departure)
        captures, field = await self.decode_many(served, req, parsed)
        metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
        return await self.predict(served, captures, req, started, field, ticket, departure)

    def _watch_if_waiting(self, departure: Departure | None) -> None:
        """A request that arrives while the greedy batcher is busy will wait: its client is
        watched from now on, so that leaving while it decodes or looks up the cache is seen
        before dispatch (otherwise the batcher starts the watch if it has to queue)."""
        if departure is not None and isinstance(self.batcher, Greedy) and self.batcher.busy:
            departure.watch()

    def _responses(
        self,
        served: ServedModel,
        results: list[dict[str, Any]],
        req: PredictRequest | PredictBatchRequest,
        started: float,
    ) -> list[PredictionResponse]:
        if any("error" in r for r in results):  # cannot happen for captures decoded above
            metrics.ERRORS.labels("internal").inc()
            raise RuntimeError("batched inference rejected a validated capture")
        return build_predictions(
            RawPredictions.stack(results),
            spec=served.runtime.spec,
            envelope=served.runtime.envelope,
            confidence_level=req.confidence_level,
            include_geojson=req.include_geojson,
            model_version=served.model_version,
            inference_time_ms=1000.0 * (time.perf_counter() - started),
            session_id=req.session_id,
        )


def batcher_dispatch(
    submit: Callable[[Job, Departure | None], Awaitable[dict[str, Any]]],
) -> Dispatch:
    """Dispatch through an in-worker batcher (greedy or CORK): one submit per capture."""

    async def dispatch(
        served: ServedModel,
        captures: list[np.ndarray],
        _verbatim: str | None,
        departure: Departure | None,
    ) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(*(submit((served.runtime, c), departure) for c in captures))
        )

    return dispatch


def proxy_dispatch(infer: Callable[[list[str]], Awaitable[list[dict[str, Any]]]]) -> Dispatch:
    """Dispatch through the batchable `infer` API: captures travel as base64, pinned to the
    request's model; a single `iq_b64` capture that is already canonical is forwarded as sent,
    not re-encoded."""

    async def dispatch(
        served: ServedModel,
        captures: list[np.ndarray],
        verbatim: str | None,
        _departure: Departure | None,
    ) -> list[dict[str, Any]]:
        pin = served.key + PIN
        if verbatim and len(captures) == 1 and is_verbatim(captures[0], verbatim):
            return list(await infer([pin + verbatim]))
        return list(await infer([pin + encode_capture(c) for c in captures]))

    return dispatch
