"""Request and response models of the HTTP API (docs/api.md §2): field names are the contract.

`iq_data` is validated as a plain JSON list and converted by numpy (`utils.api.decoding`): letting
pydantic walk tens of thousands of `[I, Q]` pairs through a union of nested list types costs
more than the model itself.  Its OpenAPI schema still states the exact shape.

Request models are strict (`StrictRequest`): a JSON API whose contract lists types takes
those types, so `"0.5"`, `"yes"`, `0` or `true` are refused where a number or a boolean is
due (`/ellipse` read `{"latitude": true}` as latitude 1). A JSON integer is still a number
(latitude `45`). A number beyond what a float holds (`1e999`, `10**1000`) or NaN is refused
with the bounds the field takes, not as "not finite".
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from utils.geo.ellipse import (
    MAX_DRAWABLE_M,
    MAX_POINTS,
    MIN_POINTS,
    MIN_SIGMA_M,
    confidence_scale,
)

_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_CAPTURE = {"type": "array", "items": _PAIR, "description": "one receiver: [[I, Q], ...]"}
_AMPLITUDE = (
    "Samples are in full-scale units (full scale 1.0); every value must be finite and "
    "at most 1e6 in magnitude (120 dB above full scale, beyond any receiver): larger "
    "values are refused with 400 naming the field."
)
IQ_DATA_SCHEMA: dict[str, Any] = {
    "description": "IQ as [[I, Q], ...] (one receiver) or [[[I, Q], ...], ...] (one capture "
    "per receiver, in the feature spec's receiver order). " + _AMPLITUDE,
    "oneOf": [_CAPTURE, {"type": "array", "items": _CAPTURE}],
}

IQData = Annotated[list[Any], WithJsonSchema(IQ_DATA_SCHEMA)]
IQBase64 = Annotated[
    str,
    Field(
        min_length=1,
        description="base64 of little-endian complex64 samples, shape [channels, samples] "
        "row-major. " + _AMPLITUDE,
    ),
]
Confidence = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def bounds(metadata: list[Any]) -> str:
    """`>= -90 and <= 90`: what a field's constraints admit, for its error messages."""
    said = [
        f"{sign} {getattr(m, attr):g}"
        for m in metadata
        for kind, attr, sign in _BOUNDS
        if isinstance(m, kind)
    ]
    return " and ".join(said)


class StrictRequest(BaseModel):
    """A request body: its fields only, each of its own JSON type (no strings for numbers,
    no numbers for booleans)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _finite_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A float field given NaN or a number no float holds: say so with its bounds."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        field = cls.model_fields.get(info.field_name or "")
        if field is None or field.annotation is not float:
            return value
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float range (10**1000)
            finite = False
        if finite:
            return value
        said = bounds(field.metadata)
        raise ValueError(
            "must be a finite number" + (f" {said}" if said else "") + ", got NaN, an "
            "infinity or a number beyond the float range (±1.8e308)"
        )


class PredictOptions(StrictRequest):
    """Options shared by `/predict` and `/predict_batch`."""

    session_id: str | None = Field(default=None, max_length=256, description="echoed back")
    cache_enabled: bool = True
    confidence_level: Confidence = Field(default=0.95, description="probability of the ellipse")
    include_geojson: bool = False


class PredictRequest(PredictOptions):
    iq_data: IQData | None = None
    iq_b64: IQBase64 | None = None

    @model_validator(mode="after")
    def _exactly_one_encoding(self) -> PredictRequest:
        if (self.iq_data is None) == (self.iq_b64 is None):
            raise ValueError("give exactly one of iq_data and iq_b64")
        return self


class PredictBatchRequest(PredictOptions):
    iq_samples: list[IQData] | None = Field(default=None, min_length=1)
    iq_b64_samples: list[IQBase64] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one_encoding(self) -> PredictBatchRequest:
        if (self.iq_samples is None) == (self.iq_b64_samples is None):
            raise ValueError("give exactly one of iq_samples and iq_b64_samples")
        return self


class Position(BaseModel):
    latitude: float
    longitude: float


class Uncertainty(BaseModel):
    sigma_x: float = Field(description="1-sigma east error, metres")
    sigma_y: float = Field(description="1-sigma north error, metres")
    rho: float = Field(description="correlation of the east and north errors")
    theta: float = Field(
        description="bearing of the semi-major axis, degrees clockwise from true north, in [0, 180)"
    )
    confidence_interval: float = Field(
        description="probability held by the 1-sigma ellipse (0.393)"
    )


class Ellipse(BaseModel):
    semi_major_m: float
    semi_minor_m: float
    orientation_deg: float
    area_m2: float
    confidence_level: float
    geojson: dict[str, Any] | None = Field(default=None, description="RFC 7946 Feature")


class PredictionResponse(BaseModel):
    position: Position
    uncertainty: Uncertainty
    ellipse: Ellipse
    quality: Literal["fix", "no_fix"] = Field(
        description='"fix" when the answer is within what the model was trained to give; '
        '"no_fix" when it is not (too few receivers hear a signal, a level '
        "beyond training, a position outside the model's region, an uncertainty "
        "beyond what the model produces): the numbers are then the model's raw "
        "answer, not a position. A no_fix answer is never cached."
    )
    warnings: list[str] = Field(
        default_factory=list, description="why the answer is not a fix, or what to be aware of"
    )
    confidence: float | None = Field(
        description="model confidence in [0, 1], null when the model has no confidence output"
    )
    model_version: str
    inference_time_ms: float
    cache_hit: bool
    session_id: str | None
    timestamp: str = Field(description="ISO 8601, UTC")


class BatchPredictionResponse(BaseModel):
    predictions: list[PredictionResponse]
    total_time_ms: float
    samples_per_second: float


_DRAWABLE = (
    f"The ellipse at `confidence_level` must fit on the ellipsoid: its semi-major "
    f"axis may not exceed {MAX_DRAWABLE_M:g} m (at 0.95, a 1-sigma of at most "
    f"{MAX_DRAWABLE_M / float(confidence_scale(0.95)):.3g} m); a larger one is refused "
    "naming the larger sigma."
)


class EllipseRequest(StrictRequest):
    latitude: float = Field(ge=-90.0, le=90.0, allow_inf_nan=False)
    longitude: float = Field(ge=-180.0, le=180.0, allow_inf_nan=False)
    sigma_x: float = Field(
        ge=MIN_SIGMA_M,
        le=MAX_DRAWABLE_M,
        allow_inf_nan=False,
        description="1-sigma east, metres. " + _DRAWABLE,
    )
    sigma_y: float = Field(
        ge=MIN_SIGMA_M,
        le=MAX_DRAWABLE_M,
        allow_inf_nan=False,
        description="1-sigma north, metres. " + _DRAWABLE,
    )
    rho: float = Field(default=0.0, gt=-1.0, lt=1.0, allow_inf_nan=False)
    confidence_level: Confidence = 0.95
    num_points: int = Field(default=64, ge=MIN_POINTS, le=MAX_POINTS)


class WorkerModel(BaseModel):
    """What one worker process serves (docs/api.md §8.4)."""

    pid: int
    bento_model_tag: str
    model_version: str
    loaded_at: str
    error: str | None = Field(
        default=None, description="why this worker refused the last reload it tried, if it did"
    )


class RuntimeInfo(BaseModel):
    """The answering worker's ONNX Runtime session, as it runs (docs/api.md §2.4)."""

    providers: list[str] = Field(
        description="execution providers of the session in priority order: ORT_PROVIDERS "
        "without those this onnxruntime build lacks, CPUExecutionProvider last"
    )
    intra_op_threads: int = Field(description="read back from the session (ORT_INTRA_OP_THREADS)")
    inter_op_threads: int = Field(description="read back from the session (ORT_INTER_OP_THREADS)")


class ModelInfo(BaseModel):
    name: str
    version: str
    stage: str | None
    alias: str | None
    mlflow_run_id: str | None
    bento_model_tag: str
    created_at: str
    sha256: str
    feature_spec: dict[str, Any]
    feature_spec_source: str
    accuracy_meters: float | None
    training_samples: int | None
    model_version: str = Field(description="as in every prediction: registry version + sha256")
    last_reloaded: str = Field(description="when the answering worker loaded this model")
    workers: list[WorkerModel] = Field(description="what every live worker serves")
    workers_agree: bool = Field(
        description="every worker serves the same model (`error` tells a refused reload)"
    )
    inference_count: int
    avg_latency_ms: float | None
    cache_hit_rate: float | None
    warnings: list[str]
    runtime: RuntimeInfo = Field(description="the answering worker's ONNX Runtime session")
    fix_envelope: dict[str, Any] = Field(
        description="what a prediction must stay within to be a fix (`quality`): region, "
        "largest 1-sigma axis, strongest level, receivers that must hear a signal; "
        "`source` says whether it comes from the training metrics or the receivers"
    )


class ReloadRequest(StrictRequest):
    tag: str | None = Field(
        default=None,
        max_length=200,
        description="A version of BENTO_MODEL_NAME to serve, `name:version` or `version` (a "
        "rollback); omitted: the newest import.",
    )


class ReloadResponse(BaseModel):
    result: Literal["reloaded", "unchanged"]
    bento_model_tag: str
    model_version: str
    previous_bento_model_tag: str
    previous_model_version: str
    generation: int = Field(description="reload counter of this service process")
    workers: list[WorkerModel]
    workers_agree: bool


class SampleSceneRequest(StrictRequest):
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**31,
        description="the same seed gives the same scene; omitted: a new one",
    )


class SampleScene(BaseModel):
    iq_b64: str = Field(description="the capture set, as `/predict` takes it")
    transmitter: Position = Field(description="where the synthetic transmitter is")
    seed: int


#: Every model the API documents (the OpenAPI fix marks their optional fields nullable).
API_MODELS: list[type[BaseModel]] = [
    PredictionResponse,
    BatchPredictionResponse,
    Ellipse,
    ModelInfo,
    WorkerModel,
    RuntimeInfo,
    ReloadRequest,
    ReloadResponse,
    SampleSceneRequest,
    SampleScene,
    PredictRequest,
    PredictBatchRequest,
    EllipseRequest,
]
