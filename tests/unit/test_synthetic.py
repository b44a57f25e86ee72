"""The scene generator: deterministic, and its physics is the model it claims."""

from __future__ import annotations

import numpy as np

from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import (
    SceneConfig,
    free_space_loss_db,
    generate_scenes,
    great_circle_km,
    path_loss_db,
)


def test_deterministic_under_seed(spec: FeatureSpec) -> None:
    a = generate_scenes(4, seed=42, spec=spec)
    b = generate_scenes(4, seed=42, spec=spec)
    assert a.iq.tobytes() == b.iq.tobytes()
    np.testing.assert_array_equal(a.tx_latitude, b.tx_latitude)
    # scene i is the same whatever chunk it is generated in
    tail = generate_scenes(2, seed=42, spec=spec, start=2)
    assert tail.iq.tobytes() == a.iq[2:].tobytes()
    other = generate_scenes(4, seed=43, spec=spec)
    assert not np.array_equal(other.tx_latitude, a.tx_latitude)


def test_scenes_stay_in_the_region(spec: FeatureSpec) -> None:
    cfg = SceneConfig()
    s = generate_scenes(200, seed=1, spec=spec)
    assert s.iq.shape == (200, 5, spec.samples_per_capture) and s.iq.dtype == np.complex64
    assert (cfg.lat_min <= s.tx_latitude).all() and (s.tx_latitude <= cfg.lat_max).all()
    assert (cfg.lon_min <= s.tx_longitude).all() and (s.tx_longitude <= cfg.lon_max).all()
    assert (cfg.tx_power_dbm_min <= s.tx_power_dbm).all()


def test_reference_distances_and_free_space() -> None:
    # Torino -> Milano-Baggio is about 125 km
    assert abs(float(great_circle_km(45.044, 7.672, 45.478, 9.123)) - 125.0) < 3.0
    # Friis at 145.5 MHz, 1 km: 75.7 dB
    assert abs(float(free_space_loss_db(1.0, 145.5e6)) - 75.7) < 0.1


def test_power_falls_with_distance_as_the_path_loss_model_says(spec: FeatureSpec) -> None:
    cfg = SceneConfig()
    s = generate_scenes(600, seed=9, spec=spec, config=cfg)
    log_d = np.log10(s.distance_km.ravel())
    rx = (s.rx_power_dbm - s.tx_power_dbm[:, None]).ravel()  # gain of each link
    slope, intercept = np.polyfit(log_d, rx, 1)
    assert abs(slope - (-10 * cfg.path_loss_exponent)) < 2.0
    assert abs(intercept + float(free_space_loss_db(1.0, spec.center_frequency_hz))) < 4.0
    residual = rx - (slope * log_d + intercept)
    assert abs(residual.std() - cfg.shadowing_sigma_db) < 0.6


def test_iq_carries_the_link_budget(spec: FeatureSpec) -> None:
    """Without shadowing the power measured in the IQ is path loss + thermal noise."""
    cfg = SceneConfig(shadowing_sigma_db=0.0)
    s = generate_scenes(50, seed=4, spec=spec, config=cfg)
    measured_dbm = 10 * np.log10(np.mean(np.abs(s.iq) ** 2, axis=-1)) + cfg.full_scale_dbm
    expected_rx = s.tx_power_dbm[:, None] - path_loss_db(
        s.distance_km, spec.center_frequency_hz, cfg
    )
    expected_total = 10 * np.log10(10 ** (expected_rx / 10) + 10 ** (s.noise_power_dbm / 10))
    np.testing.assert_allclose(measured_dbm, expected_total, atol=0.1)
    # thermal noise over 12 kHz with a 6 dB noise figure
    assert abs(s.noise_power_dbm - (-174.0 + 10 * np.log10(12_000) + 6.0)) < 0.1
