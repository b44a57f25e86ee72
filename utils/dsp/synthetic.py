"""Synthetic RF scenes: a 2 m band FM transmitter heard by the WebSDR sites of the feature spec.

Physics, kept simple but real enough that a model must learn geometry to localize:

- transmitter uniformly inside a lat/lon box over north-west Italy, power 5-20 W;
- log-distance path loss referenced to free space at 1 km for the carrier
  (`FSPL(1 km) + 10 n log10(d)`), log-normal shadowing per link;
- thermal noise `kTB + NF` over the capture bandwidth, complex Gaussian;
- narrow-band FM (2.5 kHz deviation) of a voice-like multi-tone plus CTCSS sub-tone, at a random
  carrier offset, with a small local-oscillator error and random phase per receiver;
- IQ in full-scale units: `|x|^2 = 1` is `full_scale_dbm` at the antenna.

Scene `i` of seed `s` is drawn from its own generator `default_rng([s, i])`, so a scene is the
same whatever chunk it is generated in: training, tests, locust and benchmarks share scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from utils.dsp.feature_spec import FeatureSpec

SPEED_OF_LIGHT_M_S = 299_792_458.0
BOLTZMANN_DBM_PER_HZ = -173.975  # kT at 290 K, dBm/Hz
MEAN_EARTH_RADIUS_KM = 6371.0088


class SceneConfig(BaseModel):
    """Parameters of the synthetic world; the defaults describe the demo model's world."""

    model_config = ConfigDict(frozen=True)

    lat_min: float = 44.30
    lat_max: float = 45.80
    lon_min: float = 7.00
    lon_max: float = 9.60
    tx_power_dbm_min: float = 37.0  # 5 W
    tx_power_dbm_max: float = 43.0  # 20 W
    path_loss_exponent: float = Field(default=2.8, gt=0)
    shadowing_sigma_db: float = Field(default=6.0, ge=0)
    noise_figure_db: float = 6.0
    full_scale_dbm: float = -30.0
    fm_deviation_hz: float = 2_500.0
    max_carrier_offset_hz: float = 1_500.0
    lo_error_sigma_hz: float = 20.0
    min_distance_km: float = 0.1


@dataclass(frozen=True)
class SceneBatch:
    """N scenes; per-link arrays are `[N, C]` in the feature spec's receiver order."""

    tx_latitude: np.ndarray
    tx_longitude: np.ndarray
    tx_power_dbm: np.ndarray
    distance_km: np.ndarray
    rx_power_dbm: np.ndarray
    noise_power_dbm: float
    iq: np.ndarray  # complex64 [N, C, S]

    def __len__(self) -> int:
        return int(self.tx_latitude.shape[0])


def free_space_loss_db(distance_km: np.ndarray | float, frequency_hz: float) -> np.ndarray:
    """Friis free-space path loss."""
    d_m = np.asarray(distance_km, dtype=np.float64) * 1000.0
    return 20.0 * np.log10(4.0 * np.pi * d_m * frequency_hz / SPEED_OF_LIGHT_M_S)


def path_loss_db(
    distance_km: np.ndarray | float, frequency_hz: float, config: SceneConfig
) -> np.ndarray:
    """Log-distance path loss referenced to free space at 1 km (median, without shadowing)."""
    d = np.maximum(np.asarray(distance_km, dtype=np.float64), config.min_distance_km)
    return free_space_loss_db(1.0, frequency_hz) + 10.0 * config.path_loss_exponent * np.log10(d)


def noise_power_dbm(sample_rate_hz: float, config: SceneConfig) -> float:
    """Thermal noise over the complex capture bandwidth (= sample rate)."""
    return float(BOLTZMANN_DBM_PER_HZ + 10.0 * np.log10(sample_rate_hz) + config.noise_figure_db)


def great_circle_km(
    lat1: np.ndarray | float,
    lon1: np.ndarray | float,
    lat2: np.ndarray | float,
    lon2: np.ndarray | float,
) -> np.ndarray:
    """Haversine distance on the mean sphere: ample for path loss, whose model error is dBs."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2.0 * MEAN_EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _fm_waveform(rng: np.random.Generator, n: int, fs: float, config: SceneConfig) -> np.ndarray:
    """Unit-amplitude NBFM baseband: voice-like tones + CTCSS, at a random carrier offset."""
    t = np.arange(n) / fs
    tones = rng.uniform(300.0, 2_700.0, size=3)
    amps = rng.uniform(0.3, 1.0, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    audio = (amps[:, None] * np.sin(2 * np.pi * tones[:, None] * t + phases[:, None])).sum(0)
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2.0, 5.0) * t + rng.uniform(0, 6.3))
    audio = audio * syllables / amps.sum()
    ctcss = 0.15 * np.sin(2 * np.pi * rng.choice([67.0, 88.5, 110.9, 123.0, 151.4]) * t)
    offset = rng.uniform(-config.max_carrier_offset_hz, config.max_carrier_offset_hz)
    inst_freq = offset + config.fm_deviation_hz * (audio + ctcss)
    return np.cumsum(2 * np.pi * inst_freq / fs)  # phase track


def generate_scenes(
    n: int,
    seed: int,
    spec: FeatureSpec,
    config: SceneConfig | None = None,
    *,
    start: int = 0,
    positions: np.ndarray | None = None,
    samples: int | None = None,
) -> SceneBatch:
    """Scenes `start .. start+n-1` of `seed`.

    `positions` (`[n, 2]` lat, lon) pins the transmitters, e.g. for a known test scene;
    `samples` defaults to exactly one model input's worth (`spec.samples_per_capture`).
    """
    cfg = config or SceneConfig()
    n_samples = samples or spec.samples_per_capture
    fs = spec.sample_rate_hz
    rx_lat = np.array([r.latitude for r in spec.receivers])
    rx_lon = np.array([r.longitude for r in spec.receivers])
    channels = rx_lat.shape[0]
    noise_dbm = noise_power_dbm(fs, cfg)
    noise_fs = 10.0 ** ((noise_dbm - cfg.full_scale_dbm) / 10.0)
    t = np.arange(n_samples) / fs

    lat = np.empty(n)
    lon = np.empty(n)
    power = np.empty(n)
    rx_power = np.empty((n, channels))
    iq = np.empty((n, channels, n_samples), dtype=np.complex64)
    for i in range(n):
        rng = np.random.default_rng([seed, start + i])
        if positions is None:
            lat[i] = rng.uniform(cfg.lat_min, cfg.lat_max)
            lon[i] = rng.uniform(cfg.lon_min, cfg.lon_max)
        else:
            lat[i], lon[i] = positions[i]
        power[i] = rng.uniform(cfg.tx_power_dbm_min, cfg.tx_power_dbm_max)
        distance = great_circle_km(lat[i], lon[i], rx_lat, rx_lon)
        shadowing = rng.normal(0.0, cfg.shadowing_sigma_db, size=channels)
        rx_power[i] = power[i] - path_loss_db(distance, spec.center_frequency_hz, cfg) - shadowing
        phase = _fm_waveform(rng, n_samples, fs, cfg)
        lo_error = rng.normal(0.0, cfg.lo_error_sigma_hz, size=channels)
        rx_phase = (
            phase[None, :]
            + 2 * np.pi * lo_error[:, None] * t
            + rng.uniform(0, 2 * np.pi, size=(channels, 1))
        )
        amplitude = np.sqrt(10.0 ** ((rx_power[i] - cfg.full_scale_dbm) / 10.0))[:, None]
        noise = rng.standard_normal((channels, 2 * n_samples), dtype=np.float32)
        iq[i] = amplitude * np.exp(1j * rx_phase) + np.sqrt(noise_fs / 2.0) * noise.view(
            np.complex64
        )
    distance_km = great_circle_km(lat[:, None], lon[:, None], rx_lat[None, :], rx_lon[None, :])
    return SceneBatch(
        tx_latitude=lat,
        tx_longitude=lon,
        tx_power_dbm=power,
        distance_km=distance_km,
        rx_power_dbm=rx_power,
        noise_power_dbm=noise_dbm,
        iq=iq,
    )
