"""A bare BentoML service taking the same `iq_b64` body as `/predict` and doing nothing with it:
its latency is the framework floor (HTTP, JSON parse, validation) under the real service."""

from __future__ import annotations

import os

import bentoml

WORKERS = int(os.environ.get("SERVICE_WORKERS") or 0) or (os.cpu_count() or 1)


@bentoml.service(name="echo_floor", workers=WORKERS)
class Echo:
    @bentoml.api(route="/predict")
    def predict(self, iq_b64: str, cache_enabled: bool = True) -> dict[str, int]:
        """Answers the body's size: the framework's cost of a /predict request, no model."""
        return {"chars": len(iq_b64)}
