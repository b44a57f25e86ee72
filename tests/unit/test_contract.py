"""The model contract (`utils.model.contract`) against small ONNX graphs, branch by branch.

Every refusal the import and the service rely on, declared interface and smoke inference alike,
is met here by a graph that is wrong in exactly that one way (built with `onnx.helper`), and the
message is checked to name the input or output and what was expected (README, "Importing a
model"). No server, no registry: the graphs are a few nodes, the smoke inference is the real one.
The same refusal through a real `import_model.py` run is in
tests/integration/test_promises_import.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.model_factory import toy_model
from utils.dsp.feature_spec import FEATURE_SPEC_FILENAME, FeatureSpec
from utils.model.contract import (
    ContractViolation,
    CorruptModelError,
    ModelContract,
    validate_model_folder,
)

INPUT = "mel_spectrogram"
SHAPE: list[int | str] = ["batch", 5, 128, 32]
FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE
GOOD_POSITIONS = [45.0, 8.0]
GOOD_UNCERTAINTIES = [0.1, 0.2, 0.3]


class Out:
    """One graph output: a constant row per sample (`[B, len(row)]`, or `[B]` when `row` is a
    number), declared with `shape` and `dtype`; `mixes_batch` adds 0.01 x the mean over the
    whole batch (so a sample's answer depends on its batch mates); `fixed_batch` reshapes the
    result to `[2, ...]` (so batch 1 fails at run time); `hidden_width` passes it through an
    all-true `Compress`, so its width is known only at run time (onnxruntime infers declared
    output shapes from the graph otherwise)."""

    def __init__(
        self,
        row: Sequence[float] | float,
        shape: Sequence[int | str] | None = None,
        dtype: int = FLOAT,
        *,
        mixes_batch: bool = False,
        fixed_batch: bool = False,
        hidden_width: bool = False,
    ) -> None:
        self.row = row
        if shape is None:
            shape = ["batch"] if isinstance(row, (int, float)) else ["batch", len(row)]
        self.shape = list(shape)
        self.dtype = dtype
        self.mixes_batch = mixes_batch
        self.fixed_batch = fixed_batch
        self.hidden_width = hidden_width


def graph(
    outputs: dict[str, Out],
    *,
    inputs: Sequence[tuple[str, int, Sequence[int | str]]] = ((INPUT, FLOAT, SHAPE),),
) -> onnx.ModelProto:
    """Outputs computed from the first input: flatten per sample, mean, x 0, + the constant."""
    nodes: list[onnx.NodeProto] = []
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(0.01, np.float32), "hundredth"),
    ]
    if inputs:
        first = inputs[0][0]
        nodes += [
            helper.make_node("Cast", [first], ["x32"], to=FLOAT),
            helper.make_node("Flatten", ["x32"], ["flat"], axis=1),
            helper.make_node("ReduceMean", ["flat", "axis1"], ["level"], keepdims=1),  # [B, 1]
            helper.make_node("Mul", ["level", "zero"], ["nought"]),  # [B, 1] zeros
            helper.make_node("ReduceMean", ["level", "axis0"], ["batch_mean"], keepdims=1),
            helper.make_node("Mul", ["batch_mean", "hundredth"], ["batch_term"]),
            helper.make_node("Squeeze", ["nought", "axis1"], ["nought_1d"]),  # [B]
        ]
    for name, out in outputs.items():
        scalar = isinstance(out.row, (int, float))
        row = np.array(out.row, np.float32)
        inits.append(numpy_helper.from_array(row, f"{name}_row"))
        value = f"{name}_value"
        if inputs:
            nodes.append(
                helper.make_node(
                    "Add", ["nought_1d" if scalar else "nought", f"{name}_row"], [value]
                )
            )
        else:  # no input to follow: a constant with a batch of one
            inits.append(
                numpy_helper.from_array(np.array([1] + list(row.shape), np.int64), f"{name}_s")
            )
            nodes.append(helper.make_node("Reshape", [f"{name}_row", f"{name}_s"], [value]))
        if out.mixes_batch:
            nodes.append(helper.make_node("Add", [value, "batch_term"], [f"{value}_mixed"]))
            value = f"{value}_mixed"
        if out.hidden_width:
            keep = numpy_helper.from_array(np.ones(row.shape, bool), f"{name}_keep")
            inits.append(keep)
            nodes.append(
                helper.make_node("Compress", [value, f"{name}_keep"], [f"{value}_c"], axis=1)
            )
            value = f"{value}_c"
        if out.fixed_batch:
            inits.append(
                numpy_helper.from_array(np.array([2] + list(row.shape), np.int64), f"{name}_two")
            )
            nodes.append(helper.make_node("Reshape", [value, f"{name}_two"], [f"{value}_two"]))
            value = f"{value}_two"
        nodes.append(helper.make_node("Cast", [value], [name], to=out.dtype))
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "contract-case",
            [helper.make_tensor_value_info(n, t, list(s)) for n, t, s in inputs],
            [helper.make_tensor_value_info(n, o.dtype, o.shape) for n, o in outputs.items()],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def good(**changes: Out) -> dict[str, Out]:
    """The two required outputs, valid, with `changes` applied or added."""
    outputs = {"positions": Out(GOOD_POSITIONS), "uncertainties": Out(GOOD_UNCERTAINTIES)}
    outputs.update(changes)
    return outputs


def folder_with(
    tmp_path: Path, model: onnx.ModelProto | bytes | None, spec: FeatureSpec | str | None
) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if isinstance(model, bytes):
        (folder / "model.onnx").write_bytes(model)
    elif model is not None:
        onnx.save(model, folder / "model.onnx")
    if isinstance(spec, FeatureSpec):
        spec.save(folder / FEATURE_SPEC_FILENAME)
    elif isinstance(spec, str):
        (folder / FEATURE_SPEC_FILENAME).write_text(spec)
    return folder


def refusal(
    tmp_path: Path,
    model: onnx.ModelProto | bytes | None,
    spec: FeatureSpec | str | None = None,
    *,
    full_check: bool = True,
) -> Exception:
    folder = folder_with(tmp_path, model, FeatureSpec() if spec is None else spec)
    with pytest.raises((ContractViolation, CorruptModelError)) as caught:
        validate_model_folder(folder, full_check=full_check)
    return caught.value


# --- what passes ---------------------------------------------------------------------------


def test_the_toy_models_pass_with_their_spec(tmp_path: Path) -> None:
    contract = validate_model_folder(folder_with(tmp_path, toy_model(), FeatureSpec()))
    assert isinstance(contract, ModelContract)
    assert contract.input_shape == ("batch", 5, 128, 32)
    assert contract.uncertainty_width == 3 and not contract.has_confidence
    assert contract.feature_spec_source == "artifact" and contract.warnings == ()
    assert len(contract.sha256) == 64


@pytest.mark.parametrize("shape", [["batch"], ["batch", 1]], ids=["[B]", "[B,1]"])
def test_two_columns_and_a_confidence_pass(tmp_path: Path, shape: list[int | str]) -> None:
    row: Sequence[float] | float = 0.75 if len(shape) == 1 else [0.75]
    model = graph(good(uncertainties=Out([0.1, 0.2]), confidence=Out(row, shape)))
    contract = validate_model_folder(folder_with(tmp_path, model, FeatureSpec()))
    assert contract.uncertainty_width == 2 and contract.has_confidence


def test_the_factory_confidence_option_passes(tmp_path: Path) -> None:
    model = toy_model(uncertainty_width=2, uncertainty_bias=[0.1, 0.2], confidence=0.8125)
    contract = validate_model_folder(folder_with(tmp_path, model, FeatureSpec()))
    assert contract.uncertainty_width == 2 and contract.has_confidence


def test_bounds_are_inclusive_where_documented(tmp_path: Path) -> None:
    """Latitude +-90 and longitude up to 360 in magnitude (the service wraps it), rho just
    inside (-1, 1) and a confidence of exactly 0 or 1 are all valid outputs."""
    model = graph(
        good(
            positions=Out([-90.0, 359.5]),
            uncertainties=Out([1e-6, 1e-6, -0.999]),
            confidence=Out(1.0),
        )
    )
    assert validate_model_folder(folder_with(tmp_path, model, FeatureSpec())).has_confidence


@pytest.mark.parametrize(
    ("channels", "names"), [(3, ["Torino", "Milano-Baggio", "Genova"]), (7, None)]
)
def test_without_a_spec_the_defaults_are_sized_to_the_model(
    tmp_path: Path, channels: int, names: list[str] | None
) -> None:
    folder = folder_with(tmp_path, toy_model(channels=channels), None)
    contract = validate_model_folder(folder)
    spec = contract.feature_spec
    assert contract.feature_spec_source == "defaults"
    assert spec.n_channels == channels and contract.input_shape[1] == channels
    expected = names or [f"receiver-{i}" for i in range(channels)]
    assert [r.name for r in spec.receivers] == expected
    (warning,) = contract.warnings
    assert f"no {FEATURE_SPEC_FILENAME} beside the model" in warning
    assert f"({channels} receivers: {', '.join(expected)})" in warning


# --- corrupt or unreadable -------------------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    error = refusal(tmp_path, None)
    assert isinstance(error, CorruptModelError)
    assert str(error) == "model.onnx is missing from the model folder"


@pytest.mark.parametrize(
    ("full_check", "message"),
    [(True, "onnx.checker rejects model.onnx"), (False, "onnxruntime cannot load model.onnx")],
    ids=["import", "serving"],
)
def test_bytes_that_are_not_onnx(tmp_path: Path, full_check: bool, message: str) -> None:
    error = refusal(tmp_path, b"\x08\x07not-onnx" * 20, full_check=full_check)
    assert isinstance(error, CorruptModelError) and str(error).startswith(message)


# --- declared interface ----------------------------------------------------------------------


def _interface_cases() -> dict[str, tuple[object, str]]:
    two_inputs = ((INPUT, FLOAT, SHAPE), ("extra", FLOAT, ["batch", 1]))
    return {
        "no input": (
            lambda: graph(good(), inputs=()),
            "input: expected exactly one input 'mel_spectrogram', got none",
        ),
        "two inputs": (
            lambda: graph(good(), inputs=two_inputs),
            "input: expected exactly one input 'mel_spectrogram', got 'mel_spectrogram', 'extra'",
        ),
        "input misnamed": (
            lambda: toy_model(input_name="spectrogram"),
            "input: expected exactly one input 'mel_spectrogram', got 'spectrogram'",
        ),
        "input float64": (
            lambda: graph(good(), inputs=((INPUT, DOUBLE, SHAPE),)),
            "input 'mel_spectrogram': expected float32, got tensor(double)",
        ),
        "input rank 3": (
            lambda: graph(good(), inputs=((INPUT, FLOAT, ["batch", 128, 32]),)),
            "input 'mel_spectrogram': expected rank 4 [batch, channels, n_mels, frames], "
            "got shape ['batch', 128, 32]",
        ),
        "batch axis fixed": (
            lambda: graph(good(), inputs=((INPUT, FLOAT, [1, 5, 128, 32]),)),
            "input 'mel_spectrogram': the batch axis must be dynamic, it is fixed at 1",
        ),
        "channels dynamic": (
            lambda: graph(good(), inputs=((INPUT, FLOAT, ["batch", "channels", 128, 32]),)),
            "input 'mel_spectrogram': channels, n_mels and frames must be fixed, "
            "got ['batch', 'channels', 128, 32]",
        ),
        "positions misnamed": (
            lambda: toy_model(positions_name="position"),
            "output 'positions' is missing (outputs: ['position', 'uncertainties'])",
        ),
        "uncertainties missing": (
            lambda: graph({"positions": Out(GOOD_POSITIONS)}),
            "output 'uncertainties' is missing (outputs: ['positions'])",
        ),
        "positions float64": (
            lambda: graph(good(positions=Out(GOOD_POSITIONS, dtype=DOUBLE))),
            "output 'positions': expected float32, got tensor(double)",
        ),
        "positions three wide": (
            lambda: graph(good(positions=Out([45.0, 8.0, 0.0]))),
            "output 'positions': expected [batch, 2], got ['batch', 3]",
        ),
        "uncertainties four wide": (
            lambda: toy_model(uncertainty_width=4),
            "output 'uncertainties': expected [batch, 2] or [batch, 3], got ['batch', 4]",
        ),
        "uncertainties rank 1": (
            lambda: graph(good(uncertainties=Out(0.1))),
            "output 'uncertainties': expected [batch, 2] or [batch, 3], got ['batch']",
        ),
        "fewer channels than the spec's receivers": (
            lambda: toy_model(channels=3),
            "input 'mel_spectrogram': shape [3, 128, 32] does not match the feature spec "
            "[5, 128, 32] (channels = receivers, n_mels, frames)",
        ),
    }


@pytest.mark.parametrize("case", list(_interface_cases()))
def test_declared_interface_refusals(tmp_path: Path, case: str) -> None:
    build, message = _interface_cases()[case]
    error = refusal(tmp_path, build())  # type: ignore[operator]
    assert isinstance(error, ContractViolation), error
    assert str(error) == message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{not json", "feature_spec.json is invalid: "),
        (json.dumps({"n_mels": 0}), "feature_spec.json is invalid: 1 validation error"),
        (json.dumps({"surprise": 1}), "feature_spec.json is invalid: 1 validation error"),
    ],
    ids=["not json", "out of bounds", "unknown field"],
)
def test_an_invalid_feature_spec_is_refused(tmp_path: Path, spec: str, message: str) -> None:
    error = refusal(tmp_path, toy_model(), spec)
    assert isinstance(error, ContractViolation) and str(error).startswith(message), error


# --- smoke inference -------------------------------------------------------------------------


SMOKE_CASES: dict[str, tuple[dict[str, Out], str]] = {
    "inference fails at batch 1": (
        good(positions=Out(GOOD_POSITIONS, fixed_batch=True)),
        "smoke inference failed: ",
    ),
    "positions three wide at run time": (
        good(positions=Out([45.0, 8.0, 1.0], ["batch", "width"], hidden_width=True)),
        "output 'positions': batch 2 gave shape (2, 3)",
    ),
    "uncertainties four wide at run time": (
        good(uncertainties=Out([0.1, 0.2, 0.0, 0.0], ["batch", "width"], hidden_width=True)),
        "output 'uncertainties': batch 2 gave shape (2, 4), expected [2, 2] or [2, 3]",
    ),
    "uncertainties one wide at run time": (
        good(uncertainties=Out([0.1], ["batch", "width"], hidden_width=True)),
        "output 'uncertainties': batch 2 gave shape (2, 1), expected [2, 2] or [2, 3]",
    ),
    "NaN position": (
        good(positions=Out([float("nan"), 8.0])),
        "output 'positions': non-finite values on a valid input",
    ),
    "infinite sigma": (
        good(uncertainties=Out([0.1, float("inf"), 0.0])),
        "output 'uncertainties': non-finite values on a valid input",
    ),
    "NaN confidence": (
        good(confidence=Out(float("nan"))),
        "output 'confidence': non-finite values on a valid input",
    ),
    "latitude beyond 90": (
        good(positions=Out([90.5, 8.0])),
        "output 'positions': not latitude/longitude in degrees ([[90.5, 8.0], [90.5, 8.0]])",
    ),
    "longitude beyond 360": (
        good(positions=Out([45.0, -361.0])),
        "output 'positions': not latitude/longitude in degrees ([[45.0, -361.0], [45.0, -361.0]])",
    ),
    "zero sigma": (
        good(uncertainties=Out([0.0, 0.2, 0.0])),
        "output 'uncertainties': sigmas must be > 0",
    ),
    "negative sigma, two columns": (
        good(uncertainties=Out([0.1, -0.2])),
        "output 'uncertainties': sigmas must be > 0",
    ),
    "rho of 1": (
        good(uncertainties=Out([0.1, 0.2, 1.0])),
        "output 'uncertainties': rho (column 2) must be in (-1, 1)",
    ),
    "rho below -1": (
        good(uncertainties=Out([0.1, 0.2, -1.5])),
        "output 'uncertainties': rho (column 2) must be in (-1, 1)",
    ),
    "confidence above 1": (
        good(confidence=Out(1.5)),
        "output 'confidence': expected [batch] or [batch, 1] in [0, 1]",
    ),
    "confidence below 0": (
        good(confidence=Out(-0.01)),
        "output 'confidence': expected [batch] or [batch, 1] in [0, 1]",
    ),
    "confidence two wide": (
        good(confidence=Out([0.5, 0.5])),
        "output 'confidence': expected [batch] or [batch, 1] in [0, 1]",
    ),
    "positions depend on the batch": (
        good(positions=Out(GOOD_POSITIONS, mixes_batch=True)),
        "output 'positions': batch 1 and batch 2 disagree on the same sample "
        "(the batch axis is not independent)",
    ),
    "uncertainties depend on the batch": (
        good(uncertainties=Out([2.0, 2.0], mixes_batch=True)),
        "output 'uncertainties': batch 1 and batch 2 disagree on the same sample "
        "(the batch axis is not independent)",
    ),
}


@pytest.mark.parametrize("case", list(SMOKE_CASES))
def test_smoke_inference_refusals(tmp_path: Path, case: str) -> None:
    outputs, message = SMOKE_CASES[case]
    error = refusal(tmp_path, graph(outputs))
    assert isinstance(error, ContractViolation), error
    assert str(error).startswith(message), error
    if not message.endswith(": "):
        assert str(error) == message


def test_the_factory_rho_option_is_refused(tmp_path: Path) -> None:
    """The model the integration test imports for real: refused here for the same reason."""
    error = refusal(tmp_path, toy_model(uncertainty_bias=[0.1, 0.2, 1.5]))
    assert str(error) == "output 'uncertainties': rho (column 2) must be in (-1, 1)"


def test_the_service_refuses_the_same_way(tmp_path: Path) -> None:
    """`full_check=False` (the service at start and at a reload, without the onnx package)
    runs the same interface and smoke checks."""
    folder = folder_with(tmp_path, graph(good(uncertainties=Out([0.1, 0.2, 1.0]))), FeatureSpec())
    with pytest.raises(ContractViolation, match=r"rho \(column 2\) must be in \(-1, 1\)"):
        validate_model_folder(folder, full_check=False)
