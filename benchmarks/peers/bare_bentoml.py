"""The floor: a bare BentoML service doing the same per-request work as the peers, none of the
project's layers (no ASGI middlewares, no batcher, no cache, no validation model, no ellipse).

    PEER_MODEL_DIR=<model dir> bentoml serve benchmarks.peers.bare_bentoml:Bare

An `async` API doing the compute on the event loop, as KServe's ModelServer does and as this
service does for a model this cheap (`BATCH_ON_LOOP=auto`); a sync API would add BentoML's
thread-pool hop to the floor. `workers` as the service has them (`SERVICE_WORKERS`, else one
per core): what remains between this and the service is what the project adds on top of
BentoML.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from benchmarks.peers.compute import load_runtime, model_dir_from_env, predict_texts

WORKERS = int(os.environ.get("SERVICE_WORKERS") or 0) or (os.cpu_count() or 1)


@bentoml.service(name="bare_floor", workers=WORKERS)
class Bare:
    def __init__(self) -> None:
        self.runtime = load_runtime(model_dir_from_env())

    @bentoml.api(route="/predict")
    async def predict(self, iq_b64: str, cache_enabled: bool = True) -> dict[str, Any]:
        """Decode + preprocessing + ONNX for one capture (`cache_enabled` is taken and ignored,
        so the body is the one this service gets)."""
        return predict_texts(self.runtime, [iq_b64])[0]
