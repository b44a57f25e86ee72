"""The same model and preprocessing, wrapped the way its peers would serve it.

- `LocalizationPyfunc`: an MLflow pyfunc, what an MLflow user deploys with
  `mlflow models serve`; rows carry `iq_b64` or `iq_data` like our API.
- `app`: a per-request FastAPI + onnxruntime server without batching (the original design).

Both decode with `utils.api.decoding`, run `utils.model.runtime.ModelRuntime` one request at a
time and
answer with `utils.api.responses`, so every server in the comparison does the same work per sample.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from utils.api.decoding import decode_iq_b64, decode_iq_data
from utils.api.responses import build_predictions
from utils.config import get_settings
from utils.model.runtime import ModelRuntime

MAX_SAMPLES = 65_536


def load_runtime(model_dir: Path) -> ModelRuntime:
    """One thread per process, and the service's `ORT_PROVIDERS` (CPU unless set), so the
    baselines and the in-process ceiling run where the service runs (a GPU when configured)."""
    meta_path = model_dir / "model.yaml"
    meta = yaml.safe_load(meta_path.read_text())["metadata"] if meta_path.exists() else {}
    providers = list(get_settings().ort_providers)
    return ModelRuntime(model_dir, meta, intra_threads=1, inter_threads=1, providers=providers)


def predict_rows(runtime: ModelRuntime, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    captures = [
        decode_iq_b64(r["iq_b64"], runtime.spec, MAX_SAMPLES)
        if r.get("iq_b64")
        else decode_iq_data(r["iq_data"], runtime.spec, MAX_SAMPLES)
        for r in rows
    ]
    raw = runtime.predict(captures)
    responses = build_predictions(
        raw,
        spec=runtime.spec,
        envelope=runtime.envelope,
        confidence_level=0.95,
        include_geojson=False,
        model_version="baseline",
        inference_time_ms=0.0,
        session_id=None,
    )
    return [r.model_dump(mode="json") for r in responses]


try:  # the pyfunc flavour is only needed where mlflow is installed
    import mlflow.pyfunc

    class LocalizationPyfunc(mlflow.pyfunc.PythonModel):
        def load_context(self, context):  # noqa: ANN001, ANN201 - MLflow's signature
            self.runtime = load_runtime(Path(context.artifacts["model_dir"]))

        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            rows = model_input.to_dict(orient="records")
            return predict_rows(self.runtime, rows)
except ImportError:  # pragma: no cover
    pass


def _make_app():  # noqa: ANN202 - FastAPI only exists in the load-test environment
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="per-request baseline")
    runtime = load_runtime(Path(os.environ["BASELINE_MODEL_DIR"]))

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        try:
            return predict_rows(runtime, [body])[0]
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = _make_app() if os.environ.get("BASELINE_MODEL_DIR") else None
