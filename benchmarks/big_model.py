"""A benchmark model with the seed's contract and a real backbone's compute, in a scratch registry.

    python -m benchmarks.big_model --registry DIR [--arch resnet18]   (prints the tracking URI)

The demo model is a small MLP (about 0.05-0.09 ms per sample): every figure measured on it is
HTTP and decoding, and batching cannot show what it is for. The seed's Phase 5 model is a
ConvNeXt-Large (about 200 M parameters, 40-50 ms per inference). This builds, with
`onnx.helper` and no torch, a ResNet-style network with the seed's contract: 3 receivers,
`mel_spectrogram [B, 3, 128, 32]` in, `positions [B, 2]` (degrees) and `uncertainties [B, 2]`
(degrees, > 0) out. Weights are random and seeded (He-initialised so activations stay finite;
batch norm folded into the convolutions' biases, as an exported inference graph has it): its
answers mean nothing, its cost is a real backbone's. It is registered in a scratch MLflow
registry (SQLite + local artifacts) exactly as a real model is, so the benchmarks import it
with `import_model.py` and serve it with `bentoml serve`.

Architectures: `resnet18` (ResNet-18 layout: 11.2 M parameters, about 0.15 GMAC per sample at
128 x 32) and `resnet34` (21.3 M, about 0.30 GMAC).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from utils.dsp.feature_spec import DEFAULT_RECEIVERS, FeatureSpec

INPUT = "mel_spectrogram"
ARCHS: dict[str, tuple[int, ...]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def benchmark_spec() -> FeatureSpec:
    """The seed's input: 3 receivers, 128 mel bands, 32 frames, log-mel levels normalised to
    about zero mean and unit spread as a trained model's spec has them (scenes read about
    -60 dB)."""
    return FeatureSpec(receivers=DEFAULT_RECEIVERS[:3], norm_mean_db=-60.0, norm_std_db=20.0)


@dataclass
class _Builder:
    """Nodes and initialisers of one graph, with its parameter and multiply-add counts."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    params: int = 0
    macs: int = 0
    _n: int = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv(
        self,
        x: str,
        shape: tuple[int, int, int],
        c_out: int,
        k: int,
        stride: int,
        gain: float = 1.0,
        relu: bool = True,
    ) -> tuple[str, tuple[int, int, int]]:
        """Conv (BN folded: a bias) [+ ReLU]; returns the output and its `[C, H, W]`."""
        c_in, h, w = shape
        fan_in = c_in * k * k
        weight = self.rng.normal(0.0, gain * np.sqrt(2.0 / fan_in), (c_out, c_in, k, k))
        bias = np.zeros(c_out)
        pad = k // 2
        out = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [
                    x,
                    self.const("w", weight.astype(np.float32)),
                    self.const("b", bias.astype(np.float32)),
                ],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        h_out, w_out = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        self.params += weight.size + bias.size
        self.macs += c_out * h_out * w_out * fan_in
        if relu:
            out = self.relu(out)
        return out, (c_out, h_out, w_out)

    def relu(self, x: str) -> str:
        out = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    def op(self, kind: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def basic_block(
        self, x: str, shape: tuple[int, int, int], c_out: int, stride: int
    ) -> tuple[str, tuple[int, int, int]]:
        """ResNet's BasicBlock: two 3x3 convs and a shortcut (a 1x1 conv when shapes change).
        The second conv is scaled down so that the residual sum keeps its variance."""
        y, shape_y = self.conv(x, shape, c_out, 3, stride)
        y, shape_y = self.conv(y, shape_y, c_out, 3, 1, gain=0.5, relu=False)
        if stride != 1 or shape[0] != c_out:
            x, _ = self.conv(x, shape, c_out, 1, stride, relu=False)
        return self.relu(self.op("Add", [y, x])), shape_y

    def dense(self, x: str, n_in: int, n_out: int, scale: float) -> str:
        weight = self.rng.normal(0.0, scale / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
        self.params += weight.size + n_out
        self.macs += n_in * n_out
        return self.op(
            "Gemm", [x, self.const("fc", weight), self.const("fcb", np.zeros(n_out, np.float32))]
        )


def resnet_localizer(
    spec: FeatureSpec, arch: str = "resnet18", seed: int = 0
) -> tuple[onnx.ModelProto, int, int]:
    """(model, parameters, multiply-adds per sample) of a ResNet backbone with the seed's heads.

    Positions stay within 1 degree of the receivers' centroid (tanh), sigmas in [0.02, 0.32]
    degrees (sigmoid): finite and positive, so the service's contract check and its answers
    treat it as a working model."""
    g = _Builder(np.random.default_rng(seed))
    shape = (spec.n_channels, spec.n_mels, spec.n_frames)
    x, shape = g.conv(INPUT, shape, WIDTHS[0], 7, 2)  # the stem
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    shape = (shape[0], (shape[1] - 1) // 2 + 1, (shape[2] - 1) // 2 + 1)
    for stage, (width, blocks) in enumerate(zip(WIDTHS, ARCHS[arch], strict=True)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x, shape = g.basic_block(x, shape, width, stride)
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    head = g.dense(pooled, WIDTHS[-1], 4, scale=1.0)
    sizes = g.const("split", np.array([2, 2], np.int64))
    g.nodes.append(helper.make_node("Split", [head, sizes], ["pos_raw", "sig_raw"], axis=1))
    receivers = spec.receivers
    centroid = np.array(
        [np.mean([r.latitude for r in receivers]), np.mean([r.longitude for r in receivers])],
        np.float32,
    )
    tanh = g.op("Tanh", ["pos_raw"])
    g.nodes.append(helper.make_node("Add", [tanh, g.const("centroid", centroid)], ["positions"]))
    squashed = g.op("Sigmoid", ["sig_raw"])
    scaled = g.op("Mul", [squashed, g.const("span", np.array(0.3, np.float32))])
    g.nodes.append(
        helper.make_node(
            "Add", [scaled, g.const("floor", np.array(0.02, np.float32))], ["uncertainties"]
        )
    )
    graph = helper.make_graph(
        g.nodes,
        f"{arch}_localizer",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *shape_in(spec)])],
        [
            helper.make_tensor_value_info("positions", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("uncertainties", TensorProto.FLOAT, ["batch", 2]),
        ],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model, g.params, g.macs


def shape_in(spec: FeatureSpec) -> tuple[int, int, int]:
    return (spec.n_channels, spec.n_mels, spec.n_frames)


def register(registry: Path, arch: str = "resnet18", seed: int = 0) -> str:
    """Build the model and register it as Production in a scratch registry; its tracking URI."""
    from mlflow.tracking import MlflowClient

    from demo.bootstrap import register_onnx_model

    registry.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(registry / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    spec = benchmark_spec()
    model, params, macs = resnet_localizer(spec, arch, seed)
    name = "localization_model"
    experiment = client.get_experiment_by_name("benchmark-models")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(
            "benchmark-models", artifact_location=(registry / "artifacts").resolve().as_uri()
        )
    )
    register_onnx_model(
        client,
        experiment_id,
        name,
        model,
        spec,
        params={"arch": arch, "seed": seed, "parameters": params, "macs_per_sample": macs},
    )
    print(
        f"{arch}: {params / 1e6:.1f} M parameters, {macs / 1e9:.3f} GMAC "
        f"({2 * macs / 1e9:.3f} GFLOP) per sample, input [B, {', '.join(map(str, shape_in(spec)))}]"
    )
    return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, required=True, help="scratch registry folder")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet18")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(register(args.registry, args.arch, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
