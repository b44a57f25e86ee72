"""KServe's Python ModelServer (kserve 0.21), per request, serving the peers' shared compute.

    PEER_MODEL_DIR=<model dir> python -m benchmarks.peers.kserve_server \
        --model_name localization --http_port 8080 --workers 2 --enable_grpc false

Set up as KServe's custom-model docs do: a `kserve.Model` whose `load` builds the model and
whose `predict` runs it, started by `kserve.ModelServer().start([model])`, every setting from
KServe's own command line (`kserve.model_server.parser`). KServe has no batcher for a custom
Python model: each request is one `predict` call on the worker's event loop (a sync `predict`
runs there, as the docs' examples do). V1 protocol: POST `/v1/models/<name>:predict` with
`{"instances": [{"iq_b64": ..., "cache_enabled": false}]}`, answer `{"predictions": [...]}`.

`workers > 1` starts uvicorn workers with multiprocessing's spawn, which pickles the model
into each worker: the ONNX Runtime session does not pickle, so each worker loads its own
(`__getstate__` / `__setstate__`), as a fork would have given it one.
"""

from __future__ import annotations

import argparse
from typing import Any

from kserve import Model, ModelServer, model_server
from kserve.errors import InvalidInput

from benchmarks.peers.compute import load_runtime, model_dir_from_env, predict_texts


class Localization(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.runtime: Any = None
        self.load()

    def load(self) -> bool:
        self.runtime = load_runtime(model_dir_from_env())
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["runtime"] = None  # an InferenceSession does not pickle: each worker loads it
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        try:
            texts = [row["iq_b64"] for row in payload["instances"]]
            return {"predictions": predict_texts(self.runtime, texts)}
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(str(exc)) from exc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    args, _ = parser.parse_known_args()
    ModelServer().start([Localization(args.model_name)])
