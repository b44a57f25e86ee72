"""One stored model made ready to serve, and the checks it must pass first.

The service loads a model the same way at start and at every reload: the stored `model.onnx`
must have the sha256 recorded at import, must still meet the contract (docs/api.md §8, with
onnxruntime's checks only: the serving image has no `onnx` package) and must answer a warm-up
inference with finite outputs. Only then does it become a `ServedModel`, so a reload that
fails here never replaces the model that is serving (README, "Model updates").

Framework-free: the BentoML store is read by the caller (`utils/serving/model_store.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import Settings
from utils.dsp.synthetic import generate_scenes
from utils.model import batch_profile
from utils.model.batch_profile import BatchProfile
from utils.model.contract import ContractViolation, CorruptModelError, validate_model_folder
from utils.model.runtime import ModelLoadError, ModelRuntime


@dataclass(frozen=True)
class StoredModel:
    """What the BentoML store holds about one import (read by `model_store.stored`)."""

    tag: str
    name: str
    version: str
    path: Path
    metadata: Mapping[str, Any]
    created_at: str


@dataclass(frozen=True)
class ServedModel:
    """A checked runtime and the labels every response and `/model/info` carry for it."""

    runtime: ModelRuntime
    stored: StoredModel
    model_version: str  # `<registry version>+<sha256 prefix>`, in every prediction
    loaded_at: str
    # what batching buys this model here (greedy's `auto` queue delay); None: not measured
    batch_profile: BatchProfile | None = None

    @property
    def tag(self) -> str:
        return self.stored.tag

    @property
    def key(self) -> str:
        """Short identity of the model's bytes: pins a batch item to the model it needs."""
        return self.runtime.sha256[:16]


def load_served(
    stored: StoredModel, settings: Settings, workers: int, loaded_at: str
) -> ServedModel:
    """sha256, contract and warm-up, in that order (cheapest refusal first); raises
    `ModelLoadError` naming the tag and the failed check. The file is hashed once: the runtime
    verifies it against the import before it opens a session."""
    try:
        runtime = ModelRuntime.for_serving(stored.path, stored.metadata, settings, workers)
        validate_model_folder(stored.path, full_check=False, sha256=runtime.sha256)
        runtime.warm_up()
    except (ModelLoadError, ContractViolation, CorruptModelError) as exc:
        raise ModelLoadError(f"{stored.tag}: {exc}") from exc
    profile = None
    measured = "auto" in (settings.batch_queue_delay_ms, settings.batch_on_loop)
    if settings.batch_dispatch == "greedy" and measured:
        scenes = list(generate_scenes(2, seed=2, spec=runtime.spec).iq)
        profile = batch_profile.measure(runtime, scenes, min(8, settings.batch_max_size))
    version = runtime.version_label(stored.version)
    return ServedModel(runtime, stored, version, loaded_at, batch_profile=profile)
