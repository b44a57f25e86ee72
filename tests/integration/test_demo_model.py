"""The demo model as registered: a valid ONNX contract (docs/api.md §8) that really localizes
(§8.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pyproj import Geod

from demo.onnx_graph import feature_model
from demo.train import ellipse_coverage, geodesic_errors_m
from tests.support.registry import download_registered_model
from utils.dsp.feature_spec import FEATURE_SPEC_FILENAME, FeatureSpec
from utils.dsp.preprocessing import preprocess
from utils.dsp.synthetic import SceneConfig, generate_scenes
from utils.geo.ellipse import ellipse_axes, model_uncertainty_to_metres

HELD_OUT_SEED = 777  # never used in training


@pytest.fixture(scope="module")
def model_dir(demo_registry) -> Path:
    settings, _ = demo_registry
    return download_registered_model(settings, stage="Production")


@pytest.fixture(scope="module")
def served_spec(model_dir: Path) -> FeatureSpec:
    return FeatureSpec.load(model_dir / FEATURE_SPEC_FILENAME)


@pytest.fixture(scope="module")
def session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def test_onnx_contract(model_dir: Path, served_spec: FeatureSpec) -> None:
    onnx.checker.check_model(str(model_dir / "model.onnx"))  # path form: external data checked
    assert list(model_dir.glob("*.data")), "weights are logged as external data beside the model"
    model = onnx.load(str(model_dir / "model.onnx"))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "mel_spectrogram"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param and not dims[0].HasField("dim_value"), "batch axis must be dynamic"
    assert [d.dim_value for d in dims[1:]] == [5, 128, 32] == list(served_spec.input_shape)
    outputs = {
        o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
        for o in model.graph.output
    }
    assert outputs == {"positions": ["batch", 2], "uncertainties": ["batch", 3]}


def test_batch_1_and_17_agree(session: ort.InferenceSession, served_spec: FeatureSpec) -> None:
    mel = preprocess(generate_scenes(17, seed=HELD_OUT_SEED, spec=served_spec).iq, served_spec)
    pos17, unc17 = session.run(None, {"mel_spectrogram": mel})
    assert pos17.shape == (17, 2) and unc17.shape == (17, 3)
    for i in range(17):
        pos1, unc1 = session.run(None, {"mel_spectrogram": mel[i : i + 1]})
        np.testing.assert_allclose(pos1[0], pos17[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(unc1[0], unc17[i], rtol=1e-4, atol=1e-6)
    assert np.isfinite(pos17).all() and (unc17[:, :2] > 0).all()
    assert (np.abs(unc17[:, 2]) < 1).all()


def test_feature_graph_computes_receiver_powers(served_spec: FeatureSpec) -> None:
    """The in-graph features equal a plain numpy reading of the log-mel input."""
    mel = preprocess(generate_scenes(6, seed=5, spec=served_spec).iq, served_spec)
    sess = ort.InferenceSession(
        feature_model(served_spec).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (got,) = sess.run(None, {"mel_spectrogram": mel})
    db = mel.astype(np.float64) * served_spec.norm_std_db + served_spec.norm_mean_db
    bands = (10 ** (db / 10)).mean(axis=3)
    total = 10 * np.log10(bands.sum(axis=2))
    peak = 10 * np.log10(bands.max(axis=2))
    want = np.concatenate([total, peak, total - total.max(axis=1, keepdims=True)], axis=1)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_really_localizes_on_held_out_scenes(
    session: ort.InferenceSession, served_spec: FeatureSpec, report: list[str]
) -> None:
    scenes = generate_scenes(1500, seed=HELD_OUT_SEED, spec=served_spec)
    positions, uncertainties = session.run(
        None, {"mel_spectrogram": preprocess(scenes.iq, served_spec)}
    )
    truth = np.stack([scenes.tx_latitude, scenes.tx_longitude], axis=1)
    errors = geodesic_errors_m(positions, truth)
    cfg = SceneConfig()
    centre = np.array([[(cfg.lat_min + cfg.lat_max) / 2, (cfg.lon_min + cfg.lon_max) / 2]])
    baseline = geodesic_errors_m(np.repeat(centre, len(truth), axis=0), truth)
    coverage95 = ellipse_coverage(positions, uncertainties, truth, 0.95)
    coverage1 = ellipse_coverage(positions, uncertainties, truth, 0.3935)
    report.append(
        f"demo model, {len(truth)} held-out scenes: median error {np.median(errors) / 1000:.1f} km"
        f" (region-centre guess {np.median(baseline) / 1000:.1f} km), p90 "
        f"{np.quantile(errors, 0.9) / 1000:.1f} km, 95% ellipse coverage {coverage95:.3f}, "
        f"1-sigma coverage {coverage1:.3f}"
    )
    assert 0.90 <= coverage95 <= 0.98
    assert 0.33 <= coverage1 <= 0.46
    # the same claim checked another way, on the service's own ellipses: the true transmitter's
    # geodesic distance and bearing from the fix (pyproj), projected on the drawn axes
    geometric = _inside_service_ellipses(positions, uncertainties, truth, 0.95)
    assert 0.90 <= geometric <= 0.98 and abs(geometric - coverage95) < 0.01, geometric
    assert np.median(errors) < 0.6 * np.median(baseline)


def _inside_service_ellipses(
    positions: np.ndarray, uncertainties: np.ndarray, truth: np.ndarray, confidence: float
) -> float:
    """Share of true positions inside the ellipses the service answers (semi-axes in metres,
    major axis' bearing), by geodesic distance and azimuth: nothing of the trainer's own
    tangent-plane offsets or Mahalanobis distance."""
    sx, sy, rho = model_uncertainty_to_metres(positions[:, 0], uncertainties)
    a, b, bearing, _ = ellipse_axes(sx, sy, rho, confidence)
    azimuth, _, distance = Geod(ellps="WGS84").inv(
        positions[:, 1], positions[:, 0], truth[:, 1], truth[:, 0]
    )
    angle = np.radians(np.asarray(azimuth) - bearing)
    along, across = distance * np.cos(angle), distance * np.sin(angle)
    return float(np.mean((along / a) ** 2 + (across / b) ** 2 <= 1.0))
