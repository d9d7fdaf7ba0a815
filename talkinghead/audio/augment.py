"""Channel and room augmentation of speech, and per-utterance cepstral normalisation (CMVN).

Why: a Stage-1 model trained on one recording chain (the synthetic world's synthesiser, no room,
no microphone) learns that chain. Real speech arrives through rooms, microphones, codecs and
noise, from voices of every pitch and rate. Two levers against that, both used by general
training (``audio2coeff.train.augment`` and ``audio2coeff.train.cmvn``; README):

Augmentation (:func:`augment_audio`)
    Each training clip gets ``copies`` extra versions of its audio, each a random chain of:

    ``speed``    resampling by a factor in ``speed`` (0.9-1.1: pitch, formants and tempo move
                 together, Kaldi's speed perturbation); the targets are time-warped with it;
    ``reverb``   convolution with a synthetic room impulse response (direct path plus
                 exponentially decaying noise, RT60 in ``rt60``), direct-to-reverberant mix;
    ``eq``       a random smooth spectral tilt/colour (+-``eq_db`` at 5 log-spaced frequencies,
                 interpolated), the microphone;
    ``band``     telephone-like band limits (high-pass ``low`` Hz, low-pass ``high`` Hz);
    ``codec``    8-bit mu-law quantisation;
    ``noise``    white, pink or brown noise at an SNR in ``snr_db`` relative to the speech's
                 mean power;
    ``gain``     a level change in ``gain_db``, clipped to [-1, 1].

    Every choice comes from the ``numpy.random.Generator`` passed in, so the same seed gives
    the same audio (the dataset seeds it from ``(seed, clip, copy)``).

CMVN (:func:`cmvn_stats`)
    The mean and deviation of each of the 12 cepstra over all MFCC rows of an utterance; the
    MFCC windows are then standardised with them (``frame_windows(..., cmvn=True)``). Mean
    removal takes a fixed linear channel (microphone, EQ) out of the cepstra, variance
    normalisation the speaker's and channel's spread. c1..c12 ignore a gain change by
    construction (it only moves c0, which psf's settings drop), and so do the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from talkinghead.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "augment_audio",
    "add_noise",
    "reverberate",
    "random_eq",
    "band_limit",
    "mu_law",
    "apply_gain",
    "speed_perturb",
    "average_over_rates",
    "cmvn_stats",
]


def apply_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """``audio [S]`` scaled by ``gain_db`` and clipped to [-1, 1] (float32)."""
    return np.clip(np.asarray(audio, np.float32) * np.float32(10.0 ** (gain_db / 20.0)), -1.0, 1.0)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    """``audio [S]`` plus ``colour`` (white | pink | brown) noise at ``snr_db`` below the
    audio's mean power (float32)."""
    audio = np.asarray(audio, np.float32)
    white = rng.standard_normal(len(audio))
    if colour != "white":
        spectrum = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(len(audio)), 1.0 / max(len(audio), 1))
        spectrum /= f ** (0.5 if colour == "pink" else 1.0)  # 1/f power (pink), 1/f^2 (brown)
        white = np.fft.irfft(spectrum, n=len(audio))
    power = float(np.mean(audio.astype(np.float64) ** 2)) + 1e-12
    noise = white / (np.sqrt(np.mean(white**2)) + 1e-12) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (audio + noise).astype(np.float32)


def reverberate(audio: np.ndarray, rt60: float, rng: np.random.Generator, sample_rate: int = 16000,
                direct_ratio_db: float = 3.0) -> np.ndarray:
    """``audio [S]`` convolved with a synthetic room response of reverberation time ``rt60``
    seconds (exponentially decaying noise after a direct path ``direct_ratio_db`` above the
    reverberant energy); same length and RMS as the input (float32)."""
    from scipy.signal import fftconvolve  # local: scipy.signal costs 0.9 s; only augmentation needs it

    audio = np.asarray(audio, np.float32)
    n = max(int(rt60 * sample_rate), 16)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / max(rt60, 1e-3))  # -60 dB at rt60
    tail[: int(0.002 * sample_rate)] = 0.0  # the first reflections arrive after ~2 ms
    tail *= 10.0 ** (-direct_ratio_db / 20.0) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    tail[0] = 1.0  # direct path
    wet = fftconvolve(audio, tail)[: len(audio)]
    rms_in, rms_out = np.sqrt(np.mean(audio.astype(np.float64) ** 2)), np.sqrt(np.mean(wet**2)) + 1e-12
    return np.clip(wet * (rms_in / rms_out), -1.0, 1.0).astype(np.float32)


def random_eq(audio: np.ndarray, rng: np.random.Generator, max_db: float = 6.0, sample_rate: int = 16000) -> np.ndarray:
    """``audio [S]`` through a random smooth EQ: gains in +-``max_db`` at 5 log-spaced
    frequencies (100 Hz .. 6.4 kHz) interpolated over log frequency; RMS kept (float32)."""
    audio = np.asarray(audio, np.float32)
    spectrum = np.fft.rfft(audio.astype(np.float64))
    freqs = np.fft.rfftfreq(len(audio), 1.0 / sample_rate)
    anchors = np.log(100.0 * 4.0 ** np.arange(5))  # 100, 400, 1600, 6400 ... Hz
    gains_db = rng.uniform(-max_db, max_db, len(anchors))
    curve = 10.0 ** (np.interp(np.log(np.maximum(freqs, 1.0)), anchors, gains_db) / 20.0)
    out = np.fft.irfft(spectrum * curve, n=len(audio))
    rms_in, rms_out = np.sqrt(np.mean(audio.astype(np.float64) ** 2)), np.sqrt(np.mean(out**2)) + 1e-12
    return np.clip(out * (rms_in / rms_out), -1.0, 1.0).astype(np.float32)


def band_limit(audio: np.ndarray, low: float = 300.0, high: float = 3400.0, sample_rate: int = 16000) -> np.ndarray:
    """``audio [S]`` band-limited to ``[low, high]`` Hz (4th-order Butterworth, zero phase; float32)."""
    from scipy.signal import butter, sosfiltfilt  # local: scipy.signal costs 0.9 s; only augmentation needs it

    nyquist = sample_rate / 2.0
    high = min(high, 0.95 * nyquist)
    sos = butter(4, [low / nyquist, high / nyquist], btype="bandpass", output="sos")
    return sosfiltfilt(sos, np.asarray(audio, np.float64)).astype(np.float32)


def mu_law(audio: np.ndarray, bits: int = 8) -> np.ndarray:
    """``audio [S]`` through mu-law companding quantised to ``bits`` bits (telephone codec; float32)."""
    mu = 2**bits - 1
    x = np.clip(np.asarray(audio, np.float64), -1.0, 1.0)
    encoded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    quantised = np.round((encoded + 1.0) / 2.0 * mu) / mu * 2.0 - 1.0
    return (np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu).astype(np.float32)


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """``audio [S]`` played ``factor`` times faster (resampled: pitch and tempo both scale):
    ``[round(S / factor)]`` float32. Frame ``t'`` of the result is time ``t' * factor`` of the
    input. ``factor`` is used to 1/100 (polyphase resampling by 100 / round(100 factor))."""
    from scipy.signal import resample_poly  # local: scipy.signal costs 0.9 s; only augmentation needs it

    down = int(round(factor * 100))
    out = resample_poly(np.asarray(audio, np.float64), 100, down)
    n = int(round(len(audio) * 100 / down))
    return np.pad(out, (0, max(0, n - len(out))))[:n].astype(np.float32)


def average_over_rates(predict: Callable[[np.ndarray, int], np.ndarray], audio: np.ndarray, num_frames: int,
                       rates: Sequence[float]) -> np.ndarray:
    """Test-time speed ensemble: ``predict(audio, frames) -> [frames, D]`` run on ``audio [S]``
    played at each of ``rates`` (:func:`speed_perturb`; 1.0: the audio itself), each result read
    at original frame ``t``'s place in its copy (frame ``t / rate``, linear interpolation between
    frames, clamped at the ends), and averaged: float32 ``[num_frames, D]``. The mapping holds at
    any frame rate: a copy played ``rate`` times faster reaches every moment ``rate`` times sooner."""
    total = None
    for rate in rates:
        if rate == 1.0:
            out = np.asarray(predict(audio, num_frames), np.float32)
        else:
            played_frames = int(np.ceil(num_frames / rate)) + 1
            played = np.asarray(predict(speed_perturb(audio, rate), played_frames), np.float32)  # [K, D]
            position = np.minimum(np.arange(num_frames) / rate, len(played) - 1)  # [N]
            low = np.floor(position).astype(np.int64)
            high = np.minimum(low + 1, len(played) - 1)
            frac = (position - low)[:, None].astype(np.float32)
            out = played[low] * (1.0 - frac) + played[high] * frac
        total = out if total is None else total + out
    return total / float(len(rates))


@dataclass
class AugmentConfig:
    """Ranges and probabilities of :func:`augment_audio` (``audio2coeff.train.augment``)."""

    copies: int = 0  # augmented versions per clip (0: off)
    speed: tuple[float, float] = (0.9, 1.1)
    p_speed: float = 0.5
    rt60: tuple[float, float] = (0.15, 0.8)
    p_reverb: float = 0.5
    eq_db: float = 8.0
    p_eq: float = 0.7
    band: tuple[float, float] = (300.0, 3400.0)
    p_band: float = 0.2
    p_codec: float = 0.15
    snr_db: tuple[float, float] = (5.0, 35.0)
    p_noise: float = 0.6
    gain_db: tuple[float, float] = (-12.0, 6.0)

    @classmethod
    def coerce(cls, value: Mapping[str, Any] | "AugmentConfig" | None) -> "AugmentConfig":
        """From a config mapping (unknown keys are a :class:`ConfigError`)."""
        if isinstance(value, cls):
            return value
        values = dict(value or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key audio2coeff.train.augment.{unknown[0]}; valid keys: {', '.join(sorted(known))}")
        for key, v in values.items():
            if key in ("speed", "rt60", "band", "snr_db", "gain_db"):
                values[key] = tuple(float(x) for x in v)
        out = cls(**values)
        if out.copies < 0 or not 0.5 <= out.speed[0] <= out.speed[1] <= 2.0:
            raise ConfigError(f"audio2coeff.train.augment: copies={out.copies} must be >= 0 and speed={out.speed} "
                              "an increasing range inside [0.5, 2]")
        return out


def augment_audio(audio: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | Mapping | None = None,
                  sample_rate: int = 16000) -> tuple[np.ndarray, float]:
    """One random channel/room version of ``audio [S]`` (see the module docstring):
    ``(augmented float32 [S'], speed factor)``; ``S' = round(S / factor)`` (1.0: no speed change;
    factors are multiples of 0.01)."""
    cfg = AugmentConfig.coerce(cfg)
    audio = np.asarray(audio, np.float32)
    draws = rng.random(6)  # one draw per optional step, always taken: the chain is seed-stable
    factor = round(float(rng.uniform(*cfg.speed)), 2) if draws[0] < cfg.p_speed else 1.0  # speed_perturb's grid
    if factor != 1.0:
        audio = speed_perturb(audio, factor)
    if draws[1] < cfg.p_reverb:
        audio = reverberate(audio, float(rng.uniform(*cfg.rt60)), rng, sample_rate)
    if draws[2] < cfg.p_eq:
        audio = random_eq(audio, rng, cfg.eq_db, sample_rate)
    if draws[3] < cfg.p_band:
        audio = band_limit(audio, *cfg.band, sample_rate=sample_rate)
    if draws[4] < cfg.p_codec:
        audio = mu_law(audio)
    if draws[5] < cfg.p_noise:
        audio = add_noise(audio, float(rng.uniform(*cfg.snr_db)), rng, str(rng.choice(["white", "pink", "brown"])))
    audio = apply_gain(audio, float(rng.uniform(*cfg.gain_db)))
    return audio, factor


def cmvn_stats(mfcc_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cepstrum mean and deviation of an utterance's MFCC rows ``[T, 12]`` ->
    ``(mean [12], std [12])`` float32 (std floored at 1e-3)."""
    rows = np.asarray(mfcc_rows, np.float64)
    return rows.mean(axis=0).astype(np.float32), np.maximum(rows.std(axis=0), 1e-3).astype(np.float32)
