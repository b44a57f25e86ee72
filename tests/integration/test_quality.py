"""The fix verdict and the response builder, without a server: what makes an answer a fix, what
makes the model broken, and that the demo model's own held-out scenes are fixes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.registry import download_registered_model
from utils.api.responses import ModelOutputError, build_predictions
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.model.quality import (
    POWER_MAX_KEY,
    REGION_KEYS,
    SIGMA_MAX_KEY,
    SILENCE_DB,
    FixEnvelope,
    assess,
    channel_power_db,
    noise_spread_db,
)
from utils.model.runtime import ModelRuntime, RawPredictions

SPEC = FeatureSpec()
TRAINING = {
    REGION_KEYS[0]: 44.3,
    REGION_KEYS[1]: 45.8,
    REGION_KEYS[2]: 7.0,
    REGION_KEYS[3]: 9.6,
    SIGMA_MAX_KEY: 100_000.0,
    POWER_MAX_KEY: 5.0,
}


def envelope(training: dict[str, float] | None = None) -> FixEnvelope:
    return FixEnvelope.for_model(SPEC, TRAINING if training is None else training, 1.0)


def verdict(
    lat: float = 45.0,
    lon: float = 8.0,
    sigma: float = 30_000.0,
    power: list[float] | None = None,
    spread: list[float] | None = None,
    frames: int = 32,
    env: FixEnvelope | None = None,
) -> tuple[str, tuple[str, ...]]:
    out = assess(
        np.array([lat]),
        np.array([lon]),
        np.array([sigma]),
        np.array([power or [-60.0] * 5]),
        np.array([spread or [10.0] * 5]),
        np.array([frames]),
        env or envelope(),
        SPEC,
    )[0]
    return out.quality, out.warnings


def test_an_ordinary_answer_is_a_fix_without_warnings() -> None:
    assert verdict() == ("fix", ())


@pytest.mark.parametrize(
    ("silent", "quality"), [(0, "fix"), (1, "fix"), (2, "fix"), (3, "no_fix"), (5, "no_fix")]
)
def test_a_fix_needs_three_receivers_that_hear_a_signal(silent: int, quality: str) -> None:
    spread = [0.5] * silent + [10.0] * (5 - silent)
    got, warnings = verdict(spread=spread)
    assert got == quality
    if silent:
        assert warnings[0].startswith(f"no signal above the noise floor on {silent} of 5")
        assert ("a fix needs at least 3" in warnings[0]) == (quality == "no_fix")


def test_silence_is_not_a_signal_even_with_spread() -> None:
    assert verdict(power=[SILENCE_DB] * 5)[0] == "no_fix"


def test_short_captures_need_more_spread_to_count_as_a_signal() -> None:
    # 1 frame averages nothing: noise spreads sqrt(32) times more than over 32 frames
    assert verdict(spread=[3.0] * 5, frames=32)[0] == "fix"
    assert verdict(spread=[3.0] * 5, frames=1)[0] == "no_fix"


def test_louder_than_trained_is_not_a_fix() -> None:
    quality, warnings = verdict(power=[-60.0, -60.0, -60.0, -60.0, 16.0])
    assert quality == "no_fix" and "Montanaro" in warnings[0] and "15 dB" in warnings[0]
    assert verdict(power=[14.0] * 5)[0] == "fix"


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(46.2, 8.0), (44.0, 8.0), (45.0, 6.6), (45.0, 9.9), (45.0, 8.0 + 360.0 * 3 + 2.5)],
)
def test_outside_the_region_is_not_a_fix(lat: float, lon: float) -> None:
    quality, warnings = verdict(lat=lat, lon=lon)
    assert quality == "no_fix" and "outside the region" in warnings[0]


def test_inside_the_widened_region_and_across_the_wrap_is_a_fix() -> None:
    assert verdict(lat=45.9, lon=9.8)[0] == "fix"  # within the 10 % margin
    assert verdict(lon=8.0 - 360.0)[0] == "fix"


def test_wider_than_trained_is_not_a_fix() -> None:
    assert verdict(sigma=150_000.0)[0] == "fix"  # 1.5 x the held-out maximum
    quality, warnings = verdict(sigma=150_001.0)
    assert quality == "no_fix" and "exceeds the 150 km" in warnings[0]


def test_without_training_metrics_the_receivers_bound_the_envelope() -> None:
    env = envelope({})
    assert env.source == "receivers"
    lats = [r.latitude for r in SPEC.receivers]
    assert env.lat_min == pytest.approx(min(lats) - 1.0) and env.lat_max == pytest.approx(
        max(lats) + 1.0
    )
    assert 300_000 < env.max_sigma_m < 600_000  # the diagonal of that box
    assert env.max_power_db == 10.0
    assert verdict(env=env)[0] == "fix"


def test_channel_power_is_exact_and_does_not_overflow() -> None:
    capture = np.full((2, 100), 3 + 4j, dtype=np.complex64)
    np.testing.assert_allclose(channel_power_db(capture), 10 * np.log10(25.0))
    huge = np.full((1, 10), np.float32(3e38), dtype=np.complex64)
    assert np.isfinite(channel_power_db(huge)).all()
    assert channel_power_db(np.zeros((1, 5), np.complex64))[0] == SILENCE_DB


def test_noise_spread_is_measured_for_the_spec() -> None:
    spread = noise_spread_db(SPEC)
    assert 0.3 < spread < 2.0  # white noise: mel bands nearly flat once averaged
    coarse = FeatureSpec.model_validate({**SPEC.model_dump(), "n_frames": 4})
    assert noise_spread_db(coarse) > spread  # fewer frames, less averaging


def raw(
    positions: list[list[float]],
    uncertainties: list[list[float]],
    confidence: list[float] | None = None,
) -> RawPredictions:
    n = len(positions)
    return RawPredictions(
        np.array(positions, float),
        np.array(uncertainties, float),
        None if confidence is None else np.array(confidence, float),
        power_db=np.full((n, 5), -60.0),
        spread_db=np.full((n, 5), 10.0),
        frames=np.full(n, 32),
        preprocess_s=0.0,
        model_s=0.0,
    )


def build(r: RawPredictions, **options: object) -> list:
    kwargs = {
        "spec": SPEC,
        "envelope": envelope(),
        "confidence_level": 0.95,
        "include_geojson": True,
        "model_version": "t",
        "inference_time_ms": 0.0,
        "session_id": None,
        **options,
    }
    return build_predictions(r, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("positions", "uncertainties", "confidence", "what"),
    [
        ([[np.nan, 8.0]], [[0.1, 0.1, 0.0]], None, "non-finite position"),
        ([[45.0, 8.0]], [[np.inf, 0.1, 0.0]], None, "non-finite uncertainties"),
        ([[45.0, 8.0]], [[0.1, np.nan]], None, "non-finite uncertainties"),
        ([[45.0, 8.0]], [[0.0, 0.1, 0.0]], None, "sigma <= 0"),
        ([[45.0, 8.0]], [[0.1, -0.1, 0.0]], None, "sigma <= 0"),
        ([[45.0, 8.0]], [[0.1, 0.1, 1.5]], None, "|rho| > 1"),
        ([[45.0, 8.0]], [[0.1, 0.1, 0.0]], [np.nan], "non-finite confidence"),
    ],
)
def test_impossible_outputs_are_a_broken_model_never_a_confident_answer(
    positions: list, uncertainties: list, confidence: list | None, what: str
) -> None:
    good = [[45.0, 8.0], [45.1, 8.1]]
    with pytest.raises(ModelOutputError) as info:
        build(
            raw(
                good + positions,
                [[0.1, 0.1, 0.0][: len(uncertainties[0])]] * 2 + uncertainties,
                None if confidence is None else [0.5, 0.5] + confidence,
            )
        )
    assert info.value.index == 2 and str(info.value) == f"sample 2: {what}"


def test_an_ellipse_too_large_to_draw_is_omitted_with_a_warning() -> None:
    (huge,) = build(raw([[45.0, 8.0]], [[300.0, 300.0, 0.0]]))  # 300 degrees of sigma
    assert huge.ellipse.geojson is None and huge.quality == "no_fix"
    assert any(w.startswith("GeoJSON omitted") for w in huge.warnings)
    assert huge.uncertainty.sigma_y > 3e7  # reported as the model said, not clamped


def test_a_vanishing_ellipse_is_still_drawn() -> None:
    (tiny,) = build(raw([[45.0, 8.0]], [[0.1, 0.1, 0.0]]), confidence_level=1e-300)
    assert tiny.ellipse.semi_major_m < 1e-140
    ring = tiny.ellipse.geojson["geometry"]["coordinates"][0]
    assert ring[0] == pytest.approx([8.0, 45.0])


def test_sub_millimetre_sigmas_are_raised_never_lowered() -> None:
    (p,) = build(raw([[45.0, 8.0]], [[1e-15, 1e-15, 0.0]]))
    assert p.uncertainty.sigma_x == p.uncertainty.sigma_y == 1e-3


def test_held_out_scenes_of_the_demo_model_are_fixes(demo_registry, report: list[str]) -> None:
    settings, _ = demo_registry
    folder: Path = download_registered_model(settings, stage="Production")
    from utils.model.registry import run_metrics

    metrics = run_metrics(settings.tracking_uri, demo_registry[1].run_id)
    for key in (*REGION_KEYS, SIGMA_MAX_KEY, POWER_MAX_KEY):
        assert key in metrics, f"training metric {key} is logged with the model"
    spec = FeatureSpec.load(folder / "feature_spec.json")
    runtime = ModelRuntime(
        folder,
        {"metrics": metrics},
        intra_threads=1,
        inter_threads=1,
        providers=["CPUExecutionProvider"],
    )
    assert runtime.envelope.source == "training"
    scenes = generate_scenes(1000, seed=777, spec=spec)
    answers = build(
        runtime.predict(list(scenes.iq)),
        spec=spec,
        envelope=runtime.envelope,
        include_geojson=False,
    )
    share = np.mean([a.quality == "fix" for a in answers])
    report.append(f"demo model, 1000 held-out scenes: {share:.1%} answered as fixes")
    assert share >= 0.98
