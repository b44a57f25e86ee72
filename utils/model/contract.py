"""The model contract of docs/api.md §8, checked on a model folder before anything trusts it.

Used by `import_model.py` before a model enters the BentoML store (with the full `onnx.checker`
pass) and by the service when it loads one (onnxruntime checks only: the serving image carries
no `onnx` package).  Two failure kinds, because operators act on them differently:
`CorruptModelError` (the bytes are not a readable ONNX model: re-upload it) and
`ContractViolation` (a readable model with the wrong interface: fix the training/export).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, ValidationError

from utils.dsp.feature_spec import (
    DEFAULT_RECEIVERS,
    FEATURE_SPEC_FILENAME,
    FeatureSpec,
    Receiver,
    default_feature_spec,
)
from utils.dsp.preprocessing import preprocess
from utils.dsp.synthetic import generate_scenes

log = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"
INPUT_NAME = "mel_spectrogram"
POSITIONS = "positions"
UNCERTAINTIES = "uncertainties"
CONFIDENCE = "confidence"


class CorruptModelError(Exception):
    """The model file is missing, unreadable or not valid ONNX."""


class ContractViolation(Exception):
    """The model loads but its interface or outputs break docs/api.md §8."""


class ModelContract(BaseModel):
    """What validation established about a model folder."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    input_shape: tuple[int | str, ...]
    uncertainty_width: int
    has_confidence: bool
    feature_spec: FeatureSpec
    feature_spec_source: str  # "artifact" or "defaults"
    warnings: tuple[str, ...] = ()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _session(model_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        raise CorruptModelError(
            f"onnxruntime cannot load {MODEL_FILENAME}: {str(exc).splitlines()[0][:300]}"
        ) from exc


def _onnx_check(model_path: Path) -> None:
    """Full structural check, external-data files included (import time only)."""
    import onnx

    try:
        onnx.checker.check_model(str(model_path), full_check=False)
    except Exception as exc:
        raise CorruptModelError(
            f"onnx.checker rejects {MODEL_FILENAME}: {str(exc).splitlines()[0][:300]}"
        ) from exc


def load_feature_spec(folder: Path, channels: int | None) -> tuple[FeatureSpec, str, list[str]]:
    """The folder's `feature_spec.json`, or documented defaults sized to the model, with why."""
    path = folder / FEATURE_SPEC_FILENAME
    if path.exists():
        try:
            return FeatureSpec.model_validate(json.loads(path.read_text("utf-8"))), "artifact", []
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0][:300]
            raise ContractViolation(f"{FEATURE_SPEC_FILENAME} is invalid: {first}") from exc
    spec = default_feature_spec()
    if channels is not None and channels != spec.n_channels:
        receivers = (
            tuple(DEFAULT_RECEIVERS[:channels])
            if channels <= len(DEFAULT_RECEIVERS)
            else tuple(
                Receiver(name=f"receiver-{i}", latitude=0.0, longitude=0.0) for i in range(channels)
            )
        )
        spec = FeatureSpec.model_validate({**spec.model_dump(), "receivers": receivers})
    warning = (
        f"no {FEATURE_SPEC_FILENAME} beside the model: serving with the documented default "
        f"feature spec ({spec.n_channels} receivers: "
        f"{', '.join(r.name for r in spec.receivers)}); predictions are only meaningful "
        "if the model was trained with these defaults"
    )
    log.warning(warning)
    return spec, "defaults", [warning]


def _dims(shape: list[object]) -> tuple[int | str, ...]:
    return tuple(d if isinstance(d, int) else str(d) for d in shape)


def validate_model_folder(
    folder: Path, *, full_check: bool = True, sha256: str | None = None
) -> ModelContract:
    """Check a model folder against the contract (docs/api.md §8); raise `CorruptModelError`
    or `ContractViolation`. `sha256`: the file's hash when the caller has just computed it
    (a large model takes seconds to hash)."""
    model_path = folder / MODEL_FILENAME
    if not model_path.is_file():
        raise CorruptModelError(f"{MODEL_FILENAME} is missing from the model folder")
    if full_check:
        _onnx_check(model_path)
    session = _session(model_path)

    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        got = ", ".join(f"'{i.name}'" for i in inputs) or "none"
        raise ContractViolation(f"input: expected exactly one input '{INPUT_NAME}', got {got}")
    inp = inputs[0]
    shape = _dims(inp.shape)
    if inp.type != "tensor(float)":
        raise ContractViolation(f"input '{INPUT_NAME}': expected float32, got {inp.type}")
    if len(shape) != 4:
        raise ContractViolation(
            f"input '{INPUT_NAME}': expected rank 4 [batch, channels, n_mels, "
            f"frames], got shape {list(shape)}"
        )
    if isinstance(shape[0], int):
        raise ContractViolation(
            f"input '{INPUT_NAME}': the batch axis must be dynamic, it is fixed at {shape[0]}"
        )
    if not all(isinstance(d, int) for d in shape[1:]):
        raise ContractViolation(
            f"input '{INPUT_NAME}': channels, n_mels and frames must be fixed, got {list(shape)}"
        )

    outputs = {o.name: o for o in session.get_outputs()}
    widths: dict[str, tuple[int, ...]] = {POSITIONS: (2,), UNCERTAINTIES: (2, 3)}
    for name, allowed in widths.items():
        if name not in outputs:
            raise ContractViolation(f"output '{name}' is missing (outputs: {sorted(outputs)})")
        out = outputs[name]
        dims = _dims(out.shape)
        if out.type != "tensor(float)":
            raise ContractViolation(f"output '{name}': expected float32, got {out.type}")
        if len(dims) != 2 or (isinstance(dims[1], int) and dims[1] not in allowed):
            want = " or ".join(f"[batch, {w}]" for w in allowed)
            raise ContractViolation(f"output '{name}': expected {want}, got {list(dims)}")
    has_confidence = CONFIDENCE in outputs

    channels = int(shape[1])  # type: ignore[arg-type]
    spec, source, warnings = load_feature_spec(folder, channels)
    if tuple(shape[1:]) != spec.input_shape:
        raise ContractViolation(
            f"input '{INPUT_NAME}': shape {list(shape[1:])} does not match the feature spec "
            f"{list(spec.input_shape)} (channels = receivers, n_mels, frames)"
        )

    width = _smoke_inference(session, spec, has_confidence)
    return ModelContract(
        sha256=sha256 or sha256_file(model_path),
        input_shape=shape,
        uncertainty_width=width,
        has_confidence=has_confidence,
        feature_spec=spec,
        feature_spec_source=source,
        warnings=tuple(warnings),
    )


def _smoke_inference(session: ort.InferenceSession, spec: FeatureSpec, has_confidence: bool) -> int:
    """Batch 2 and batch 1 on realistic input: finite, well-shaped, consistent outputs."""
    mel = preprocess(generate_scenes(2, seed=0, spec=spec).iq, spec)
    names = [POSITIONS, UNCERTAINTIES] + ([CONFIDENCE] if has_confidence else [])
    try:
        two = session.run(names, {INPUT_NAME: mel})
        one = session.run(names, {INPUT_NAME: mel[:1]})
    except Exception as exc:
        raise ContractViolation(
            f"smoke inference failed: {str(exc).splitlines()[0][:300]}"
        ) from exc
    positions, uncertainties = np.asarray(two[0]), np.asarray(two[1])
    if positions.shape != (2, 2):
        raise ContractViolation(f"output '{POSITIONS}': batch 2 gave shape {positions.shape}")
    if (
        uncertainties.ndim != 2
        or uncertainties.shape[0] != 2
        or uncertainties.shape[1] not in (2, 3)
    ):
        raise ContractViolation(
            f"output '{UNCERTAINTIES}': batch 2 gave shape "
            f"{uncertainties.shape}, expected [2, 2] or [2, 3]"
        )
    for name, value in zip(names, two, strict=True):
        if not np.isfinite(value).all():
            raise ContractViolation(f"output '{name}': non-finite values on a valid input")
    if not (np.abs(positions[:, 0]) <= 90).all() or not (np.abs(positions[:, 1]) <= 360).all():
        raise ContractViolation(
            f"output '{POSITIONS}': not latitude/longitude in degrees ({positions.tolist()})"
        )
    if not (uncertainties[:, :2] > 0).all():
        raise ContractViolation(f"output '{UNCERTAINTIES}': sigmas must be > 0")
    if uncertainties.shape[1] == 3 and not (np.abs(uncertainties[:, 2]) < 1).all():
        raise ContractViolation(f"output '{UNCERTAINTIES}': rho (column 2) must be in (-1, 1)")
    if has_confidence:
        conf = np.asarray(two[2]).reshape(-1)
        if conf.shape != (2,) or not ((conf >= 0) & (conf <= 1)).all():
            raise ContractViolation(
                f"output '{CONFIDENCE}': expected [batch] or [batch, 1] in [0, 1]"
            )
    for name, a, b in zip(names, one, two, strict=True):
        if not np.allclose(np.asarray(a)[0], np.asarray(b)[0], rtol=1e-4, atol=1e-5):
            raise ContractViolation(
                f"output '{name}': batch 1 and batch 2 disagree on the same "
                "sample (the batch axis is not independent)"
            )
    return int(uncertainties.shape[1])
