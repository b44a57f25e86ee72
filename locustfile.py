"""Load test of the localization service with realistic clients.

    locust -f locustfile.py --headless -u 32 -r 8 -t 60s --host http://localhost:3000 \
           --csv benchmarks/results/locust --html benchmarks/results/locust.html
    (or: make load URL=http://localhost:3000 USERS=32 DURATION=60s)

Clients send single predictions as `iq_b64` and as `iq_data`, batches, and ellipse conversions.
A share of the single predictions repeats scenes already sent (cache hits, `LOCUST_REPEAT_SHARE`);
the others carry a fresh random phase rotation of a scene, so each is a new sample for the cache
but keeps the physics. Payloads are generated once, at start, from the synthetic scene
generator; the feature spec (receivers) comes from the server's `/model/info`.

Environment: LOCUST_SCENES (32), LOCUST_REPEAT_SHARE (0.3), LOCUST_BATCH_SIZE (8),
LOCUST_SEED (7).
"""

from __future__ import annotations

import json
import os
import random
import urllib.request

import numpy as np
from locust import HttpUser, between, events, task

from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

SCENES = int(os.environ.get("LOCUST_SCENES", "32"))
REPEAT_SHARE = float(os.environ.get("LOCUST_REPEAT_SHARE", "0.3"))
BATCH_SIZE = int(os.environ.get("LOCUST_BATCH_SIZE", "8"))
SEED = int(os.environ.get("LOCUST_SEED", "7"))


class Payloads:
    """Built once per locust process, before any user starts."""

    b64: list[str] = []
    pairs: list[list] = []
    fresh_b64: list[str] = []
    fresh_pairs: list[list] = []


def _spec(host: str | None) -> FeatureSpec:
    if host:
        try:
            with urllib.request.urlopen(f"{host.rstrip('/')}/model/info", timeout=10) as r:
                return FeatureSpec.model_validate(json.loads(r.read())["feature_spec"])
        except OSError:
            pass
    return FeatureSpec()


def _pairs(capture: np.ndarray) -> list:
    return np.stack([capture.real, capture.imag], axis=-1).tolist()


@events.init.add_listener
def build_payloads(environment, **_: object) -> None:
    spec = _spec(environment.host)
    scenes = generate_scenes(SCENES, seed=SEED, spec=spec).iq
    rng = np.random.default_rng(SEED)
    # a random phase rotation: same powers and spectra, different bytes (a cache miss)
    rotated = scenes * np.exp(1j * rng.uniform(0, 2 * np.pi, (SCENES, 1, 1))).astype(np.complex64)
    Payloads.b64 = [encode_capture(c) for c in scenes]
    Payloads.pairs = [_pairs(c) for c in scenes[: max(1, SCENES // 4)]]
    Payloads.fresh_b64 = [encode_capture(c) for c in rotated]
    Payloads.fresh_pairs = [_pairs(c) for c in rotated[: max(1, SCENES // 4)]]


class LocalizationClient(HttpUser):
    wait_time = between(0.05, 0.3)

    def _pick(self, repeat: list, fresh: list) -> object:
        return random.choice(repeat if random.random() < REPEAT_SHARE else fresh)

    @task(6)
    def predict_b64(self) -> None:
        body = {
            "iq_b64": self._pick(Payloads.b64, Payloads.fresh_b64),
            "session_id": f"locust-{id(self)}",
        }
        with self.client.post(
            "/predict", json=body, name="/predict [iq_b64]", catch_response=True
        ) as r:
            if r.status_code != 200 or "position" not in r.json():
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(2)
    def predict_pairs(self) -> None:
        body = {"iq_data": self._pick(Payloads.pairs, Payloads.fresh_pairs)}
        with self.client.post(
            "/predict", json=body, name="/predict [iq_data]", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(1)
    def predict_batch(self) -> None:
        items = [self._pick(Payloads.b64, Payloads.fresh_b64) for _ in range(BATCH_SIZE)]
        with self.client.post(
            "/predict_batch",
            json={"iq_b64_samples": items},
            name="/predict_batch",
            catch_response=True,
        ) as r:
            if r.status_code != 200 or len(r.json()["predictions"]) != BATCH_SIZE:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(1)
    def ellipse(self) -> None:
        body = {
            "latitude": random.uniform(44.3, 45.8),
            "longitude": random.uniform(7.0, 9.6),
            "sigma_x": random.uniform(500, 40_000),
            "sigma_y": random.uniform(500, 40_000),
            "rho": random.uniform(-0.8, 0.8),
        }
        self.client.post("/ellipse", json=body, name="/ellipse")
