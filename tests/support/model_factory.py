"""Small ONNX models that are right or wrong in one precise way, and a way to register them."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from demo.bootstrap import register_onnx_model


def toy_model(
    *,
    input_name: str = "mel_spectrogram",
    uncertainty_width: int = 3,
    channels: int = 5,
    positions_name: str = "positions",
    nan_below_level: float | None = None,
    uncertainty_bias: Sequence[float] | None = None,
    confidence: float | None = None,
) -> onnx.ModelProto:
    """Mean level per channel -> a linear position; constant sigmas (a valid toy otherwise).

    `nan_below_level`: a broken model whose sigmas turn NaN when the mean input level is below
    it (silence reads -200 under the default spec, real scenes about -60): it passes the
    import's smoke inference on realistic scenes and fails on silence.

    `uncertainty_bias`: the constant `uncertainties` row (sigma lat, sigma lon[, rho]) instead
    of the default one, e.g. a rho of 1.5 for a model the contract must refuse.
    `confidence`: add an output `confidence` `[batch]` holding this constant.
    """
    if uncertainty_bias is not None:
        assert len(uncertainty_bias) == uncertainty_width, "one bias per uncertainty column"
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(rng.normal(0, 1e-3, (channels, 2)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([45.0, 8.0], np.float32), "b"),
        numpy_helper.from_array(np.zeros((channels, uncertainty_width), np.float32), "Wu"),
        numpy_helper.from_array(
            np.array(
                [0.1, 0.2, 0.1, 0.1][:uncertainty_width]
                if uncertainty_bias is None
                else uncertainty_bias,
                np.float32,
            ),
            "bu",
        ),
    ]
    nodes = [
        helper.make_node("ReduceMean", [input_name, "axes"], ["level"], keepdims=0),
        helper.make_node("MatMul", ["level", "W"], ["p0"]),
        helper.make_node("Add", ["p0", "b"], [positions_name]),
        helper.make_node("MatMul", ["level", "Wu"], ["u0"]),
        helper.make_node(
            "Add", ["u0", "bu"], ["uncertainties" if nan_below_level is None else "u1"]
        ),
    ]
    if nan_below_level is not None:
        inits += [
            numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
            numpy_helper.from_array(np.array([-nan_below_level], np.float32), "shift"),
            numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("ReduceMean", ["level", "channel_axis"], ["overall"], keepdims=1),
            helper.make_node("Add", ["overall", "shift"], ["margin"]),
            helper.make_node("Sqrt", ["margin"], ["root"]),  # NaN below the level
            helper.make_node("Mul", ["root", "zero"], ["poison"]),  # 0, or NaN
            helper.make_node("Add", ["u1", "poison"], ["uncertainties"]),
        ]
    extra_outputs = []
    if confidence is not None:
        inits += [
            numpy_helper.from_array(np.array([1], np.int64), "confidence_axis"),
            numpy_helper.from_array(np.array([0.0], np.float32), "confidence_zero"),
            numpy_helper.from_array(np.array([confidence], np.float32), "confidence_value"),
        ]
        nodes += [
            helper.make_node("ReduceMean", ["level", "confidence_axis"], ["c0"], keepdims=0),
            helper.make_node("Mul", ["c0", "confidence_zero"], ["c1"]),
            helper.make_node("Add", ["c1", "confidence_value"], ["confidence"]),
        ]
        extra_outputs.append(
            helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["batch"])
        )
    graph = helper.make_graph(
        nodes,
        "toy",
        [
            helper.make_tensor_value_info(
                input_name, TensorProto.FLOAT, ["batch", channels, 128, 32]
            )
        ],
        [
            helper.make_tensor_value_info(positions_name, TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info(
                "uncertainties", TensorProto.FLOAT, ["batch", uncertainty_width]
            ),
            *extra_outputs,
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def experiment(client: MlflowClient, name: str = "import-tests") -> str:
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id) if found else str(client.create_experiment(name))


def register_files(
    client: MlflowClient, name: str, files: dict[str, bytes], stage: str | None = "Production"
) -> str:
    """Register an arbitrary artifact folder (e.g. a corrupt model.onnx) as a new version."""
    run = client.create_run(experiment(client))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        for filename, content in files.items():
            (folder / filename).write_bytes(content)
        client.log_artifacts(run.info.run_id, str(folder), artifact_path="model")
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    mv = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    if stage:
        client.transition_model_version_stage(name, str(mv.version), stage)
    return str(mv.version)


__all__ = ["experiment", "register_files", "register_onnx_model", "toy_model"]
