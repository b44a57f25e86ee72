"""Service metrics with `prometheus_client` (bentoml.metrics is deprecated).

BentoML runs its workers in Prometheus multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`).
`/metrics` and the figures `/model/info` reads back come from one read of every worker's
files (`SNAPSHOTS`, `utils/serving/metrics_snapshot.py`), so every worker reports
service-wide figures. `initialise` writes every known label value at 0 when a worker loads its
model: a documented series reads 0 before its first event, not "no data".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from utils.config import get_settings
from utils.serving import collector, metrics_snapshot
from utils.serving.greedy import BatchRecord, Reason

if TYPE_CHECKING:
    from utils.model.served import ServedModel

PREFIX = "rfloc"

PREDICTIONS = Counter(f"{PREFIX}_predictions", "Predictions served, by endpoint", ["endpoint"])
INFERENCE_SECONDS = Histogram(
    f"{PREFIX}_inference_seconds",
    "Preprocessing + model time per batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
STAGE_SECONDS = Histogram(
    f"{PREFIX}_stage_seconds",
    "Time spent per request or batch, by stage",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REQUEST_SECONDS = Histogram(
    f"{PREFIX}_request_seconds",
    "Handler time of prediction requests, by endpoint",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    f"{PREFIX}_batch_size",
    "Samples per batched inference",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_WAIT_SECONDS = Histogram(
    f"{PREFIX}_batch_queue_wait_seconds",
    "Time each item waited in the greedy batcher's queue before its batch started",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
BATCHES = Counter(
    f"{PREFIX}_batches",
    "Batches run by the greedy batcher, by why they left: "
    "idle (found the model idle), queued (waited behind a batch), full (more "
    "were waiting)",
    ["reason"],
)
OVERLOADED = Counter(
    f"{PREFIX}_overloaded",
    "Requests refused with 503 because their expected queue wait exceeded the wait budget",
)
INFLIGHT_REFUSED = Counter(
    f"{PREFIX}_inflight_refused",
    "Requests refused with 503 because their body would exceed the worker's in-flight "
    "body budget (MAX_INFLIGHT_BYTES)",
)
CONNECTIONS_CLOSED = Counter(
    f"{PREFIX}_connections_closed",
    "Connections the HTTP layer answered and closed itself (utils/asgi/http_protocol.py), by "
    "reason: header_bytes, header_count (431), header_timeout (408), idle (no request within "
    "HEADER_TIMEOUT_S, closed unanswered), connection_cap (503), malformed (400)",
    ["reason"],
)
CONNECTION_CLOSE_REASONS = (
    "header_bytes",
    "header_count",
    "header_timeout",
    "idle",
    "connection_cap",
    "malformed",
)
CLIENT_DISCONNECTS = Counter(
    f"{PREFIX}_client_disconnects",
    "Requests whose client went away before the answer (access log status 499, not a server "
    "error), by phase: body (while sending it), queued (body sent, left before inference, "
    "which was skipped) or response (body sent, answer not yet)",
    ["phase"],
)
MODEL_INFERENCES = Counter(f"{PREFIX}_model_inferences", "Samples run through the model")
ERRORS = Counter(f"{PREFIX}_errors", "Rejected or failed requests, by type", ["type"])
IQ_FAST_PATH = Counter(
    f"{PREFIX}_iq_json_fast_path",
    "iq_data / iq_samples bodies by what the msgspec fast path did: parsed, refused (400), "
    "or passed to the standard parser (shapes and JSON it leaves to it)",
    ["result"],
)
CACHE_HITS = Counter(f"{PREFIX}_cache_hits", "Prediction cache hits")
CACHE_MISSES = Counter(f"{PREFIX}_cache_misses", "Prediction cache misses")
CACHE_BYPASS = Counter(f"{PREFIX}_cache_bypass", "Predictions asked with cache_enabled=false")
CACHE_ERRORS = Counter(f"{PREFIX}_cache_errors", "Cache backend failures (served uncached)", ["op"])
CACHE_REJECTED = Counter(
    f"{PREFIX}_cache_rejected",
    "Cached values refused and served uncached (utils/api/cached_answers.py), by reason: size, "
    "signature (CACHE_SIGNING_KEY), json, schema, model (another model_version), options "
    "(confidence_level or GeoJSON not the key's), bounds (not an answer the model could give)",
    ["reason"],
)
CACHE_REJECT_REASONS = ("size", "signature", "json", "schema", "model", "options", "bounds")
WORKER_PREDICTIONS = Gauge(
    f"{PREFIX}_worker_predictions",
    "Predictions served by each worker process (pid label)",
    multiprocess_mode="all",
)
# the most recent write across workers wins: a worker killed while serving a model keeps its 1
# in its file, and under "max" that stale 1 outlived every later reload
MODEL_INFO = Gauge(
    f"{PREFIX}_model_info",
    "The served model (value 1)",
    ["name", "version", "sha256", "bento_tag"],
    multiprocess_mode="mostrecent",
)
GC_PAUSE_SECONDS = Histogram(
    f"{PREFIX}_gc_pause_seconds",
    "Pauses of Python's garbage collector (the event loop stops), by generation "
    "(utils/serving/collector.py)",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
MODEL_RELOADS = Counter(
    f"{PREFIX}_model_reloads",
    "Model reloads by result: success (a new model swapped in), unchanged (already served), "
    "failed (refused by its checks or missing; the old model kept serving)",
    ["result"],
)


#: Every value each labelled metric's label is known to take: `initialise` writes each series at
#: 0 when a worker loads its model. A labelled metric adds its line here.
KNOWN_LABELS: dict[MetricWrapperBase, tuple[str, ...]] = {
    PREDICTIONS: ("predict", "predict_batch"),
    REQUEST_SECONDS: ("predict", "predict_batch"),
    STAGE_SECONDS: ("decode", "preprocess", "model"),
    BATCHES: get_args(Reason),
    CLIENT_DISCONNECTS: ("body", "queued", "response"),
    ERRORS: ("invalid_input", "too_many_items", "model_output", "internal"),
    IQ_FAST_PATH: ("parsed", "refused", "passed"),
    CACHE_ERRORS: ("get", "set"),
    CACHE_REJECTED: CACHE_REJECT_REASONS,
    CONNECTIONS_CLOSED: CONNECTION_CLOSE_REASONS,
    MODEL_RELOADS: ("success", "unchanged", "failed"),
    GC_PAUSE_SECONDS: ("0", "1", "2"),
}


def initialise(served: ServedModel) -> None:
    """At load, in each worker: every known series at 0 (in multiprocess mode a series exists
    on /metrics only once its worker wrote it), and the served model's `rfloc_model_info`."""
    for metric, values in KNOWN_LABELS.items():
        for value in values:
            metric.labels(value)
    model_loaded(served)


def report_gc() -> None:
    """The garbage collector's pauses since the last report (`utils/serving/collector.py`)."""
    for generation, seconds in collector.drain():
        GC_PAUSE_SECONDS.labels(str(generation)).observe(seconds)


#: one read of every worker's metrics, shared by the /metrics and /model/info asking at once
SNAPSHOTS = metrics_snapshot.Coalesced(metrics_snapshot.take, get_settings().metrics_read_share)


def service_stats() -> tuple[int, float | None, float | None]:
    """(samples run through the model, mean /predict latency ms, cache hit rate)."""
    value = SNAPSHOTS.get().value
    inferences = int(value(f"{PREFIX}_model_inferences_total"))
    count = value(f"{PREFIX}_request_seconds_count", {"endpoint": "predict"})
    total = value(f"{PREFIX}_request_seconds_sum", {"endpoint": "predict"})
    hits, misses = value(f"{PREFIX}_cache_hits_total"), value(f"{PREFIX}_cache_misses_total")
    return (
        inferences,
        1000.0 * total / count if count else None,
        hits / (hits + misses) if hits + misses else None,
    )


def observe_batch(record: BatchRecord) -> None:
    """Greedy batcher -> metrics: why each batch left, and each item's queue wait."""
    BATCHES.labels(record.reason).inc()
    for wait in record.waits_s:
        QUEUE_WAIT_SECONDS.observe(wait)


def count_predictions(route: str, samples: int, elapsed_s: float) -> None:
    """A route answered `samples` predictions in `elapsed_s`."""
    PREDICTIONS.labels(route).inc(samples)
    WORKER_PREDICTIONS.inc(samples)
    REQUEST_SECONDS.labels(route).observe(elapsed_s)
    report_gc()


def _model_labels(served: ServedModel) -> tuple[str, str, str, str]:
    meta = served.runtime.metadata
    return (
        meta.registered_name or served.stored.name,
        meta.mlflow_version,
        served.runtime.sha256,
        served.tag,
    )


def model_loaded(served: ServedModel) -> None:
    """`rfloc_model_info`: which model this worker serves (registry name, version, sha256)."""
    MODEL_INFO.labels(*_model_labels(served)).set(1)


def model_swapped(previous: ServedModel, current: ServedModel) -> None:
    """After a reload: the old model's series drops to 0 (multiprocess gauges cannot be
    removed), the new one is 1."""
    MODEL_INFO.labels(*_model_labels(previous)).set(0)
    model_loaded(current)
