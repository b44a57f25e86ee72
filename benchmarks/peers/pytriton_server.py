"""Triton Inference Server through PyTriton (nvidia-pytriton 0.7), its dynamic batcher in front
of the peers' shared compute.

    PEER_MODEL_DIR=<model dir> LD_LIBRARY_PATH=<the venv python's LIBDIR> \
        python -m benchmarks.peers.pytriton_server --http-port 8000 --grpc-port 8001 \
        --metrics-port 8002

Set up as PyTriton's docs do: an inference callable decorated with `@batch`, bound with
`Triton.bind` and served with `triton.serve()`; two model instances by binding a list of two
callables (each with its own ONNX Runtime session), `ModelConfig(max_batch_size=8,
batcher=DynamicBatcher(max_queue_delay_microseconds=2000))`. Triton's own HTTP front end (the
KServe v2 protocol) takes POST `/v2/models/localization/infer` with one BYTES input `iq_b64`
(shape [1, 1]: a batch of one) and answers FP64 `position` [1, 2] and `uncertainties`.
Triton's Python backend stub must load the same libpython as this interpreter: the runner sets
LD_LIBRARY_PATH to `sysconfig.get_config_var("LIBDIR")`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peers.compute import load_runtime, model_dir_from_env, predict_texts

MODEL_NAME = "localization"
MAX_BATCH_SIZE = 8
MAX_QUEUE_DELAY_US = 2000
INSTANCES = 2


def make_infer(runtime: Any) -> Callable[..., dict[str, np.ndarray]]:
    """One model instance's inference callable, with its own runtime."""

    @batch
    def infer(iq_b64: np.ndarray) -> dict[str, np.ndarray]:
        texts = [row[0].decode("ascii") for row in iq_b64]
        answers = predict_texts(runtime, texts)
        return {
            "position": np.array([a["position"] for a in answers], dtype=np.float64),
            "uncertainties": np.array([a["uncertainties"] for a in answers], dtype=np.float64),
        }

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--workspace", default=None, help="PyTriton's workspace (default: a new one in its cache)"
    )
    args = parser.parse_args()
    model_dir = model_dir_from_env()
    runtimes = [load_runtime(model_dir) for _ in range(INSTANCES)]
    width = runtimes[0].session.get_outputs()[1].shape[-1]  # 2, or 3 with rho
    width = width if isinstance(width, int) else -1  # a named dimension: any width
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[make_infer(r) for r in runtimes],
            inputs=[Tensor(name="iq_b64", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="position", dtype=np.float64, shape=(2,)),
                Tensor(name="uncertainties", dtype=np.float64, shape=(width,)),
            ],
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=MAX_QUEUE_DELAY_US),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
