"""The feature spec: everything needed to turn IQ captures into the model's input.

It travels with the model (`feature_spec.json` beside `model.onnx`, mirrored in the BentoML
model's metadata) so that the demo trainer and the service run the very same preprocessing with
the very same constants.  A model without one is served with `default_feature_spec()` and a
warning, as docs/api.md §8 requires.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from utils.dsp.mel import MelScale, empty_bands, mel_filterbank

FEATURE_SPEC_FILENAME = "feature_spec.json"


class Receiver(BaseModel):
    """A receiving site; the model's input channel i stands for `receivers[i]`."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    latitude: float = Field(ge=-90.0, le=90.0)
    longitude: float = Field(ge=-180.0, le=180.0)


#: Real WebSDR sites of north-west Italy used by the demo model, in channel order.
DEFAULT_RECEIVERS: tuple[Receiver, ...] = (
    Receiver(name="Torino", latitude=45.044, longitude=7.672),
    Receiver(name="Milano-Baggio", latitude=45.478, longitude=9.123),
    Receiver(name="Genova", latitude=44.395, longitude=8.956),
    Receiver(name="Giaveno", latitude=45.02, longitude=7.29),
    Receiver(name="Montanaro", latitude=45.234, longitude=7.857),
)


class FeatureSpec(BaseModel):
    """Preprocessing contract between a model and whoever feeds it.

    Frequencies (`f_min_hz`, `f_max_hz`) are measured from the lower edge of the captured band,
    i.e. baseband offset + sample_rate/2, because a complex capture's spectrum is two-sided.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    sample_rate_hz: float = Field(default=12_000.0, gt=0)
    center_frequency_hz: float = Field(default=145.5e6, gt=0, description="Informational.")
    n_fft: int = Field(default=512, ge=8, le=1 << 16)
    hop_length: int = Field(default=256, ge=1)
    window: Literal["hann"] = "hann"
    n_mels: int = Field(default=128, ge=1)
    n_frames: int = Field(default=32, ge=1)
    f_min_hz: float = Field(default=0.0, ge=0.0)
    f_max_hz: float = Field(default=12_000.0, gt=0.0)
    mel_scale: MelScale = "slaney"
    mel_norm: Literal["slaney"] | None = "slaney"
    power_floor: float = Field(
        default=1e-20, gt=0, description="Power added floor before the logarithm (amin)."
    )
    db_reference: float = Field(default=1.0, gt=0, description="0 dB power (1.0 = full scale).")
    norm_mean_db: float = Field(default=0.0, description="Subtracted from the dB values.")
    norm_std_db: float = Field(default=1.0, gt=0, description="Divides the centred dB values.")
    receivers: tuple[Receiver, ...] = Field(default=DEFAULT_RECEIVERS, min_length=1)
    repeat_single_capture: bool = Field(
        default=False, description="A single capture may be repeated across all channels."
    )
    uncertainty_units: Literal["degrees", "metres"] = "degrees"

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.hop_length > self.n_fft:
            raise ValueError("hop_length must not exceed n_fft (frames would skip samples)")
        if not self.f_min_hz < self.f_max_hz <= self.sample_rate_hz:
            raise ValueError("need 0 <= f_min_hz < f_max_hz <= sample_rate_hz")
        empty = empty_bands(self.filterbank.T)
        if empty:
            raise ValueError(
                f"mel bands {empty[:8]} are empty: no FFT bin falls inside them; "
                "raise n_fft, lower n_mels or widen the frequency range"
            )
        return self

    @property
    def n_channels(self) -> int:
        return len(self.receivers)

    @property
    def samples_per_capture(self) -> int:
        """Samples covering exactly `n_frames` frames; longer captures are cut to this."""
        return self.n_fft + self.hop_length * (self.n_frames - 1)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-sample model input shape `[channels, n_mels, frames]`."""
        return (self.n_channels, self.n_mels, self.n_frames)

    @property
    def filterbank(self) -> np.ndarray:
        """Mel weights `[n_fft, n_mels]` in float32, transposed for a right matmul (cached)."""
        return _filterbank(
            self.sample_rate_hz,
            self.n_fft,
            self.n_mels,
            self.f_min_hz,
            self.f_max_hz,
            self.mel_scale,
            self.mel_norm == "slaney",
        )

    @property
    def window_values(self) -> np.ndarray:
        """Periodic Hann window, as scipy.signal.get_window('hann', n) builds it (cached)."""
        return _hann(self.n_fft)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, path: Path) -> Path:
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))


@lru_cache(maxsize=16)
def _filterbank(
    sample_rate_hz: float,
    n_fft: int,
    n_mels: int,
    f_min_hz: float,
    f_max_hz: float,
    scale: MelScale,
    slaney_norm: bool,
) -> np.ndarray:
    weights = mel_filterbank(
        sample_rate_hz, n_fft, n_mels, f_min_hz, f_max_hz, scale=scale, slaney_norm=slaney_norm
    )
    out = np.ascontiguousarray(weights.T, dtype=np.float32)
    out.flags.writeable = False  # shared between specs: nobody may mutate it
    return out


@lru_cache(maxsize=16)
def _hann(n_fft: int) -> np.ndarray:
    n = np.arange(n_fft, dtype=np.float64)
    out = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)
    out.flags.writeable = False
    return out


def default_feature_spec() -> FeatureSpec:
    """Documented defaults for a model that arrives without a feature spec."""
    return FeatureSpec()
