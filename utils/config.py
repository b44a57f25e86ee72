"""Settings for every module of the bundle, read from the environment and a `.env` file.

One `Settings` object is the single source of configuration: the import script, the demo
bootstrap, the service and the tests all read it, so a variable documented in the README means
the same thing everywhere.  Variable names carry no prefix because the most important ones
(`MLFLOW_TRACKING_URI`, `REDIS_URL`) are conventions users already set for other tools.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent

ExecutionProvider = Literal["CPUExecutionProvider", "CUDAExecutionProvider"]


class Settings(BaseSettings):
    """Every tunable of the bundle; see the configuration table in the README."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        protected_namespaces=(),
    )

    # --- model registry -------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking/registry URI. Unset: the embedded local registry.",
    )
    local_registry_dir: Path = Field(
        default=PROJECT_ROOT / "local_registry",
        description="Folder of the embedded registry (SQLite file and artifacts).",
    )
    model_name: str = Field(default="localization_model", min_length=1)
    model_stage: str | None = Field(default="Production")
    model_alias: str | None = Field(default=None)
    model_version: str | None = Field(default=None)

    # --- BentoML --------------------------------------------------------------------------
    bento_model_name: str = Field(default="localization_model", min_length=1)
    bento_model_tag: str | None = Field(
        default=None, description="BentoML model tag to serve. Unset: the newest import."
    )

    # --- model updates (README, "Model updates") --------------------------------------------
    admin_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token of POST /model/reload (at least 16 characters). "
        "Unset: the route is disabled.",
    )
    model_watch_seconds: float = Field(
        default=0.0,
        ge=0.0,
        description="Poll the BentoML store this often and take up a new import of "
        "BENTO_MODEL_NAME. 0: off.",
    )
    reload_wait_s: float = Field(
        default=30.0,
        gt=0.0,
        description="How long POST /model/reload waits for every worker to take up the model.",
    )

    # --- cache ----------------------------------------------------------------------------
    redis_url: str | None = Field(default=None, description="Unset: in-process LRU cache.")
    cache_ttl_seconds: int = Field(default=3600, gt=0)
    cache_max_entries: int = Field(default=10_000, gt=0)
    cache_key_prefix: str = Field(default="rfloc")
    cache_signing_key: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Secret (at least 16 characters) of the HMAC-SHA256 stored before each "
        "cached value, over its key and value: a value without a valid one is a miss. Unset: "
        "unsigned, so whoever can write to the Redis can make the service serve any answer "
        "that passes the checks of docs/api.md §6.",
    )
    redis_timeout_ms: int = Field(
        default=100,
        gt=0,
        description="How long a request waits for Redis, in the worker's responsive event-loop "
        "time (a CPU-starved loop's late reads do not count; 5x of wall time at most), before "
        "it goes on uncached; a failure needs no answer in max(1 s, 10x) or two late calls in a "
        "row (README, Cache and metrics).",
    )

    # --- batching and inference -----------------------------------------------------------
    batch_dispatch: Literal["greedy", "cork", "proxy"] = Field(
        default="greedy",
        description="How /predict reaches the batched inference (utils/serving/batching.py): "
        "greedy "
        "(no memory of past load), cork (BentoML's dispatcher in the worker), "
        "proxy (BentoML's batchable API over its in-process HTTP client).",
    )
    batch_max_size: int = Field(
        default=8,
        gt=0,
        description="Largest batch. With BATCH_ON_LOOP=auto a larger one can move a cheap "
        "model's batches off the event loop (utils/serving/on_loop.py).",
    )
    batch_max_latency_ms: int = Field(
        default=20_000,
        gt=0,
        description="cork/proxy only: BentoML's dispatcher answers 503 when a queued request "
        "cannot meet it.",
    )
    batch_queue_delay_ms: Annotated[float, Field(ge=0.0)] | Literal["auto"] = Field(
        default=0.0,
        description="greedy only: how long an item arriving at an idle batcher waits, at "
        "most, for requests the worker has begun (ms). 0: never; on CPU waiting did not pay "
        "even for a ResNet-18 (README, Batching on a backbone-sized model). auto: measured "
        "per model at load, half a single inference when a sample is >= 1.25x cheaper in a "
        "batch (utils/serving/queue_delay.py), for a GPU.",
    )
    batch_on_loop: Literal["auto"] | bool = Field(
        default="auto",
        description="greedy only: run each batch on the worker's event loop (true) or in a "
        "thread (false). auto: measured per model at load, holding the loop at most 10 ms: "
        "every batch on it when a full batch fits, else a lone request when one inference "
        "fits (utils/serving/on_loop.py).",
    )
    batch_wait_budget_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="greedy only: a request whose expected queue wait exceeds this share of "
        "REQUEST_TIMEOUT_S is refused at once with 503 and Retry-After.",
    )
    gc_freeze: bool = Field(
        default=True,
        description="Freeze every object alive once a worker has started, so Python's full "
        "garbage collections skip them (utils/serving/collector.py).",
    )
    gc_full_max_interval_s: float = Field(
        default=120.0,
        ge=0.0,
        description="Python's full garbage collections, which stop the event loop (200-800 "
        "ms each under load, every few seconds), run when the worker is idle, and under "
        "sustained load at most this many seconds apart. 0: the interpreter starts them "
        "itself, as by default (utils/serving/collector.py).",
    )
    ort_intra_op_threads: int = Field(default=0, ge=0, description="0: cores per worker.")
    ort_inter_op_threads: int = Field(default=1, ge=0)
    ort_providers: Annotated[list[ExecutionProvider], NoDecode] = Field(
        default_factory=lambda: ["CPUExecutionProvider"]
    )

    # --- service process --------------------------------------------------------------------
    service_workers: int = Field(default=0, ge=0, description="0: one worker per CPU core.")
    request_timeout_s: float = Field(default=60.0, gt=0)
    access_log: bool = Field(default=True, description="BentoML's per-request access log.")
    metrics_route_labels: bool = Field(
        default=True,
        description="Label BentoML's request metrics by route, so invented paths cannot add "
        "series (utils/asgi/route_labels.py); false keeps BentoML's raw-path labels.",
    )
    metrics_read_share: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="At most this share of a core goes to reading every worker's metrics for "
        "/metrics and /model/info, however many ask: concurrent requests share one read "
        "(utils/serving/metrics_snapshot.py). 1: reads back to back.",
    )

    # --- request limits -------------------------------------------------------------------
    max_samples_per_capture: int = Field(default=65_536, gt=0)
    max_batch_items: int = Field(default=100, gt=0)
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="Largest body on any route (a /predict_batch); 413 beyond, unread.",
    )
    max_predict_bytes: int = Field(
        default=0,
        ge=0,
        description="Largest /predict body. 0: what the largest valid capture needs, "
        "MAX_SAMPLES_PER_CAPTURE x receivers as compact JSON (docs/api.md §1.4).",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request body must arrive within this many seconds of its headers; "
        "408 and the connection closed otherwise.",
    )
    max_json_values: int = Field(
        default=1_048_576,
        gt=0,
        description="Most JSON numbers in one body (iq_data costs ~100 B of memory each).",
    )

    # --- memory and connections (README, "Memory and connections") -----------------------
    max_inflight_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=0,
        description="Request body bytes one worker holds at once (declared Content-Length, "
        "or as received when chunked); a request beyond it is answered 503 + Retry-After "
        "with its body unread. A request alone is always admitted. 0: off.",
    )
    connection_max_requests: int = Field(
        default=1000,
        ge=0,
        description="Requests served on one keep-alive connection before its response says "
        "`Connection: close`. 0: unbounded.",
    )
    connection_max_age_s: float = Field(
        default=2.0,
        ge=0.0,
        description="Age of a keep-alive connection after which its next response says "
        "`Connection: close`, so clients reconnect and a restarted worker takes its share. "
        "0: unbounded.",
    )
    # the HTTP connection itself, before the service sees a request (utils/asgi/http_protocol.py)
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request line and header block; 431 and the connection closed "
        "beyond, the rest unread.",
    )
    max_headers: int = Field(
        default=100, gt=0, description="Most header fields in one request; 431 beyond."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection's request line and headers must arrive within this many "
        "seconds of its opening (or of the first byte of a later request on it): 408 and the "
        "connection closed otherwise, or just closed if nothing came.",
    )
    max_connections_per_worker: int = Field(
        default=1000,
        ge=0,
        description="Connections one worker holds open; one more is answered 503 + "
        "Retry-After once its headers are in, and closed. 0: unbounded.",
    )

    @field_validator(
        "model_stage",
        "model_alias",
        "model_version",
        "mlflow_tracking_uri",
        "redis_url",
        "bento_model_tag",
        "admin_token",
        "cache_signing_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """An empty variable in a `.env` or a compose file means "not configured"."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("batch_dispatch", mode="before")
    @classmethod
    def _old_dispatch_name(cls, value: object) -> object:
        """`inprocess` was the name of the in-worker CORK dispatch before `greedy` existed."""
        return "cork" if isinstance(value, str) and value.strip() == "inprocess" else value

    @field_validator("ort_providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        """Accept `CUDAExecutionProvider,CPUExecutionProvider` as well as a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _one_selector(self) -> Settings:
        """Alias or version, when given, take precedence over the default stage."""
        if self.model_alias and self.model_version:
            raise ValueError("set at most one of MODEL_ALIAS and MODEL_VERSION")
        if self.model_alias or self.model_version:
            self.model_stage = None
        return self

    @property
    def batch_wait_budget_s(self) -> float:
        """The greedy batcher's overload threshold, derived from the request timeout."""
        return self.batch_wait_budget_share * self.request_timeout_s

    @property
    def uses_embedded_registry(self) -> bool:
        return self.mlflow_tracking_uri is None

    @property
    def embedded_tracking_uri(self) -> str:
        return f"sqlite:///{(self.local_registry_dir / 'mlflow.db').resolve()}"

    @property
    def embedded_artifact_root(self) -> Path:
        return (self.local_registry_dir / "artifacts").resolve()

    @property
    def tracking_uri(self) -> str:
        """The registry every tool talks to: the configured one or the embedded default."""
        return self.mlflow_tracking_uri or self.embedded_tracking_uri


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests build their own `Settings(...)` instead of mutating this."""
    return Settings()
