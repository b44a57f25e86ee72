"""The per-request work every peer server does, and nothing else.

The project's `iq_b64` decode (`utils.api.decoding.decode_iq_b64`: base64, shape and amplitude
checks, canonical capture), then the project's `ModelRuntime` (mel preprocessing + ONNX Runtime,
one intra-op and one inter-op thread per process, as `benchmarks/baseline_model.py` builds it),
answering the position and the model's raw uncertainties. No cache, no ellipse, no response
model: each peer wraps exactly this in its own framework, so the figures differ only by the
framework. Imported by every peer's virtualenv (`requirements/peers/`), so it imports nothing
from the benchmarks that needs the main environment (mlflow, pyproj, locust).
"""

from __future__ import annotations

import os

# One BLAS thread per process, before numpy is first imported (as service.py does): two
# workers on two cores must not run four busy threads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from utils.api.decoding import decode_iq_b64  # noqa: E402
from utils.config import get_settings  # noqa: E402
from utils.model.runtime import ModelRuntime  # noqa: E402

#: Samples per receiver accepted, the service's default (`MAX_SAMPLES_PER_CAPTURE`).
MAX_SAMPLES = 65_536
#: Where each peer finds the imported model folder (the BentoML store's copy).
MODEL_DIR_ENV = "PEER_MODEL_DIR"


def load_runtime(model_dir: Path | str) -> ModelRuntime:
    """The model as `benchmarks/baseline_model.py` loads it: one ONNX Runtime thread per
    process (intra- and inter-op) and the service's `ORT_PROVIDERS` (CPU unless set)."""
    model_dir = Path(model_dir)
    meta_path = model_dir / "model.yaml"
    meta = yaml.safe_load(meta_path.read_text())["metadata"] if meta_path.exists() else {}
    providers = list(get_settings().ort_providers)
    return ModelRuntime(model_dir, meta, intra_threads=1, inter_threads=1, providers=providers)


def predict_texts(runtime: ModelRuntime, texts: list[str]) -> list[dict[str, Any]]:
    """Decode each `iq_b64` text, run them as one batch, answer one dict per text:
    `position` [lat, lon] degrees and `uncertainties` as the model gives them."""
    captures = [decode_iq_b64(t, runtime.spec, MAX_SAMPLES) for t in texts]
    raw = runtime.predict(captures, validated=True)
    return [
        {"position": raw.positions[j].tolist(), "uncertainties": raw.uncertainties[j].tolist()}
        for j in range(len(texts))
    ]


def model_dir_from_env() -> Path:
    """The model folder the runner passes to every server in `PEER_MODEL_DIR`."""
    return Path(os.environ[MODEL_DIR_ENV])
