"""The model at serving time: an onnxruntime session plus the feature spec it was trained with.

Framework-free (no BentoML import) so the in-process benchmark and the tests drive exactly the
code the service runs.  Loading refuses a model whose `model.onnx` does not match the sha256
recorded at import, so a corrupted or swapped file never serves.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from utils.config import Settings
from utils.dsp.feature_spec import FEATURE_SPEC_FILENAME, FeatureSpec
from utils.dsp.preprocessing import preprocess_many
from utils.dsp.synthetic import generate_scenes
from utils.model.contract import (
    CONFIDENCE,
    INPUT_NAME,
    MODEL_FILENAME,
    POSITIONS,
    UNCERTAINTIES,
    load_feature_spec,
    sha256_file,
)
from utils.model.metadata import ModelMetadata
from utils.model.quality import (
    FixEnvelope,
    band_spread_db,
    channel_power_db,
    distinct_frames,
    max_amplitude,
    noise_spread_db,
)

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The stored model cannot be served (missing, corrupt, or not the imported bytes)."""


@dataclass(frozen=True)
class RawPredictions:
    positions: np.ndarray  # [B, 2] lat, lon degrees
    uncertainties: np.ndarray  # [B, 2|3]
    confidence: np.ndarray | None  # [B]
    power_db: np.ndarray  # [B, C] mean power per receiver, dB re full scale
    spread_db: np.ndarray  # [B, C] spread of the mel bands (signal vs flat noise)
    frames: np.ndarray  # [B] independent STFT frames per capture
    preprocess_s: float
    model_s: float

    def items(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per sample: the form results travel in between a batch and the
        requests that share it (and over the batchable `infer` API)."""
        return [
            {
                "position": self.positions[j].tolist(),
                "uncertainty": self.uncertainties[j].tolist(),
                "confidence": None if self.confidence is None else float(self.confidence[j]),
                "power_db": self.power_db[j].tolist(),
                "spread_db": self.spread_db[j].tolist(),
                "frames": int(self.frames[j]),
            }
            for j in range(self.positions.shape[0])
        ]

    @classmethod
    def stack(cls, items: list[dict[str, Any]]) -> RawPredictions:
        """Inverse of `items` for one request's share of a batch."""
        confidence = (
            None
            if items[0]["confidence"] is None
            else np.array([i["confidence"] for i in items], dtype=np.float64)
        )
        return cls(
            positions=np.array([i["position"] for i in items], dtype=np.float64),
            uncertainties=np.array([i["uncertainty"] for i in items], dtype=np.float64),
            confidence=confidence,
            power_db=np.array([i["power_db"] for i in items], dtype=np.float64),
            spread_db=np.array([i["spread_db"] for i in items], dtype=np.float64),
            frames=np.array([i["frames"] for i in items]),
            preprocess_s=0.0,
            model_s=0.0,
        )


def session_options(intra_threads: int, inter_threads: int) -> ort.SessionOptions:
    """ORT ignores OMP_NUM_THREADS: threads are sized here, per worker."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = inter_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def usable_providers(requested: list[str]) -> list[str]:
    """Requested providers that this onnxruntime build has, CPU always last as the fallback."""
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available and p != "CPUExecutionProvider"]
    missing = [p for p in requested if p not in available]
    if missing:
        log.warning(
            "execution providers %s are not available here; using %s",
            missing,
            chosen + ["CPUExecutionProvider"],
        )
    return chosen + ["CPUExecutionProvider"]


def default_intra_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def verify_model_files(model_dir: Path, metadata: Mapping[str, Any] | ModelMetadata) -> str:
    """sha256 of the stored `model.onnx`; `ModelLoadError` when it is missing or differs
    from the sha256 recorded at import."""
    model_path = model_dir / MODEL_FILENAME
    if not model_path.is_file():
        raise ModelLoadError(f"{MODEL_FILENAME} is missing from {model_dir}")
    expected = ModelMetadata.read(metadata).sha256
    actual = sha256_file(model_path)
    if expected and actual != expected:
        raise ModelLoadError(
            f"{MODEL_FILENAME} sha256 {actual[:12]} does not match the "
            f"imported {expected[:12]}: the stored file was changed"
        )
    return actual


class ModelRuntime:
    """Loads, checks and runs one stored model."""

    def __init__(
        self,
        model_dir: Path,
        metadata: Mapping[str, Any] | ModelMetadata,
        *,
        intra_threads: int,
        inter_threads: int,
        providers: list[str],
    ) -> None:
        model_path = model_dir / MODEL_FILENAME
        self.metadata = metadata = ModelMetadata.read(metadata)
        self.sha256 = verify_model_files(model_dir, metadata)
        try:
            self.session = ort.InferenceSession(
                str(model_path),
                session_options(intra_threads, inter_threads),
                providers=usable_providers(providers),
            )
        except Exception as exc:
            raise ModelLoadError(
                f"onnxruntime cannot load {model_path}: {str(exc).splitlines()[0][:300]}"
            ) from exc
        self.providers = self.session.get_providers()
        # what the session runs with, read back from it (`/model/info` -> `runtime`)
        effective = self.session.get_session_options()
        self.intra_op_threads = int(effective.intra_op_num_threads)
        self.inter_op_threads = int(effective.inter_op_num_threads)
        outputs = {o.name for o in self.session.get_outputs()}
        self.has_confidence = CONFIDENCE in outputs
        self.output_names = [POSITIONS, UNCERTAINTIES] + (
            [CONFIDENCE] if self.has_confidence else []
        )
        channels = self.session.get_inputs()[0].shape[1]
        self.spec, self.spec_source, self.warnings = self._spec(model_dir, metadata, channels)
        self.envelope = FixEnvelope.for_model(
            self.spec, dict(metadata.metrics), noise_spread_db(self.spec)
        )

    @classmethod
    def for_serving(
        cls, model_dir: Path, metadata: Mapping[str, Any], settings: Settings, workers: int
    ) -> ModelRuntime:
        """As the service runs it: ONNX Runtime threads and providers from the settings
        (ONNX Runtime ignores OMP_NUM_THREADS, so the split per worker is set here)."""
        return cls(
            model_dir,
            metadata,
            intra_threads=settings.ort_intra_op_threads or default_intra_threads(workers),
            inter_threads=settings.ort_inter_op_threads,
            providers=list(settings.ort_providers),
        )

    def version_label(self, fallback: str) -> str:
        """`<registry version>+<sha256 prefix>`: which model answered, in every response."""
        return f"{self.metadata.mlflow_version or fallback}+{self.sha256[:12]}"

    @staticmethod
    def _spec(
        model_dir: Path, metadata: ModelMetadata, channels: object
    ) -> tuple[FeatureSpec, str, list[str]]:
        if metadata.feature_spec and metadata.feature_spec_source != "defaults":
            return FeatureSpec.model_validate(metadata.feature_spec), "artifact", []
        if (model_dir / FEATURE_SPEC_FILENAME).exists():
            spec, source, warnings = load_feature_spec(model_dir, None)
            return spec, source, warnings
        return load_feature_spec(model_dir, channels if isinstance(channels, int) else None)

    def predict(self, captures: list[np.ndarray], validated: bool = False) -> RawPredictions:
        """Captures -> model outputs, preprocessing and ONNX over the whole batch.

        `validated`: canonical captures from the API's decoder, checked there once (shape,
        finiteness, amplitude bound); preprocessing then skips its own checks."""
        started = time.perf_counter()
        mel = preprocess_many(captures, self.spec, max_amplitude(self.spec) if validated else None)
        cut = [c[..., : self.spec.samples_per_capture] for c in captures]
        channels = self.spec.n_channels
        power = np.stack(
            [
                np.broadcast_to(channel_power_db(c.reshape(-1, c.shape[-1])), (channels,))
                for c in cut
            ]
        )
        spread = band_spread_db(mel, self.spec)
        frames = np.array([distinct_frames(c.shape[-1], self.spec) for c in cut])
        prepared = time.perf_counter()
        outputs = self.session.run(self.output_names, {INPUT_NAME: mel})
        finished = time.perf_counter()
        confidence = None
        if self.has_confidence:
            confidence = np.asarray(outputs[2], dtype=np.float64).reshape(len(captures))
        return RawPredictions(
            positions=np.asarray(outputs[0], dtype=np.float64),
            uncertainties=np.asarray(outputs[1], dtype=np.float64),
            confidence=confidence,
            power_db=power,
            spread_db=spread,
            frames=frames,
            preprocess_s=prepared - started,
            model_s=finished - prepared,
        )

    def warm_up(self) -> None:
        """One inference on synthetic scenes: readiness means this succeeded."""
        scenes = generate_scenes(2, seed=1, spec=self.spec)
        out = self.predict(list(scenes.iq))
        if not (np.isfinite(out.positions).all() and np.isfinite(out.uncertainties).all()):
            raise ModelLoadError("warm-up inference produced non-finite outputs")
