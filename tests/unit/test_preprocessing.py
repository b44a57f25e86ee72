"""Preprocessing against reference implementations (scipy STFT, librosa mel and dB) and its
error cases."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from utils.dsp.feature_spec import FeatureSpec, Receiver
from utils.dsp.mel import mel_filterbank
from utils.dsp.preprocessing import (
    InvalidCaptureError,
    chunk_size,
    iq_pairs_to_complex,
    preprocess,
    preprocess_many,
)
from utils.dsp.synthetic import generate_scenes


def reference_log_mel(capture: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """`[C, S]` -> `[C, M, F]` with scipy's STFT and librosa's filterbank and dB, in float64."""
    x = capture[:, : spec.samples_per_capture].astype(np.complex128)
    _, _, z = scipy.signal.stft(
        x,
        fs=spec.sample_rate_hz,
        window="hann",
        nperseg=spec.n_fft,
        noverlap=spec.n_fft - spec.hop_length,
        boundary=None,
        padded=False,
        return_onesided=False,
        scaling="spectrum",
        detrend=False,
        axis=-1,
    )  # [C, n_fft, frames]
    power = np.fft.fftshift(np.abs(z) ** 2, axes=1)
    # On a 2*fs / 2*n_fft grid librosa's one-sided bins k*fs/n_fft are exactly our two-sided ones.
    fb = librosa.filters.mel(
        sr=2 * spec.sample_rate_hz,
        n_fft=2 * spec.n_fft,
        n_mels=spec.n_mels,
        fmin=spec.f_min_hz,
        fmax=spec.f_max_hz,
        htk=spec.mel_scale == "htk",
        norm=spec.mel_norm,
    )[:, : spec.n_fft]
    mel = np.einsum("mk,ckt->cmt", fb, power)[:, :, : spec.n_frames]
    db = librosa.power_to_db(mel, ref=spec.db_reference, amin=spec.power_floor, top_db=None)
    return (db - spec.norm_mean_db) / spec.norm_std_db


@pytest.mark.parametrize("scale", ["slaney", "htk"])
@pytest.mark.parametrize(
    ("n_fft", "n_mels", "f_min", "f_max"), [(512, 128, 0.0, 12_000.0), (1024, 64, 500.0, 11_000.0)]
)
def test_filterbank_matches_librosa(
    scale: str, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> None:
    ours = mel_filterbank(12_000.0, n_fft, n_mels, f_min, f_max, scale=scale)  # type: ignore[arg-type]
    ref = librosa.filters.mel(
        sr=24_000.0,
        n_fft=2 * n_fft,
        n_mels=n_mels,
        fmin=f_min,
        fmax=f_max,
        htk=scale == "htk",
        norm="slaney",
    )[:, :n_fft]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_log_mel_matches_reference(spec: FeatureSpec) -> None:
    scenes = generate_scenes(3, seed=11, spec=spec)
    normalised = FeatureSpec.model_validate(
        {**spec.model_dump(), "norm_mean_db": -120.0, "norm_std_db": 17.0}
    )
    ours = preprocess(scenes.iq, normalised)
    assert ours.shape == (3, 5, 128, 32) and ours.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(
            ours[i], reference_log_mel(scenes.iq[i], normalised), atol=2e-4, rtol=0
        )


def test_no_mel_band_is_empty(spec: FeatureSpec) -> None:
    assert (spec.filterbank.max(axis=0) > 0).all()
    with pytest.raises(ValidationError, match="empty"):
        FeatureSpec(n_fft=64, hop_length=32, n_mels=128)


def test_batch_equals_singles(spec: FeatureSpec) -> None:
    iq = generate_scenes(7, seed=3, spec=spec).iq
    batch = preprocess(iq, spec)
    singles = np.stack([preprocess(iq[i], spec)[0] for i in range(7)])
    # equal up to float32 rounding (BLAS blocks a batch differently from a single sample)
    np.testing.assert_allclose(batch, singles, rtol=0, atol=1e-4)


def test_batch_is_preprocessed_in_cache_sized_chunks(spec: FeatureSpec) -> None:
    """A batch larger than one chunk gives what one vectorised call gives, in request order,
    and an error in a later chunk still names its own index."""
    chunk = chunk_size(spec)
    assert 1 <= chunk < 8  # the demo spec: 655 kB of frames a sample, 3 to a 2 MiB chunk
    iq = generate_scenes(2 * chunk + 1, seed=4, spec=spec).iq
    whole = preprocess(iq, spec)
    np.testing.assert_allclose(preprocess_many(list(iq), spec), whole, rtol=0, atol=1e-4)
    bad = list(iq)
    bad[2 * chunk] = bad[2 * chunk].copy()
    bad[2 * chunk][0, 5] = np.nan
    with pytest.raises(InvalidCaptureError) as info:
        preprocess_many(bad, spec)
    assert info.value.index == 2 * chunk


def test_lengths_long_short_and_mixed(spec: FeatureSpec) -> None:
    iq = generate_scenes(3, seed=5, spec=spec, samples=2 * spec.samples_per_capture).iq
    exact = preprocess(iq[:, :, : spec.samples_per_capture], spec)
    # longer captures keep their first samples_per_capture samples
    np.testing.assert_allclose(preprocess(iq, spec), exact, rtol=0, atol=1e-4)
    # a capture of 4 frames is repeated cyclically up to n_frames
    four = spec.n_fft + 3 * spec.hop_length
    short = preprocess(iq[:1, :, :four], spec)
    np.testing.assert_allclose(short[..., 4:8], short[..., :4], rtol=0, atol=1e-4)
    np.testing.assert_allclose(short[..., :4], exact[:1, ..., :4], atol=1e-5)
    # a list of mixed lengths, processed in groups, comes back in request order
    mixed = [iq[0], iq[1, :, :four], iq[2, :, : spec.samples_per_capture]]
    out = preprocess_many(mixed, spec)
    short_1 = preprocess(iq[1:2, :, :four], spec)[0]
    for got, want in ((out[0], exact[0]), (out[1], short_1), (out[2], exact[2])):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_single_capture_repeated_when_spec_allows(spec: FeatureSpec) -> None:
    iq = generate_scenes(1, seed=2, spec=spec).iq[0]
    repeat = FeatureSpec.model_validate({**spec.model_dump(), "repeat_single_capture": True})
    out = preprocess(iq[:1], repeat)
    assert out.shape == (1, 5, 128, 32)
    np.testing.assert_allclose(out[0, 0], out[0, 4], rtol=0, atol=1e-4)
    with pytest.raises(InvalidCaptureError, match="expected 5 receiver captures"):
        preprocess(iq[:1], spec)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s: np.ones((5, 100), np.complex64), "too short: 100 samples, at least 512"),
        (lambda s: np.ones((3, 9000), np.complex64), "expected 5 receiver captures .*Torino"),
        (lambda s: np.ones((5, 9000), np.float32), "must be complex IQ"),
        (lambda s: np.ones((5, 9000), np.int16), "must be complex IQ"),
        (lambda s: np.ones((1, 2, 5, 9000), np.complex64), "got 4 dimensions"),
        (lambda s: _with(np.ones((5, 9000), np.complex64), (2, 7), np.nan), "NaN or infinite"),
        (lambda s: _with(np.ones((5, 9000), np.complex64), (0, 0), 1j * np.inf), "NaN or infinite"),
    ],
)
def test_bad_captures_raise_one_typed_error(spec: FeatureSpec, make, message: str) -> None:
    with pytest.raises(InvalidCaptureError, match=message):
        preprocess(make(spec), spec)


def _with(arr: np.ndarray, index: tuple[int, int], value: complex) -> np.ndarray:
    arr[index] = value
    return arr


def test_batch_errors_name_the_index(spec: FeatureSpec) -> None:
    good = np.ones((5, spec.samples_per_capture), np.complex64)
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(InvalidCaptureError) as info:
        preprocess_many([good, good, bad, good], spec)
    assert info.value.index == 2 and str(info.value).startswith("sample 2:")
    with pytest.raises(InvalidCaptureError) as info:
        preprocess_many([good, np.ones((5, 10), np.complex64)], spec)
    assert info.value.index == 1 and "too short" in str(info.value)


def test_iq_pairs(spec: FeatureSpec) -> None:
    pairs = np.array([[[1.0, -2.0], [0.5, 0.25]]])
    np.testing.assert_array_equal(iq_pairs_to_complex(pairs), [[1 - 2j, 0.5 + 0.25j]])
    with pytest.raises(InvalidCaptureError, match="last axis of length 2"):
        iq_pairs_to_complex(np.ones((4, 3)))
    with pytest.raises(InvalidCaptureError, match="must be numbers"):
        iq_pairs_to_complex(np.array([["a", "b"]]))


def test_spec_round_trips_and_validates(tmp_path, spec: FeatureSpec) -> None:
    path = spec.save(tmp_path / "feature_spec.json")
    assert FeatureSpec.load(path) == spec
    with pytest.raises(ValidationError, match="hop_length"):
        FeatureSpec(hop_length=1024)
    with pytest.raises(ValidationError, match="latitude"):
        Receiver(name="x", latitude=91.0, longitude=0.0)
    with pytest.raises(ValidationError):
        FeatureSpec.model_validate({**spec.model_dump(), "unknown_field": 1})


small_spec = FeatureSpec(
    n_fft=64,
    hop_length=32,
    n_mels=8,
    n_frames=4,
    receivers=(
        Receiver(name="a", latitude=0.0, longitude=0.0),
        Receiver(name="b", latitude=1.0, longitude=1.0),
    ),
)
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    real=arrays(
        np.float32, st.tuples(st.integers(1, 3), st.just(2), st.integers(64, 200)), elements=finite
    )
)
def test_any_finite_capture_gives_finite_input(real: np.ndarray) -> None:
    iq = (real + 1j * real[..., ::-1]).astype(np.complex64)
    out = preprocess(iq, small_spec)
    assert out.shape == (real.shape[0], 2, 8, 4)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("amplitude", [1e-30, 1e-6, 1.0, 1e12, 1e20, 1e30, 3e38])
def test_features_are_finite_and_exact_over_float32s_whole_range(amplitude: float) -> None:
    """Power in float32 overflows above ~1e17 per sample (an FFT bin sums n_fft of them, then
    squares): loud captures take the float64 path and still match the float64 reference."""
    spec = FeatureSpec()
    rng = np.random.default_rng(3)
    unit = rng.standard_normal((5, spec.samples_per_capture, 2))
    unit /= np.abs(unit).max()
    capture = (
        iq_pairs_to_complex(unit * np.float32(amplitude))
        if amplitude < 3.4e38
        else iq_pairs_to_complex((unit * 3e38).astype(np.float32))
    )
    got = preprocess(capture, spec)[0]
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, reference_log_mel(capture, spec), atol=2e-3, rtol=1e-5)


def test_silence_and_dc_are_finite() -> None:
    spec = FeatureSpec()
    silence = np.zeros((5, spec.samples_per_capture), np.complex64)
    assert (preprocess(silence, spec) == np.float32(10 * np.log10(spec.power_floor))).all()
    dc = np.full((5, spec.samples_per_capture), np.float32(3e38), np.complex64)
    assert np.isfinite(preprocess(dc, spec)).all()
