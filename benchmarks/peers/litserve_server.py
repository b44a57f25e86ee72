"""LitServe (litserve 0.2.19) with its batcher, serving the peers' shared compute.

    PEER_MODEL_DIR=<model dir> python -m benchmarks.peers.litserve_server --port 8000

Set up as LitServe's docs do for a batched CPU model: a `LitAPI` with `setup` (load the model
once per inference worker), `decode_request`, `batch` / `predict` / `unbatch` and
`encode_response`; `LitAPI(max_batch_size=8, batch_timeout=0.002)` (0.2.19 takes the batch
settings on the LitAPI; on `LitServer` they are deprecated) and
`LitServer(api, accelerator="cpu", workers_per_device=2)`, which on CPU is two inference
worker processes fed by a queue from the API server processes (as many as the inference
workers, LitServe's default). `run(log_level="warning", generate_client_file=False)`: the
docs' production example (no client.py written into the working directory).
Body: `{"iq_b64": ..., "cache_enabled": false}` on POST `/predict`.
"""

from __future__ import annotations

import argparse
from typing import Any

import litserve as ls
from fastapi import HTTPException

from benchmarks.peers.compute import load_runtime, model_dir_from_env, predict_texts

MAX_BATCH_SIZE = 8
BATCH_TIMEOUT_S = 0.002
WORKERS_PER_DEVICE = 2


class LocalizationAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.runtime = load_runtime(model_dir_from_env())

    # unannotated, as in LitServe's docs: LitServe reads the JSON body itself (an annotation
    # would make it a FastAPI-validated parameter)
    def decode_request(self, request, **kwargs: Any) -> str:  # noqa: ANN001
        text = request.get("iq_b64") if isinstance(request, dict) else None
        if not isinstance(text, str):
            raise HTTPException(status_code=400, detail="iq_b64: a base64 string is required")
        return text

    def batch(self, inputs: list[str]) -> list[str]:
        return list(inputs)

    def predict(self, x: list[str], **kwargs: Any) -> list[dict[str, Any]]:
        return predict_texts(self.runtime, x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(output)

    def encode_response(self, output: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    api = LocalizationAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=WORKERS_PER_DEVICE)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
