"""Is a prediction a fix? Honest answers at the edges of what receivers record.

A regression model answers every input with numbers, including inputs it never saw: silence,
noise only, one receiver alive, a signal 60 dB louder than anything in training.  Tried on the
demo model, louder-than-trained noise came back "certain to 15 m" and silence with a
continent-sized ellipse.  Clients must be able to tell a fix from a non-fix without reading
numbers, so every prediction carries `quality` ("fix" or "no_fix") and `warnings` (why).

A prediction is a fix only when all of these hold:

- at least `min(3, receivers)` receivers hear a signal above their noise floor (with fewer, a
  received-strength model cannot pin a point in 2-D: two receivers leave a curve);
- no receiver's level is more than `LOUDER_THAN_TRAINED_DB` above the strongest level the model
  was trained on (beyond it the model extrapolates, and this one grows *more* certain);
- the position lies inside the region the model was trained on (widened by `REGION_MARGIN`);
- the 1-sigma semi-major axis is at most `SIGMA_MARGIN` times the largest the model produced on
  held-out data.

"Hears a signal" is decided from the log-mel features the model sees, not from a calibration
constant: white noise has a flat spectrum (its mel bands, averaged over frames, spread by about
0.8 dB on the demo spec), a transmission does not (3.5 dB and up, median 13 dB).  The noise
spread of the model's own feature spec is measured once at load time on generated noise, so the
threshold follows the spec (FFT size, mel bands, frames) instead of being a magic number.

Framework-free: the envelope comes from the feature spec and the training metrics stored with
the model; the checks are vectorised over a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from utils.dsp.feature_spec import FeatureSpec
from utils.geo.ellipse import wgs84_radii

Quality = Literal["fix", "no_fix"]

#: A prediction needs at least this many receivers that hear the transmitter.
MIN_LIVE_RECEIVERS = 3
#: Levels this far above the strongest training level are outside what the model knows.
LOUDER_THAN_TRAINED_DB = 10.0
#: Without training metadata: full scale (0 dB re `db_reference`), where a receiver clips.
FULL_SCALE_DB = 0.0
#: The trained region is widened by this share of its size on every side: a good fix of a
#: transmitter near the edge may land just outside it (5 in 2000 held-out scenes, unwidened).
REGION_MARGIN = 0.1
#: A 1-sigma axis above this multiple of the held-out maximum is not what the model learned.
SIGMA_MARGIN = 1.5
#: Band spread (dB) of a receiver that hears a signal, in multiples of pure noise's spread.
NOISE_SPREAD_FACTOR = 2.0
#: No receiver produces samples this far above full scale: such captures are refused (4xx).
MAX_DB_OVER_FULL_SCALE = 120.0

# Training-metric keys (written by demo/train.py, read back from the model's metadata).
REGION_KEYS = ("region_lat_min", "region_lat_max", "region_lon_min", "region_lon_max")
SIGMA_MAX_KEY = "sigma_max_m"
POWER_MAX_KEY = "channel_power_max_db"


def max_amplitude(spec: FeatureSpec) -> float:
    """Largest |I| or |Q| accepted: `MAX_DB_OVER_FULL_SCALE` above full scale."""
    return float(np.sqrt(spec.db_reference) * 10.0 ** (MAX_DB_OVER_FULL_SCALE / 20.0))


#: The level reported for silence (dB re full scale): finite, so it travels in JSON.
SILENCE_DB = -400.0


def channel_power_db(captures: np.ndarray) -> np.ndarray:
    """Mean power per receiver of complex `[..., C, S]` captures, dB re full scale (1.0).

    Accumulated in float64: float32 squares overflow above an amplitude of about 1.8e19.
    Silence reads `SILENCE_DB`.
    """
    values = np.ascontiguousarray(captures, dtype=np.complex128).view(np.float64)
    power = np.einsum("...s,...s->...", values, values) / max(1, captures.shape[-1])
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (SILENCE_DB / 10.0)))


def band_spread_db(features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Spread (std, dB) across mel bands of each receiver's frame-averaged log-mel spectrum.

    `features` are the normalised model inputs `[B, C, M, F]`; silence gives 0, white noise
    about 0.8 dB on the demo spec, a transmission several dB.
    """
    bands = features.mean(axis=-1, dtype=np.float64)  # [B, C, M]
    return bands.std(axis=-1) * spec.norm_std_db


def distinct_frames(samples: int, spec: FeatureSpec) -> int:
    """Independent STFT frames in a capture of `samples` (shorter captures repeat frames)."""
    return max(1, min(spec.n_frames, 1 + (samples - spec.n_fft) // spec.hop_length))


@dataclass(frozen=True)
class FixEnvelope:
    """What the model was trained to answer: region, uncertainty and signal levels."""

    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float
    max_sigma_m: float
    max_power_db: float
    noise_spread_db: float
    min_live: int
    source: Literal["training", "receivers"]

    def outside(self, latitude: np.ndarray | float, longitude: np.ndarray | float) -> np.ndarray:
        """Positions outside the (widened) trained region; longitudes compared modulo 360."""
        lat = np.asarray(latitude)
        lon = (np.asarray(longitude) - self.lon_min) % 360.0 + self.lon_min
        return (lat < self.lat_min) | (lat > self.lat_max) | (lon > self.lon_max)

    @classmethod
    def for_model(
        cls, spec: FeatureSpec, training: Mapping[str, float], noise_spread_db: float
    ) -> FixEnvelope:
        """From the training metrics stored with the model, else from the receivers alone.

        Without training metrics the region is the receivers' box widened by half its size
        (at least 1 degree) on every side, and an uncertainty larger than that region says
        nothing, so it bounds the sigma.
        """
        min_live = min(MIN_LIVE_RECEIVERS, spec.n_channels)
        if all(k in training for k in REGION_KEYS) and SIGMA_MAX_KEY in training:
            lat_min, lat_max, lon_min, lon_max = (float(training[k]) for k in REGION_KEYS)
            pad_lat = REGION_MARGIN * (lat_max - lat_min)
            pad_lon = REGION_MARGIN * (lon_max - lon_min)
            return cls(
                max(-90.0, lat_min - pad_lat),
                min(90.0, lat_max + pad_lat),
                lon_min - pad_lon,
                lon_max + pad_lon,
                SIGMA_MARGIN * float(training[SIGMA_MAX_KEY]),
                float(training.get(POWER_MAX_KEY, FULL_SCALE_DB)) + LOUDER_THAN_TRAINED_DB,
                noise_spread_db,
                min_live,
                "training",
            )
        lats = np.array([r.latitude for r in spec.receivers])
        lons = np.array([r.longitude for r in spec.receivers])
        pad_lat = max(1.0, 0.5 * float(np.ptp(lats)))
        pad_lon = max(1.0, 0.5 * float(np.ptp(lons)))
        lat_min, lat_max = max(-90.0, lats.min() - pad_lat), min(90.0, lats.max() + pad_lat)
        lon_min, lon_max = lons.min() - pad_lon, lons.max() + pad_lon
        north, east = wgs84_radii(0.5 * (lat_min + lat_max))
        diagonal = float(
            np.hypot(
                np.radians(lat_max - lat_min) * north,
                np.radians(lon_max - lon_min)
                * east
                * np.cos(np.radians(0.5 * (lat_min + lat_max))),
            )
        )
        return cls(
            float(lat_min),
            float(lat_max),
            float(lon_min),
            float(lon_max),
            diagonal,
            FULL_SCALE_DB + LOUDER_THAN_TRAINED_DB,
            noise_spread_db,
            min_live,
            "receivers",
        )


def noise_spread_db(spec: FeatureSpec, captures: int = 8, seed: int = 0) -> float:
    """The largest band spread of white noise under `spec`, measured on generated noise."""
    from utils.dsp.preprocessing import preprocess

    rng = np.random.default_rng(seed)
    shape = (captures, spec.n_channels, spec.samples_per_capture)
    noise = (
        rng.standard_normal(shape, dtype=np.float32)
        + 1j * rng.standard_normal(shape, dtype=np.float32)
    ).astype(np.complex64)
    return float(band_spread_db(preprocess(noise, spec), spec).max())


@dataclass(frozen=True)
class Assessment:
    quality: Quality
    warnings: tuple[str, ...]


def _names(spec: FeatureSpec, mask: np.ndarray) -> str:
    return ", ".join(r.name for r, m in zip(spec.receivers, mask, strict=True) if m)


def assess(
    latitude: np.ndarray,
    longitude: np.ndarray,
    semi_major_1sigma_m: np.ndarray,
    power_db: np.ndarray,
    spread_db: np.ndarray,
    frames: np.ndarray,
    envelope: FixEnvelope,
    spec: FeatureSpec,
) -> list[Assessment]:
    """One assessment per prediction; `power_db`/`spread_db` are `[B, C]`, `frames` `[B]`."""
    # fewer independent frames average less: the noise spread grows as 1/sqrt(frames)
    threshold = (
        NOISE_SPREAD_FACTOR
        * envelope.noise_spread_db
        * np.sqrt(spec.n_frames / np.asarray(frames, dtype=np.float64))
    )
    live = (spread_db > threshold[:, None]) & (power_db > SILENCE_DB)
    loud = power_db > envelope.max_power_db
    outside = envelope.outside(latitude, longitude)
    too_wide = semi_major_1sigma_m > envelope.max_sigma_m
    channels = spec.n_channels
    out = []
    for i in range(latitude.shape[0]):
        warnings: list[str] = []
        fix = True
        silent = ~live[i]
        if silent.any():
            enough = int(live[i].sum()) >= envelope.min_live
            warnings.append(
                f"no signal above the noise floor on {int(silent.sum())} of "
                f"{channels} receivers ({_names(spec, silent)})"
                + ("" if enough else f"; a fix needs at least {envelope.min_live}")
            )
            fix = enough
        if loud[i].any():
            warnings.append(
                f"signal level on {_names(spec, loud[i])} reaches "
                f"{float(power_db[i][loud[i]].max()):.0f} dB re full scale, above "
                f"the {envelope.max_power_db:.0f} dB the model is trained for"
            )
            fix = False
        if outside[i]:
            warnings.append(
                f"position {float(latitude[i]):.4f}, {float(longitude[i]):.4f} is "
                f"outside the region the model covers (latitude "
                f"{envelope.lat_min:g}..{envelope.lat_max:g}, longitude "
                f"{envelope.lon_min:g}..{envelope.lon_max:g})"
            )
            fix = False
        if too_wide[i]:
            warnings.append(
                f"1-sigma uncertainty {float(semi_major_1sigma_m[i]) / 1000:.0f} km "
                f"exceeds the {envelope.max_sigma_m / 1000:.0f} km the model can "
                "produce for a real fix"
            )
            fix = False
        out.append(Assessment("fix" if fix else "no_fix", tuple(warnings)))
    return out
