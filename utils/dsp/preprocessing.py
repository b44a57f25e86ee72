"""IQ captures -> model input: the one preprocessing function used to train and to serve.

The pipeline is a plain STFT log-mel spectrogram over the complex (two-sided) spectrum:

1. cut each capture to `spec.samples_per_capture` samples (longer captures keep their start);
   a capture with at least one frame but fewer than `n_frames` frames has its frames repeated
   cyclically, so time averages stay unbiased;
2. periodic Hann window, FFT, power with "spectrum" scaling (a tone of amplitude A reads |A|^2),
   fft-shifted so the axis runs from -fs/2 to +fs/2;
3. mel filterbank (`utils.dsp.mel`), `10*log10(max(power, floor) / reference)`;
4. `(dB - norm_mean_db) / norm_std_db`, laid out `[batch, channels, n_mels, frames]`, float32.

Everything is vectorised over samples x receivers x frames; the only Python loops are over
distinct capture lengths in `preprocess_many`, and over cache-sized chunks of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from utils.dsp.feature_spec import FeatureSpec


class InvalidCaptureError(ValueError):
    """A capture that cannot be turned into model input; the message says why.

    `index` is the position of the offending sample in a batch, when known, so that an API
    can name it.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        self.reason = message
        self.index = index
        super().__init__(message if index is None else f"sample {index}: {message}")

    def at(self, index: int) -> InvalidCaptureError:
        """The same error, attributed to batch position `index`."""
        return InvalidCaptureError(self.reason, index)


def iq_pairs_to_complex(pairs: np.ndarray) -> np.ndarray:
    """`[..., 2]` real (I, Q) pairs -> complex64 `[...]`."""
    arr = np.asarray(pairs)
    if arr.dtype.kind not in "fiu":
        raise InvalidCaptureError(f"IQ values must be numbers, got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise InvalidCaptureError(
            f"IQ pairs must have a last axis of length 2 ([I, Q]), got shape {list(arr.shape)}"
        )
    as_float = arr.astype(np.float32, copy=False)
    return as_float[..., 0] + 1j * as_float[..., 1]


def _as_batch(iq: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Validate and broadcast to complex64 `[batch, channels, samples]`."""
    arr = np.asarray(iq)
    if arr.dtype.kind != "c":
        raise InvalidCaptureError(
            f"captures must be complex IQ (complex64), got dtype {arr.dtype}; "
            "convert [I, Q] pairs with iq_pairs_to_complex"
        )
    if arr.ndim == 1:
        arr = arr[None, None, :]
    elif arr.ndim == 2:
        arr = arr[None, :, :]
    elif arr.ndim != 3:
        raise InvalidCaptureError(
            f"captures must be [samples], [channels, samples] or [batch, channels, samples], "
            f"got {arr.ndim} dimensions"
        )
    channels, samples = arr.shape[1], arr.shape[2]
    if channels != spec.n_channels:
        if channels == 1 and spec.repeat_single_capture:
            arr = np.broadcast_to(arr, (arr.shape[0], spec.n_channels, samples))
        else:
            names = ", ".join(r.name for r in spec.receivers)
            raise InvalidCaptureError(
                f"expected {spec.n_channels} receiver captures ({names}), got {channels}"
            )
    if samples < spec.n_fft:
        raise InvalidCaptureError(
            f"capture too short: {samples} samples, at least {spec.n_fft} (one frame) needed"
        )
    arr = arr[:, :, : spec.samples_per_capture].astype(np.complex64, copy=False)
    if not np.isfinite(peak_amplitude(arr)):
        raise InvalidCaptureError("capture contains NaN or infinite values")
    return arr


def peak_amplitude(iq: np.ndarray) -> float:
    """Largest |I| or |Q| of a complex64 capture: NaN or infinity when any value is one."""
    values = np.ascontiguousarray(iq).view(np.float32)
    # max and min in place of abs().max(): no temporary the size of the capture; both
    # propagate NaN
    return float(max(values.max(), -values.min())) if values.size else 0.0


#: Above this peak |I| or |Q| a float32 power spectrum could overflow (an FFT bin sums n_fft
#: windowed samples, then squares): such captures are computed in float64 instead, so the
#: features stay finite over float32's whole range. Far above anything a receiver records.
FLOAT32_SAFE_AMPLITUDE = 2.0**48


def preprocess(iq: np.ndarray, spec: FeatureSpec, peak_bound: float | None = None) -> np.ndarray:
    """Complex IQ `[B, C, S]` (or `[C, S]`) -> normalised log-mel `[B, C, n_mels, n_frames]`.

    Finite for every finite float32 input: silence reads as the power floor, and captures loud
    enough to overflow a float32 spectrum are computed in float64 (the rare path).

    `peak_bound`: the captures were already validated into canonical form (complex64
    `[B, C, S]`, no sample above this magnitude) by the API's decoder, so they are not checked
    again on the hot path; a bound below the float32-safe amplitude also skips the peak scan.
    """
    batch = _as_batch(iq, spec) if peak_bound is None else iq
    unsafe = peak_bound is None or peak_bound > FLOAT32_SAFE_AMPLITUDE
    if unsafe and peak_amplitude(batch) > FLOAT32_SAFE_AMPLITUDE:
        return _log_mel(batch.astype(np.complex128), spec, np.float64)
    return _log_mel(batch, spec, np.float32)


def _log_mel(batch: np.ndarray, spec: FeatureSpec, real: type[np.floating]) -> np.ndarray:
    frames = sliding_window_view(batch, spec.n_fft, axis=-1)[:, :, :: spec.hop_length, :]
    available = frames.shape[2]
    if available < spec.n_frames:
        frames = frames[:, :, np.arange(spec.n_frames) % available, :]
    else:
        frames = frames[:, :, : spec.n_frames, :]
    window = spec.window_values.astype(real, copy=False)
    windowed = (frames * window).reshape(-1, spec.n_fft)
    # scipy's pocketfft keeps complex64 and runs ~3x faster than numpy's on these shapes.
    spectrum = scipy.fft.fft(windowed, axis=-1, overwrite_x=True)
    power = spectrum.real**2 + spectrum.imag**2
    power = np.fft.fftshift(power, axes=-1)
    power *= real(1.0 / float(window.sum()) ** 2)
    filterbank = spec.filterbank.astype(real, copy=False)
    mel = (power @ filterbank).reshape(*frames.shape[:3], spec.n_mels)  # [B, C, F, M]
    db = 10.0 * np.log10(np.maximum(mel, real(spec.power_floor)) / real(spec.db_reference))
    normalised = (db - real(spec.norm_mean_db)) * real(1.0 / spec.norm_std_db)
    return np.ascontiguousarray(normalised.transpose(0, 1, 3, 2), dtype=np.float32)


def preprocess_many(
    captures: Sequence[np.ndarray], spec: FeatureSpec, peak_bound: float | None = None
) -> np.ndarray:
    """A list of `[C, S_i]` captures of possibly different lengths -> `[B, C, M, F]`.

    Captures are grouped by length so each group is one vectorised call; errors name the index
    of the first bad capture.
    """
    if len(captures) == 0:
        return np.zeros((0, *spec.input_shape), dtype=np.float32)
    out = np.empty((len(captures), *spec.input_shape), dtype=np.float32)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, capture in enumerate(captures):
        shape = tuple(np.shape(capture))
        groups.setdefault(shape, []).append(index)
    chunk = chunk_size(spec)
    for shape, indices in groups.items():
        if len(shape) not in (1, 2):
            raise InvalidCaptureError(
                f"a capture must be [samples] or [channels, samples], got {len(shape)} dimensions",
                indices[0],
            )
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            try:
                stacked = np.stack([np.asarray(captures[i]) for i in part])
                if stacked.ndim == 2:
                    stacked = stacked[:, None, :]
                out[part] = preprocess(stacked, spec, peak_bound)
            except InvalidCaptureError as exc:
                raise exc.at(_first_bad(captures, part, spec)) from None
    return out


#: Bytes of windowed frames (complex64) one vectorised `preprocess` call may hold. Past a few
#: MB the per-sample cost jumps: the demo spec (5 x 32 frames x 512, 655 kB a sample) costs
#: 0.52-0.58 ms a sample at 1-4 samples a call and 0.93-0.99 ms at 8 (its temporaries fall out
#: of cache and are mapped fresh each call), so a batch is preprocessed in chunks this size.
PREPROCESS_CHUNK_BYTES = 2 * 1024 * 1024


def chunk_size(spec: FeatureSpec) -> int:
    """Samples per vectorised `preprocess` call: as many as fit `PREPROCESS_CHUNK_BYTES`."""
    per_sample = spec.n_channels * spec.n_frames * spec.n_fft * np.dtype(np.complex64).itemsize
    return max(1, PREPROCESS_CHUNK_BYTES // per_sample)


def _first_bad(captures: Sequence[np.ndarray], indices: list[int], spec: FeatureSpec) -> int:
    """Index of the first capture in a failing group (the error path only)."""
    for index in indices:
        try:
            _as_batch(np.asarray(captures[index]), spec)
        except InvalidCaptureError:
            return index
    return indices[0]
