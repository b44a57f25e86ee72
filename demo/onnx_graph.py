"""ONNX graphs of the demo model, written node by node with `onnx.helper`.

The demo model is small enough that a hand-written graph is clearer than a converter: a fixed
feature extractor (received power per receiver, read off the log-mel input), a ReLU MLP for the
position and a linear heteroscedastic head for the uncertainty.  The trainer computes its
features by running `feature_model()` itself in onnxruntime, so the features it learns from are
bit-for-bit the ones the served graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utils.dsp.feature_spec import FeatureSpec

OPSET = 18
IR_VERSION = 9
INPUT_NAME = "mel_spectrogram"
POSITIONS = "positions"
UNCERTAINTIES = "uncertainties"
_LN10_OVER_10 = float(np.log(10.0) / 10.0)
_10_OVER_LN10 = float(10.0 / np.log(10.0))


@dataclass(frozen=True)
class DenseLayer:
    weight: np.ndarray  # [in, out]
    bias: np.ndarray  # [out]
    relu: bool


@dataclass(frozen=True)
class DemoWeights:
    """Everything the trainer learned, in the order the graph applies it."""

    feature_mean: np.ndarray
    feature_std: np.ndarray
    position_layers: tuple[DenseLayer, ...]
    target_mean: np.ndarray  # [2] lat, lon degrees
    target_std: np.ndarray  # [2]
    head_mean: np.ndarray  # standardisation of the uncertainty head's inputs
    head_std: np.ndarray
    head_weight: np.ndarray  # [head_in, 3]
    head_bias: np.ndarray  # [3]
    sigma_scale: float  # calibration factor on both sigmas
    rho_limit: float


class _Graph:
    """Tiny builder: unique names, float32 initializers, nodes in order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray | float, hint: str = "c", dtype: type = np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        hint: str | None = None,
        output: str | None = None,
        **attrs: object,
    ) -> str:
        out = output or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int = 0) -> str:
        return self.op(op_type, [x, self.const(axes, "axes", np.int64)], keepdims=keepdims)

    def dense(self, x: str, weight: np.ndarray, bias: np.ndarray, relu: bool) -> str:
        y = self.op("Add", [self.op("MatMul", [x, self.const(weight, "W")]), self.const(bias, "b")])
        return self.op("Relu", [y]) if relu else y

    def standardise(self, x: str, mean: np.ndarray, std: np.ndarray) -> str:
        return self.op("Div", [self.op("Sub", [x, self.const(mean, "mu")]), self.const(std, "sd")])


def _features(g: _Graph, spec: FeatureSpec) -> str:
    """`[B, C, M, F]` normalised log-mel -> `[B, 3C]` power features in dB.

    Per receiver: total time-averaged mel power, peak mel band, and the total relative to the
    strongest receiver (which cancels the unknown transmitter power).
    """
    db = g.op(
        "Add", [g.op("Mul", [INPUT_NAME, g.const(spec.norm_std_db)]), g.const(spec.norm_mean_db)]
    )
    linear = g.op("Exp", [g.op("Mul", [db, g.const(_LN10_OVER_10)])])
    bands = g.reduce("ReduceMean", linear, [3])  # [B, C, M]
    total_db = g.op(
        "Mul", [g.op("Log", [g.reduce("ReduceSum", bands, [2])]), g.const(_10_OVER_LN10)]
    )
    peak_db = g.op(
        "Mul", [g.op("Log", [g.reduce("ReduceMax", bands, [2])]), g.const(_10_OVER_LN10)]
    )
    relative_db = g.op("Sub", [total_db, g.reduce("ReduceMax", total_db, [1], keepdims=1)])
    return g.op("Concat", [total_db, peak_db, relative_db], axis=1, hint="features")


def _input_info(spec: FeatureSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.FLOAT, ["batch", spec.n_channels, spec.n_mels, spec.n_frames]
    )


def _model(
    g: _Graph, spec: FeatureSpec, outputs: list[onnx.ValueInfoProto], name: str
) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, [_input_info(spec)], outputs, g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rf-localization-demo"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def feature_model(spec: FeatureSpec) -> onnx.ModelProto:
    """The feature extractor alone, output `features` `[B, 3C]` (used by the trainer)."""
    g = _Graph()
    feats = _features(g, spec)
    g.op("Identity", [feats], output="features")
    out = helper.make_tensor_value_info(
        "features", TensorProto.FLOAT, ["batch", 3 * spec.n_channels]
    )
    return _model(g, spec, [out], "demo_features")


def localization_model(spec: FeatureSpec, w: DemoWeights) -> onnx.ModelProto:
    """The served model: `mel_spectrogram` -> `positions` `[B, 2]`, `uncertainties` `[B, 3]`."""
    g = _Graph()
    x = g.standardise(_features(g, spec), w.feature_mean, w.feature_std)
    h = x
    for layer in w.position_layers:
        h = g.dense(h, layer.weight, layer.bias, layer.relu)
    g.op("Add", [g.op("Mul", [h, g.const(w.target_std)]), g.const(w.target_mean)], output=POSITIONS)

    head_in = g.op("Concat", [x, h, g.op("Mul", [h, h])], axis=1)
    raw = g.dense(
        g.standardise(head_in, w.head_mean, w.head_std), w.head_weight, w.head_bias, relu=False
    )
    log_sigma = g.op(
        "Slice",
        [
            raw,
            g.const([0], "s", np.int64),
            g.const([2], "e", np.int64),
            g.const([1], "a", np.int64),
        ],
    )
    rho_raw = g.op(
        "Slice",
        [
            raw,
            g.const([2], "s", np.int64),
            g.const([3], "e", np.int64),
            g.const([1], "a", np.int64),
        ],
    )
    sigma_deg = g.op("Mul", [g.op("Exp", [log_sigma]), g.const(w.target_std * w.sigma_scale)])
    rho = g.op("Mul", [g.op("Tanh", [rho_raw]), g.const(w.rho_limit)])
    g.op("Concat", [sigma_deg, rho], axis=1, output=UNCERTAINTIES)
    outputs = [
        helper.make_tensor_value_info(POSITIONS, TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info(UNCERTAINTIES, TensorProto.FLOAT, ["batch", 3]),
    ]
    return _model(g, spec, outputs, "rf_localization_demo")
