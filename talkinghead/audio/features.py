"""MFCC features and the per-video-frame audio windows of Stage 1 (method.md section 3).

MFCC
    :func:`mfcc` reproduces ``python_speech_features.mfcc`` (the library the original code used)
    with its default settings, which are the method's: 25 ms frames every 10 ms (400 / 160
    samples at 16 kHz), rectangular window (psf applies none by default), pre-emphasis 0.97,
    ``|rfft(frame, 512)|^2 / 512`` power spectrum, 26 triangular mel filters from 0 Hz to
    Nyquist, natural log (exact zeros floored to float64 eps), DCT-II (orthonormal), first 13
    cepstra, sinusoidal lifter 22. psf then replaces c0 by the log frame energy; we drop that
    column, so 12 values remain per 10 ms row. Framing is psf's: ``1 + ceil((S - 400) / 160)``
    frames (one if ``S <= 400``), the last one zero-padded, no centring.

    The pieces come from numpy/scipy (``scipy.fft.rfft``, ``scipy.fft.dct``, the HTK mel scale
    of :func:`hz_to_mel`, which is ``librosa.hz_to_mel(htk=True)``'s expression; no librosa is
    imported, so MFCCs work where it is not installed), but the mel filterbank is built the
    way psf builds it: filter edges floored to integer FFT bins (``floor(513 * f / sr)``) and
    triangles drawn over bin indices. ``librosa.filters.mel(htk=True, norm=None)`` draws the
    triangles over exact bin frequencies instead; its weights differ from psf's by up to 0.25
    and the resulting cepstra differ markedly (on a 3 s gated chirp + noise: correlation 0.990,
    median abs difference 0.1-0.4, max up to 11 in lifted cepstral units, comparable to the
    features' own spread), so we keep psf's filterbank: ``tests/test_audio.py`` re-implements
    psf's pipeline independently and our output agrees with it to float32 rounding (max abs
    difference about 2e-6 on values up to ~40, i.e. float32 rounding).

Windows
    :func:`frame_windows` pads 0.12 s (1,920 samples at 16 kHz) of zeros at both ends, computes
    the MFCC rows of the padded signal and gives video frame ``t`` (25 fps) the rows
    ``[4t, 4t + 28)``: a ``[28, 12]`` window. Row ``4t + k`` starts ``10k - 120`` ms after frame
    ``t``'s time, so window ``t`` spans from 120 ms before frame ``t``'s time to 160 ms after it
    (row starts; the last 25 ms row ends 175 ms after). Row 12 of window ``t`` is the row that
    *starts* at frame ``t``'s time: an event there first fills a whole row at row 12 (an onset is
    fully inside rows 12, 13, ...; a single click, being 25 ms wide in frame terms, also shows in
    rows 10 and 11, whose 25 ms spans reach it) and it is at row ``12 - 4k`` of window ``t + k``.
    Windows that run past the last MFCC row repeat that row (edge padding).

    ``cmvn=True`` standardises every window with the mean and deviation of each cepstrum over
    all MFCC rows of the (unpadded) utterance (:func:`talkinghead.audio.augment.cmvn_stats`):
    per-utterance cepstral mean and variance normalisation, for speaker and channel
    independence (README). The padding rows are normalised with the same statistics.

    ``features="phones"`` gives the same 28 rows of phone log posteriors instead (42 per row,
    :mod:`talkinghead.audio.phones`, whose rows start every 160 samples as the MFCC rows do;
    padded-audio row ``k`` is phone row ``k - 12``, the edge rows repeated outside the audio), and
    ``"mfcc+phones"`` both side by side ``[N, 28, 54]`` (Stage 1's ``audio2coeff.model.features``).

    :func:`iter_frame_windows` yields the same windows in blocks, each computed from only the
    audio slice it needs (plus one sample of pre-emphasis context), so memory stays bounded for
    long audio; the blocks concatenate to exactly :func:`frame_windows`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import numpy as np
import scipy.fft

from talkinghead.audio.augment import cmvn_stats
from talkinghead.audio.phones import NUM_PHONES, phone_log_posteriors
from talkinghead.errors import ConfigError, InputError

# Settings of python_speech_features.mfcc (defaults) = the method's settings.
SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
STEP_SECONDS = 0.010
NFFT = 512
NUM_FILTERS = 26
NUM_CEPSTRA = 13  # computed; the first is dropped
PREEMPHASIS = 0.97
CEP_LIFTER = 22
NUM_FEATURES = NUM_CEPSTRA - 1  # 12 values per MFCC row

# Frame-aligned windows.
FPS = 25
WINDOW_ROWS = 28
PAD_SECONDS = 0.12  # zeros added at both ends; 12 MFCC rows
_FLOAT64_EPS = np.finfo(np.float64).eps
_BLOCK_ROWS = 4096  # MFCC rows computed at once (bounds temporary memory to ~25 MB)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _frame_geometry(sample_rate: int) -> tuple[int, int]:
    """(frame length, frame step) in samples, rounded half-up as psf does."""
    frame_len = _round_half_up(WINDOW_SECONDS * sample_rate)
    if frame_len > NFFT:
        raise ConfigError(
            f"sample_rate {sample_rate} Hz is too high for the MFCC (25 ms = {frame_len} samples "
            f"> nfft {NFFT}); load the audio at {SAMPLE_RATE} Hz (load_audio(path, {SAMPLE_RATE}))"
        )
    return frame_len, _round_half_up(STEP_SECONDS * sample_rate)


def _check_mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise InputError(
            f"audio must be a 1-D mono array [S], got shape {tuple(audio.shape)}; "
            "load it with talkinghead.audio.load_audio"
        )
    return audio


def num_mfcc_rows(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of MFCC rows psf produces for ``num_samples`` samples (at least one)."""
    frame_len, step = _frame_geometry(sample_rate)
    if num_samples <= frame_len:
        return 1
    return 1 + -(-(num_samples - frame_len) // step)  # 1 + ceil((S - L) / step)


def num_video_frames(num_samples: int, fps: float = FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames covering ``num_samples`` of audio: ``round(seconds * fps)``, halves rounded up."""
    return _round_half_up(num_samples * fps / sample_rate)


def hz_to_mel(hz):
    """The HTK mel scale, ``2595 log10(1 + f / 700)`` (the very expression of psf and of
    ``librosa.hz_to_mel(htk=True)``; here so that MFCCs need no librosa)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`: ``700 (10^(m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, nfft: int = NFFT, num_filters: int = NUM_FILTERS) -> np.ndarray:
    """psf's mel filterbank ``[num_filters, nfft // 2 + 1]`` (edges floored to FFT bins).

    Filter ``j`` rises linearly from bin ``b[j]`` (weight 0) to ``b[j+1]`` (weight 1) and falls to
    ``b[j+2]`` (exclusive), where ``b = floor((nfft + 1) * mel_to_hz(linspace(0, mel(sr/2))) / sr)``.
    """
    mel_points = np.linspace(0.0, hz_to_mel(sample_rate / 2), num_filters + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mel_points) / sample_rate)
    left, centre, right = bins[:-2, None], bins[1:-1, None], bins[2:, None]  # [F, 1] each
    k = np.arange(nfft // 2 + 1, dtype=np.float64)[None, :]  # [1, K]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((k >= left) & (k < centre), (k - left) / (centre - left), 0.0)
        falling = np.where((k >= centre) & (k < right), (right - k) / (right - centre), 0.0)
    bank = rising + falling
    bank.setflags(write=False)
    return bank


@lru_cache(maxsize=1)
def _lifter() -> np.ndarray:
    n = np.arange(NUM_CEPSTRA)
    return 1.0 + (CEP_LIFTER / 2.0) * np.sin(np.pi * n / CEP_LIFTER)


# --------------------------------------------------------------------------------------------
# MFCC
# --------------------------------------------------------------------------------------------
def _emphasised_segment(audio: np.ndarray, pad: int, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of the pre-emphasised padded signal, float64.

    The padded signal is ``p = [0] * pad + audio + [0] * pad`` (length ``P``); pre-emphasis is
    ``e[i] = p[i] - 0.97 p[i - 1]`` with ``p[-1] = 0`` (psf keeps ``e[0] = p[0]``), and
    ``e[i] = 0`` for ``i >= P`` (psf zero-pads the last frame after pre-emphasis).
    """
    seg = np.zeros(stop - start + 1, dtype=np.float64)  # p[start - 1 : stop]
    lo, hi = max(start - 1, pad), min(stop, pad + audio.shape[0])
    if hi > lo:
        seg[lo - (start - 1) : hi - (start - 1)] = audio[lo - pad : hi - pad]
    emphasised = seg[1:] - PREEMPHASIS * seg[:-1]
    signal_end = 2 * pad + audio.shape[0]  # psf pads the *emphasised* signal with zeros
    emphasised[max(signal_end - start, 0) :] = 0.0
    return emphasised


def _cepstra(frames: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[n, frame_len]`` pre-emphasised frames -> ``[n, 12]`` liftered cepstra c1..c12 (float64)."""
    spectrum = scipy.fft.rfft(frames, n=NFFT, axis=1)  # [n, 257] complex
    power = (spectrum.real**2 + spectrum.imag**2) / NFFT
    energies = power @ mel_filterbank(sample_rate).T  # [n, 26]
    energies = np.where(energies == 0, _FLOAT64_EPS, energies)
    cepstra = scipy.fft.dct(np.log(energies), type=2, axis=1, norm="ortho")[:, :NUM_CEPSTRA]
    return (cepstra * _lifter())[:, 1:]


def _mfcc_rows(audio: np.ndarray, pad: int, row_start: int, row_stop: int, sample_rate: int) -> np.ndarray:
    """MFCC rows ``[row_start, row_stop)`` of the signal padded with ``pad`` zeros, float32 ``[n, 12]``.

    Only the samples those rows need are touched, ``_BLOCK_ROWS`` rows at a time.
    """
    frame_len, step = _frame_geometry(sample_rate)
    out = np.empty((max(row_stop - row_start, 0), NUM_FEATURES), dtype=np.float32)
    for block_start in range(row_start, row_stop, _BLOCK_ROWS):
        block_stop = min(block_start + _BLOCK_ROWS, row_stop)
        first = block_start * step
        last = (block_stop - 1) * step + frame_len
        emphasised = _emphasised_segment(audio, pad, first, last)
        frames = np.lib.stride_tricks.sliding_window_view(emphasised, frame_len)[::step]  # [n, L]
        out[block_start - row_start : block_stop - row_start] = _cepstra(frames, sample_rate)
    return out


def mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """MFCC of mono ``audio [S]``: float32 ``[T, 12]`` at 100 rows/s (psf settings, c0 dropped).

    ``T = 1 + ceil((S - 400) / 160)`` at 16 kHz (one row if ``S <= 400``).
    """
    audio = _check_mono(audio)
    return _mfcc_rows(audio, 0, 0, num_mfcc_rows(audio.shape[0], sample_rate), sample_rate)


# --------------------------------------------------------------------------------------------
# Frame-aligned windows
# --------------------------------------------------------------------------------------------
def _window_start_rows(frames: np.ndarray, fps: float, sample_rate: int) -> np.ndarray:
    """First MFCC row of each frame's window: ``4t`` at 25 fps (frame time / 10 ms step)."""
    _, step = _frame_geometry(sample_rate)
    rows_per_frame = sample_rate / (fps * step)
    return np.floor(frames * rows_per_frame + 0.5).astype(np.int64)


def utterance_cmvn(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """CMVN statistics of mono ``audio [S]``: mean and std ``[12]`` of its MFCC rows."""
    return cmvn_stats(mfcc(audio, sample_rate))


def voice_statistics(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """A recording's voice signature: mean and deviation ``[12]`` (float32) of the MFCC rows of its
    louder half (the rows whose 25 ms frames carry at least the median energy; pauses, whose
    spectrum is the room's, are left out). Not normalised per utterance: the speaker and the
    channel show in it, which is what :func:`voice_distance` compares."""
    audio = _check_mono(audio).astype(np.float64)
    rows = mfcc(audio, sample_rate)  # [T, 12]
    frame_len, step = _frame_geometry(sample_rate)
    padded = np.concatenate([[0.0], np.cumsum(np.pad(audio, (0, frame_len)) ** 2)])  # energy by differences
    starts = np.arange(len(rows)) * step
    energy = padded[starts + frame_len] - padded[starts]  # [T] sum of squares of each frame
    return cmvn_stats(rows[energy >= np.median(energy)])


def voice_distance(person: tuple[np.ndarray, np.ndarray], driving: tuple[np.ndarray, np.ndarray]) -> float:
    """How far the ``driving`` recording's voice is from the ``person``'s (both
    :func:`voice_statistics`): the root mean square over the 12 cepstra of the difference of the
    means in units of the person's deviation. On the real videos (README): other stretches of
    the same recording 0.15-0.34; other speakers and recordings 0.58-1.26."""
    (person_mean, person_std), (driving_mean, _) = person, driving
    z = (np.asarray(driving_mean, np.float64) - person_mean) / np.asarray(person_std, np.float64)
    return float(np.sqrt(np.mean(z * z)))


#: Stage-1 input features per 10 ms row (``audio2coeff.model.features``): ``mfcc`` (the paper's
#: 12 cepstra), ``phones`` (the 42 phone log posteriors of :mod:`talkinghead.audio.phones`, an
#: acoustic model trained on real speech) or ``mfcc+phones`` (both, the cepstra first).
AUDIO_FEATURES = ("mfcc", "phones", "mfcc+phones")


def check_features(features: str, key: str = "audio2coeff.model.features") -> str:
    """``features`` if it is one of :data:`AUDIO_FEATURES`, else a one-line :class:`ConfigError` naming ``key``."""
    if features not in AUDIO_FEATURES:
        raise ConfigError(f"{key}={features!r}; use one of {', '.join(AUDIO_FEATURES)}")
    return features


def window_columns(features: str = "mfcc") -> int:
    """Values per window row for ``features``: 12 (mfcc), 42 (phones) or 54 (mfcc+phones)."""
    check_features(features)
    return (NUM_FEATURES if "mfcc" in features else 0) + (NUM_PHONES if "phones" in features else 0)


def _window_rows(frame_start: int, frame_stop: int, num_samples: int, fps: float, sample_rate: int) -> np.ndarray:
    """The padded-audio MFCC rows of each frame's window: int64 ``[n, 28]``."""
    pad = _round_half_up(PAD_SECONDS * sample_rate)
    total_rows = num_mfcc_rows(num_samples + 2 * pad, sample_rate)
    starts = _window_start_rows(np.arange(frame_start, frame_stop), fps, sample_rate)  # [n]
    return np.clip(starts[:, None] + np.arange(WINDOW_ROWS), 0, total_rows - 1)  # [n, 28]


def _windows(audio: np.ndarray, frame_start: int, frame_stop: int, fps: float, sample_rate: int,
             stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """MFCC windows of frames ``[frame_start, frame_stop)``: float32 ``[n, 28, 12]`` (standardised
    with ``stats = (mean [12], std [12])`` when given)."""
    pad = _round_half_up(PAD_SECONDS * sample_rate)
    rows = _window_rows(frame_start, frame_stop, audio.shape[0], fps, sample_rate)  # [n, 28]
    first_row, last_row = int(rows.min()), int(rows.max())
    features = _mfcc_rows(audio, pad, first_row, last_row + 1, sample_rate)  # [rows, 12]
    if stats is not None:
        features = (features - stats[0]) / stats[1]
    return features[rows - first_row]  # [n, 28, 12]


def _phone_windows(phone_rows: np.ndarray, frame_start: int, frame_stop: int, num_samples: int, fps: float,
                   sample_rate: int) -> np.ndarray:
    """Phone windows of frames ``[frame_start, frame_stop)`` from the utterance's phone rows
    ``[R, 42]``: float32 ``[n, 28, 42]``. Row ``k`` of the padded audio is phone row ``k - 12``
    (the padding holds no speech: rows before the first and past the last repeat the edge rows)."""
    pad_rows = _round_half_up(PAD_SECONDS * sample_rate) // _frame_geometry(sample_rate)[1]
    rows = _window_rows(frame_start, frame_stop, num_samples, fps, sample_rate) - pad_rows
    return phone_rows[np.clip(rows, 0, len(phone_rows) - 1)]  # [n, 28, 42]


def _utterance_phones(audio: np.ndarray, features: str, sample_rate: int) -> np.ndarray | None:
    if "phones" not in features:
        return None
    return phone_log_posteriors(audio, sample_rate)  # [R, 42] over the whole utterance


def _feature_windows(audio: np.ndarray, frame_start: int, frame_stop: int, fps: float, sample_rate: int,
                     stats, phone_rows: np.ndarray | None, features: str) -> np.ndarray:
    parts = []
    if "mfcc" in features:
        parts.append(_windows(audio, frame_start, frame_stop, fps, sample_rate, stats))
    if phone_rows is not None:
        parts.append(_phone_windows(phone_rows, frame_start, frame_stop, audio.shape[0], fps, sample_rate))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def frame_windows(
    audio: np.ndarray,
    num_frames: int | None = None,
    fps: float = FPS,
    sample_rate: int = SAMPLE_RATE,
    cmvn: bool = False,
    features: str = "mfcc",
) -> np.ndarray:
    """Per-video-frame windows of mono ``audio [S]``: float32 ``[N, 28, C]`` (``C`` =
    :func:`window_columns` ``(features)``: 12 MFCC, 42 phone posteriors, or both side by side).

    Window ``t`` holds MFCC rows ``[4t, 4t + 28)`` of the audio padded with 0.12 s of zeros at
    both ends (from 120 ms before frame ``t``'s time to 160 ms after; frame ``t``'s time is the
    start of row 12); rows past the end repeat the last row. ``N`` defaults to
    :func:`num_video_frames` ``(len(audio))``; pass the video's frame count to match a video.
    At other frame rates window ``t`` starts at row ``round(t * 100 / fps)``. ``cmvn``: standardise
    the MFCC with the utterance's own cepstral statistics (:func:`utterance_cmvn`). Phone rows
    (:mod:`talkinghead.audio.phones`) cover the same 10 ms rows; they are normalised per
    utterance by their own front end.
    """
    audio = _check_mono(audio)
    columns = window_columns(features)
    if num_frames is None:
        num_frames = num_video_frames(audio.shape[0], fps, sample_rate)
    if num_frames < 0:
        raise InputError(f"num_frames must be >= 0, got {num_frames}")
    if num_frames == 0:
        return np.zeros((0, WINDOW_ROWS, columns), dtype=np.float32)
    return next(iter_frame_windows(audio, num_frames, num_frames, fps, sample_rate, cmvn, features))  # one block


def iter_frame_windows(
    audio: np.ndarray,
    chunk_frames: int = 1500,
    num_frames: int | None = None,
    fps: float = FPS,
    sample_rate: int = SAMPLE_RATE,
    cmvn: bool = False,
    features: str = "mfcc",
) -> Iterator[np.ndarray]:
    """Yield :func:`frame_windows` in consecutive float32 blocks ``[n <= chunk_frames, 28, C]``.

    Each block of MFCC windows is computed from the slice of audio it needs, so peak memory
    depends on ``chunk_frames`` (default 1,500 frames = 60 s), not on the audio length; phone
    posteriors are computed once for the whole utterance (42 values per 10 ms: 60 MB per hour).
    The concatenation of the blocks equals ``frame_windows(audio, num_frames, fps, sample_rate)``
    exactly.
    """
    audio = _check_mono(audio)
    check_features(features)
    if chunk_frames < 1:
        raise InputError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if num_frames is None:
        num_frames = num_video_frames(audio.shape[0], fps, sample_rate)
    stats = utterance_cmvn(audio, sample_rate) if cmvn and "mfcc" in features else None  # over the whole utterance
    phone_rows = _utterance_phones(audio, features, sample_rate)
    for frame_start in range(0, num_frames, chunk_frames):
        yield _feature_windows(audio, frame_start, min(frame_start + chunk_frames, num_frames), fps, sample_rate,
                               stats, phone_rows, features)
