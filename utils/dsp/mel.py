"""Mel filterbank for a complex-baseband (two-sided) spectrum.

The model's input is a mel spectrogram, but an RF capture is complex IQ: its spectrum spans
-fs/2 .. +fs/2 and both halves carry information.  We lay the fft-shifted spectrum on a
0 .. fs axis (frequency measured from the lower edge of the captured band) and put mel
triangles on that axis.  The triangles are the Slaney/HTK constructions that librosa uses, so
the tests can check this hand-written kernel against librosa itself.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

MelScale = Literal["slaney", "htk"]

_F_SP = 200.0 / 3.0  # Slaney: linear part, Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(freq_hz: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    freq = np.asarray(freq_hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    mels = freq / _F_SP
    log_region = freq >= _MIN_LOG_HZ
    return np.where(
        log_region,
        _MIN_LOG_MEL + np.log(np.maximum(freq, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP,
        mels,
    )


def mel_to_hz(mels: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    mel = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    freqs = _F_SP * mel
    log_region = mel >= _MIN_LOG_MEL
    return np.where(log_region, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), freqs)


def mel_filterbank(
    sample_rate_hz: float,
    n_fft: int,
    n_mels: int,
    f_min_hz: float,
    f_max_hz: float,
    scale: MelScale = "slaney",
    slaney_norm: bool = True,
) -> np.ndarray:
    """Weights `[n_mels, n_fft]` over the fft-shifted two-sided spectrum (bin k at k*fs/n_fft).

    With `slaney_norm` each triangle is scaled to unit area so that wide high bands do not
    dominate the log-mel levels.
    """
    bin_freqs = np.arange(n_fft, dtype=np.float64) * (sample_rate_hz / n_fft)
    edges = mel_to_hz(
        np.linspace(hz_to_mel(f_min_hz, scale), hz_to_mel(f_max_hz, scale), n_mels + 2), scale
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - bin_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if slaney_norm:
        weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights


def empty_bands(weights: np.ndarray) -> list[int]:
    """Indices of mel bands that no FFT bin feeds: such a band would be a constant input."""
    return [int(i) for i in np.flatnonzero(~(weights.max(axis=1) > 0.0))]
