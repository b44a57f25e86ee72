"""`POST /sample_scene`: a synthetic capture set for the served model, and where it came from.

The map page (`GET /map/`) asks for one, sends its `iq_b64` to `/predict` and draws the answer
beside the true transmitter: a user sees what the model does without a capture of their own.
The scene comes from the same generator that made the demo model's held-out scenes
(`utils/dsp/synthetic.py`), sized to the served model's feature spec.
"""

from __future__ import annotations

import secrets

from utils.api.decoding import encode_capture
from utils.api.schemas import Position, SampleScene
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes


def sample_scene(spec: FeatureSpec, seed: int | None) -> SampleScene:
    """Scene `seed` (a fresh random one when None): the same seed, the same scene."""
    seed = secrets.randbelow(2**31) if seed is None else seed
    scene = generate_scenes(1, seed=seed, spec=spec)
    return SampleScene(
        iq_b64=encode_capture(scene.iq[0]),
        transmitter=Position(
            latitude=float(scene.tx_latitude[0]), longitude=float(scene.tx_longitude[0])
        ),
        seed=seed,
    )
