"""Train the demo localization model on synthetic scenes, without torch.

Pipeline (deterministic under the seed):

1. scenes from `utils.dsp.synthetic`, features through `utils.dsp.preprocessing.preprocess` (the
   serving function) and the ONNX feature extractor (the serving graph);
2. position: a ReLU MLP (scikit-learn) from standardised features to standardised lat/lon;
3. uncertainty: a linear heteroscedastic bivariate-Gaussian head (log sigmas and correlation),
   fitted by maximum likelihood on a split the MLP never saw, then one scale factor calibrated so
   that 95 % ellipses hold 95 % of that split;
4. the whole thing exported as one ONNX graph and evaluated on a held-out split through
   onnxruntime: median error in metres and ellipse coverage, as the service will compute them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from geographiclib.geodesic import Geodesic
from scipy.optimize import minimize
from sklearn.neural_network import MLPRegressor

from demo.onnx_graph import (
    INPUT_NAME,
    DemoWeights,
    DenseLayer,
    feature_model,
    localization_model,
)
from demo.progress import Steps, steps
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.preprocessing import preprocess
from utils.dsp.synthetic import SceneConfig, generate_scenes
from utils.geo.ellipse import (
    ONE_SIGMA_PROBABILITY,
    confidence_scale,
    ellipse_axes,
    local_offsets_m,
    mahalanobis_sq,
    sigmas_deg_to_m,
)
from utils.model.quality import POWER_MAX_KEY, REGION_KEYS, SIGMA_MAX_KEY, channel_power_db

log = logging.getLogger(__name__)

CHI2_95 = float(confidence_scale(0.95) ** 2)
RHO_LIMIT = 0.95


@dataclass(frozen=True)
class TrainConfig:
    n_scenes: int = 12_000
    seed: int = 20_261_126
    hidden_layers: tuple[int, ...] = (64, 64)
    uncertainty_fraction: float = 0.3
    test_fraction: float = 0.2
    chunk: int = 500
    l2: float = 1e-3


@dataclass
class TrainedDemo:
    onnx_model: onnx.ModelProto
    spec: FeatureSpec
    metrics: dict[str, float]
    params: dict[str, str | int | float]
    test_errors_m: np.ndarray = field(repr=False)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _normalised_spec(base: FeatureSpec, iq: np.ndarray) -> FeatureSpec:
    """Normalisation constants: mean and std of the dB values over the first chunk."""
    db = preprocess(iq, base)  # base has mean 0, std 1: these are raw dB
    update = {"norm_mean_db": round(float(db.mean()), 4), "norm_std_db": round(float(db.std()), 4)}
    return FeatureSpec.model_validate({**base.model_dump(), **update})


def _dataset(
    cfg: TrainConfig,
    base: FeatureSpec,
    world: SceneConfig,
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[FeatureSpec, np.ndarray, np.ndarray, np.ndarray, float]:
    """(spec, features [N, 3C], targets [N, 2], mel inputs of the test split, the strongest
    receiver level in dB re full scale: the service's envelope of trained levels)."""
    n_test = int(round(cfg.n_scenes * cfg.test_fraction))
    test_start = cfg.n_scenes - n_test
    spec: FeatureSpec | None = None
    session: ort.InferenceSession | None = None
    features, targets, test_inputs = [], [], []
    loudest = -np.inf
    for start in range(0, cfg.n_scenes, cfg.chunk):
        n = min(cfg.chunk, cfg.n_scenes - start)
        scenes = generate_scenes(n, cfg.seed, base, world, start=start)
        if spec is None:
            spec = _normalised_spec(base, scenes.iq)
            session = _session(feature_model(spec))
        assert session is not None
        mel = preprocess(scenes.iq, spec)
        loudest = max(loudest, float(channel_power_db(scenes.iq).max()))
        features.append(session.run(None, {INPUT_NAME: mel})[0])
        targets.append(np.stack([scenes.tx_latitude, scenes.tx_longitude], axis=1))
        if start + n > test_start:
            test_inputs.append(mel[max(0, test_start - start) :])
        advance(n)
    assert spec is not None
    return (
        spec,
        np.concatenate(features),
        np.concatenate(targets),
        np.concatenate(test_inputs),
        loudest,
    )


def _nll_and_grad(
    params: np.ndarray, z: np.ndarray, r: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    """Mean bivariate-Gaussian negative log-likelihood of residuals `r` and its gradient."""
    d = z.shape[1]
    w, b = params[: 3 * d].reshape(d, 3), params[3 * d :]
    h = z @ w + b
    tanh = np.tanh(h[:, 2])
    rho = RHO_LIMIT * tanh
    u1, u2 = r[:, 0] * np.exp(-h[:, 0]), r[:, 1] * np.exp(-h[:, 1])
    den = 1.0 - rho**2
    q = u1**2 - 2 * rho * u1 * u2 + u2**2
    nll = h[:, 0] + h[:, 1] + 0.5 * np.log(den) + q / (2 * den)
    g = np.empty_like(h)
    g[:, 0] = 1.0 - (u1**2 - rho * u1 * u2) / den
    g[:, 1] = 1.0 - (u2**2 - rho * u1 * u2) / den
    g[:, 2] = (-rho / den - u1 * u2 / den + q * rho / den**2) * RHO_LIMIT * (1 - tanh**2)
    n = z.shape[0]
    grad_w = z.T @ g / n + 2 * l2 * w
    grad_b = g.mean(axis=0)
    return float(nll.mean() + l2 * np.sum(w**2)), np.concatenate([grad_w.ravel(), grad_b])


def _head_inputs(x: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return np.concatenate([x, pred, pred * pred], axis=1)


def _mahalanobis_sq(h: np.ndarray, r: np.ndarray) -> np.ndarray:
    rho = RHO_LIMIT * np.tanh(h[:, 2])
    return mahalanobis_sq(r[:, 1], r[:, 0], np.exp(h[:, 1]), np.exp(h[:, 0]), rho)


def geodesic_errors_m(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """WGS84 geodesic distance between predicted and true (lat, lon) rows."""
    geod = Geodesic.WGS84
    return np.array(
        [
            geod.Inverse(p[0], p[1], t[0], t[1], Geodesic.DISTANCE)["s12"]
            for p, t in zip(pred, truth, strict=True)
        ]
    )


def ellipse_coverage(
    positions: np.ndarray, uncertainties: np.ndarray, truth: np.ndarray, confidence: float
) -> float:
    """Share of true positions inside the model's ellipses at `confidence` (metres; the
    ellipse conventions of docs/api.md §5)."""
    lat, lon = positions[:, 0], positions[:, 1]
    sx, sy = sigmas_deg_to_m(lat, uncertainties[:, 0], uncertainties[:, 1])
    rho = uncertainties[:, 2] if uncertainties.shape[1] > 2 else 0.0
    east, north = local_offsets_m(truth[:, 0], truth[:, 1], lat, lon)
    d2 = mahalanobis_sq(east, north, sx, sy, rho)
    return float(np.mean(d2 <= confidence_scale(confidence) ** 2))


def _envelope_metrics(
    world: SceneConfig, positions: np.ndarray, uncertainties: np.ndarray, loudest_db: float
) -> dict[str, float]:
    """What the model was trained to answer, for the service to tell a fix from a non-fix."""
    sx, sy = sigmas_deg_to_m(positions[:, 0], uncertainties[:, 0], uncertainties[:, 1])
    rho = uncertainties[:, 2] if uncertainties.shape[1] > 2 else 0.0
    semi_major, _, _, _ = ellipse_axes(sx, sy, rho, ONE_SIGMA_PROBABILITY)
    return {
        REGION_KEYS[0]: world.lat_min,
        REGION_KEYS[1]: world.lat_max,
        REGION_KEYS[2]: world.lon_min,
        REGION_KEYS[3]: world.lon_max,
        SIGMA_MAX_KEY: float(semi_major.max()),
        POWER_MAX_KEY: loudest_db,
    }


def train_demo_model(
    cfg: TrainConfig | None = None,
    world: SceneConfig | None = None,
    base_spec: FeatureSpec | None = None,
) -> TrainedDemo:
    # a bar per step on a terminal: a first `make serve` trains for about a minute
    with steps() as job:
        return _train(cfg or TrainConfig(), world or SceneConfig(), base_spec or FeatureSpec(), job)


def _train(cfg: TrainConfig, world: SceneConfig, base: FeatureSpec, job: Steps) -> TrainedDemo:
    started = time.perf_counter()
    with job.step("synthetic scenes -> features", total=cfg.n_scenes) as advance:
        spec, feats, targets, test_mel, loudest_db = _dataset(cfg, base, world, advance)
    n = feats.shape[0]
    n_test = test_mel.shape[0]
    n_unc = int(round(n * cfg.uncertainty_fraction))
    n_fit = n - n_test - n_unc
    fit, unc, test = slice(0, n_fit), slice(n_fit, n_fit + n_unc), slice(n - n_test, n)
    log.info("features for %d scenes in %.1f s", n, time.perf_counter() - started)

    f_mean, f_std = feats[fit].mean(0), feats[fit].std(0) + 1e-6
    t_mean, t_std = targets[fit].mean(0), targets[fit].std(0)
    x = (feats - f_mean) / f_std
    y = (targets - t_mean) / t_std
    mlp = MLPRegressor(
        hidden_layer_sizes=cfg.hidden_layers,
        activation="relu",
        alpha=1e-3,
        learning_rate_init=1e-3,
        max_iter=400,
        early_stopping=True,
        n_iter_no_change=20,
        random_state=cfg.seed % (2**31),
    )
    with job.step("fitting the position MLP"):
        mlp.fit(x[fit], y[fit])
    pred_unc = mlp.predict(x[unc])

    z_raw = _head_inputs(x[unc], pred_unc)
    z_mean, z_std = z_raw.mean(0), z_raw.std(0) + 1e-6
    z = (z_raw - z_mean) / z_std
    residual = y[unc] - pred_unc
    d = z.shape[1]
    start = np.zeros(3 * d + 3)
    start[3 * d : 3 * d + 2] = np.log(residual.std(0))
    with job.step("fitting the uncertainty head"):
        fit_result = minimize(
            _nll_and_grad,
            start,
            args=(z, residual, cfg.l2),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 2000},
        )
    head_w = fit_result.x[: 3 * d].reshape(d, 3)
    head_b = fit_result.x[3 * d :]
    d2 = _mahalanobis_sq(z @ head_w + head_b, residual)
    sigma_scale = float(np.sqrt(np.quantile(d2, 0.95) / CHI2_95))

    n_layers = len(mlp.coefs_)
    weights = DemoWeights(
        feature_mean=f_mean,
        feature_std=f_std,
        position_layers=tuple(
            DenseLayer(mlp.coefs_[i], mlp.intercepts_[i], relu=i < n_layers - 1)
            for i in range(n_layers)
        ),
        target_mean=t_mean,
        target_std=t_std,
        head_mean=z_mean,
        head_std=z_std,
        head_weight=head_w,
        head_bias=head_b,
        sigma_scale=sigma_scale,
        rho_limit=RHO_LIMIT,
    )
    model = localization_model(spec, weights)

    with job.step("evaluating on the held-out scenes"):
        positions, uncertainties = _session(model).run(None, {INPUT_NAME: test_mel})
        truth = targets[test]
        errors = geodesic_errors_m(positions, truth)
    centroid = np.broadcast_to(t_mean, truth.shape)
    metrics = {
        "accuracy_meters": float(np.median(errors)),
        "error_p90_m": float(np.quantile(errors, 0.9)),
        "error_mean_m": float(errors.mean()),
        "baseline_centroid_median_error_m": float(np.median(geodesic_errors_m(centroid, truth))),
        "ellipse_coverage_95": ellipse_coverage(positions, uncertainties, truth, 0.95),
        "ellipse_coverage_1sigma": ellipse_coverage(positions, uncertainties, truth, 0.3935),
        "sigma_scale": sigma_scale,
        # the envelope of a fix (utils/model/quality.py): region, largest 1-sigma axis,
        # loudest level
        **_envelope_metrics(world, positions, uncertainties, loudest_db),
        "training_samples": float(n_fit + n_unc),
        "test_samples": float(n_test),
        "uncertainty_head_nll": float(fit_result.fun),
        "mlp_iterations": float(mlp.n_iter_),
        "train_seconds": time.perf_counter() - started,
    }
    params: dict[str, str | int | float] = {
        "n_scenes": cfg.n_scenes,
        "seed": cfg.seed,
        "hidden_layers": ",".join(map(str, cfg.hidden_layers)),
        "uncertainty_fraction": cfg.uncertainty_fraction,
        "test_fraction": cfg.test_fraction,
        "path_loss_exponent": world.path_loss_exponent,
        "shadowing_sigma_db": world.shadowing_sigma_db,
        "receivers": ",".join(r.name for r in spec.receivers),
        "model_input": f"[batch,{spec.n_channels},{spec.n_mels},{spec.n_frames}]",
    }
    log.info(
        "demo model: median error %.0f m, 95%% coverage %.3f, %.1f s",
        metrics["accuracy_meters"],
        metrics["ellipse_coverage_95"],
        metrics["train_seconds"],
    )
    return TrainedDemo(
        onnx_model=model, spec=spec, metrics=metrics, params=params, test_errors_m=errors
    )
