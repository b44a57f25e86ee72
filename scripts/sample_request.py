"""Print a request body for `/predict` or `/predict_batch` built from synthetic scenes.

    python -m scripts.sample_request [--encoding b64|pairs] [--batch N] [--seed S] > body.json

Handy for curl and for trying the Swagger UI; the true transmitter positions go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from utils.api.decoding import encode_capture
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoding", choices=["b64", "pairs"], default="b64")
    parser.add_argument("--batch", type=int, default=0, help="N > 0: a /predict_batch body")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    scenes = generate_scenes(max(1, args.batch), seed=args.seed, spec=FeatureSpec())

    def encode(capture: np.ndarray) -> object:
        if args.encoding == "b64":
            return encode_capture(capture)
        return np.round(np.stack([capture.real, capture.imag], axis=-1), 9).tolist()

    items = [encode(c) for c in scenes.iq]
    if args.batch:
        key = "iq_b64_samples" if args.encoding == "b64" else "iq_samples"
        body: dict[str, object] = {key: items}
    else:
        body = {"iq_b64" if args.encoding == "b64" else "iq_data": items[0]}
    json.dump(body, sys.stdout)
    for lat, lon in zip(scenes.tx_latitude, scenes.tx_longitude, strict=True):
        print(f"true position: {lat:.5f}, {lon:.5f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
