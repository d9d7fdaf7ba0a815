"""Speech-like audio with real acoustic structure, and the phoneme timing behind it.

A *timeline* is a sequence of phonemes (with silences) and their start/end times; the audio
is made from it with a source-filter synthesiser:

* **source**: a glottal pulse train (Rosenberg pulse, differentiated for lip radiation) whose
  F0 follows the speaker's range, a declining phrase intonation and pitch accents on stressed
  syllables, plus white noise for aspiration, fricatives and plosive bursts;
* **filter**: a cascade of four formant resonators whose frequencies move smoothly between
  phoneme targets (scaled by the speaker's vocal-tract length), applied frame by frame in the
  short-time Fourier domain (one ``stft`` / ``istft`` for the whole utterance: no per-sample
  Python loops, and smooth formant transitions for free);
* **structure**: syllables (V, CV, CVC) grouped into phrases separated by pauses, stressed
  syllables longer/louder/higher, phrase-level loudness variation.

The phoneme inventory covers open/mid/close, front/back and rounded vowels, bilabials
``p b m``, labiodentals ``f v``, alveolars ``t d s n l`` and velars ``k g``; ``mouth.py``
turns the same timeline into mouth-shape trajectories, so the mouth follows the phonetic
content and not merely the loudness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal
from scipy.ndimage import convolve1d

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640

# STFT used by the filter stage: 32 ms windows, 8 ms hop.
_NFFT = 512
_HOP = 128


@dataclass(frozen=True)
class Phoneme:
    """Acoustic description of one phoneme (formants in Hz for a reference vocal tract).

    ``kind``: ``vowel`` | ``plosive`` | ``fricative`` | ``nasal`` | ``liquid`` | ``silence``.
    ``formants``: F1-F4 targets (for consonants: the locus the neighbouring vowel moves toward).
    ``voice``: voicing amplitude; ``noise``/``noise_hz``/``noise_bw``: frication (or burst)
    noise amplitude, centre and bandwidth; ``duration``: typical duration in seconds.
    """

    symbol: str
    kind: str
    formants: tuple[float, float, float, float]
    voice: float
    noise: float = 0.0
    noise_hz: float = 4000.0
    noise_bw: float = 2000.0
    duration: float = 0.08
    antiformant: float = 0.0  # nasals: the anti-resonance (Hz) of the closed oral cavity


#: The phoneme inventory; index 0 is silence. Order is part of the timeline encoding.
PHONEMES: tuple[Phoneme, ...] = (
    Phoneme("sil", "silence", (500, 1500, 2500, 3500), 0.0, duration=0.3),
    # vowels: open a, mid front e, close front i, mid back rounded o, close back rounded u, schwa
    Phoneme("a", "vowel", (750, 1250, 2550, 3500), 1.0, duration=0.13),
    Phoneme("e", "vowel", (500, 1850, 2550, 3500), 1.0, duration=0.12),
    Phoneme("i", "vowel", (290, 2250, 2950, 3600), 1.0, duration=0.11),
    Phoneme("o", "vowel", (480, 880, 2450, 3400), 1.0, duration=0.12),
    Phoneme("u", "vowel", (320, 780, 2250, 3300), 1.0, duration=0.11),
    Phoneme("@", "vowel", (520, 1450, 2450, 3450), 0.9, duration=0.07),
    # bilabials
    Phoneme("p", "plosive", (400, 900, 2200, 3300), 0.0, 1.0, 1200, 1800, 0.09),
    Phoneme("b", "plosive", (300, 900, 2200, 3300), 0.15, 0.6, 1200, 1800, 0.075),
    Phoneme("m", "nasal", (260, 950, 2200, 3300), 0.45, duration=0.08, antiformant=1100),
    # labiodentals
    Phoneme("f", "fricative", (400, 1100, 2300, 3400), 0.0, 0.35, 4500, 5000, 0.1),
    Phoneme("v", "fricative", (300, 1100, 2300, 3400), 0.35, 0.2, 4500, 5000, 0.075),
    # alveolars
    Phoneme("t", "plosive", (400, 1750, 2700, 3500), 0.0, 1.0, 4200, 2500, 0.085),
    Phoneme("d", "plosive", (300, 1700, 2700, 3500), 0.15, 0.6, 4000, 2500, 0.07),
    Phoneme("s", "fricative", (400, 1700, 2700, 3500), 0.0, 1.0, 6000, 2600, 0.11),
    Phoneme("n", "nasal", (260, 1650, 2600, 3400), 0.45, duration=0.07, antiformant=2000),
    Phoneme("l", "liquid", (360, 1100, 2800, 3500), 0.65, duration=0.07),
    # velars
    Phoneme("k", "plosive", (400, 2000, 2500, 3500), 0.0, 1.0, 2200, 1400, 0.09),
    Phoneme("g", "plosive", (300, 1950, 2450, 3500), 0.15, 0.6, 2100, 1400, 0.075),
)
SYMBOLS: tuple[str, ...] = tuple(p.symbol for p in PHONEMES)
INDEX: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS)}
SILENCE = 0
VOWELS = tuple(i for i, p in enumerate(PHONEMES) if p.kind == "vowel")
CONSONANTS = tuple(i for i, p in enumerate(PHONEMES) if p.kind not in ("vowel", "silence"))

_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 220.0])  # formant bandwidths (Hz)
_TABLE_FORMANTS = np.array([p.formants for p in PHONEMES], dtype=np.float64)  # [P, 4]
_TABLE_VOICE = np.array([p.voice for p in PHONEMES])
_TABLE_NOISE = np.array([p.noise for p in PHONEMES])
_TABLE_NOISE_HZ = np.array([p.noise_hz for p in PHONEMES])
_TABLE_NOISE_BW = np.array([p.noise_bw for p in PHONEMES])
_IS_PLOSIVE = np.array([p.kind == "plosive" for p in PHONEMES])
_IS_NASAL = np.array([p.kind == "nasal" for p in PHONEMES])
_TABLE_ANTIFORMANT = np.array([p.antiformant for p in PHONEMES])


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: pitch, vocal tract, rate, loudness and breathiness."""

    f0: float = 120.0  # median F0 (Hz)
    f0_range: float = 4.0  # intonation range in semitones
    tract_scale: float = 1.0  # formant scale (shorter tract -> higher formants)
    rate: float = 1.0  # speaking-rate factor (durations are divided by it)
    gain_db: float = 0.0  # overall loudness
    breathiness: float = 0.05  # aspiration noise mixed into voicing
    pause: float = 0.35  # mean pause between phrases (s)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Voice":
        """A random adult voice (low and high voices, slow and fast talkers)."""
        high = rng.random() < 0.5
        return cls(
            f0=float(rng.uniform(170, 240) if high else rng.uniform(85, 140)),
            f0_range=float(rng.uniform(2.5, 6.0)),
            tract_scale=float(rng.uniform(1.08, 1.22) if high else rng.uniform(0.88, 1.02)),
            rate=float(rng.uniform(0.8, 1.25)),
            gain_db=float(rng.uniform(-4.0, 4.0)),
            breathiness=float(rng.uniform(0.02, 0.1)),
            pause=float(rng.uniform(0.25, 0.5)),
        )


@dataclass
class Timeline:
    """Phoneme segments of an utterance: ``ids [P]`` (index into :data:`PHONEMES`),
    ``start``/``end`` ``[P]`` in seconds (contiguous, starting at 0), ``stress [P]`` (the
    phoneme belongs to a stressed syllable), ``gain [P]`` in dB (phrase/syllable loudness)."""

    ids: np.ndarray
    start: np.ndarray
    end: np.ndarray
    stress: np.ndarray
    gain: np.ndarray

    @property
    def duration(self) -> float:
        return float(self.end[-1]) if len(self.end) else 0.0

    def stress_onsets(self) -> np.ndarray:
        """Times (s) of the vowel onsets of stressed syllables (what nods and brows follow)."""
        vowel = np.isin(self.ids, VOWELS)
        return self.start[vowel & self.stress]

    def segment_at(self, times: np.ndarray) -> np.ndarray:
        """Index of the segment covering each time in ``times``."""
        return np.clip(np.searchsorted(self.end, times, side="right"), 0, len(self.ids) - 1)

    @classmethod
    def from_symbols(cls, symbols: list[str], durations: list[float], stress: list[bool] | None = None) -> "Timeline":
        """A hand-made timeline, e.g. ``from_symbols(["sil", "m", "a", "sil"], [0.3, 0.1, 0.2, 0.3])``."""
        if len(symbols) != len(durations):
            raise ValueError("symbols and durations must have the same length")
        unknown = [s for s in symbols if s not in INDEX]
        if unknown:
            raise ValueError(f"unknown phoneme symbols {unknown}; known: {SYMBOLS}")
        end = np.cumsum(np.asarray(durations, dtype=np.float64))
        return cls(
            ids=np.array([INDEX[s] for s in symbols], dtype=np.int64),
            start=np.concatenate([[0.0], end[:-1]]),
            end=end,
            stress=np.zeros(len(symbols), bool) if stress is None else np.asarray(stress, bool),
            gain=np.zeros(len(symbols)),
        )


def random_timeline(duration: float, voice: Voice, rng: np.random.Generator) -> Timeline:
    """Random speech filling ``duration`` seconds: a short lead-in silence, then phrases of 3-9
    syllables (V / CV / CVC, about a third stressed) separated by pauses."""
    ids: list[int] = [SILENCE]
    durs: list[float] = [rng.uniform(0.1, 0.4)]
    stress: list[bool] = [False]
    gain: list[float] = [0.0]
    total = durs[0]
    jitter = lambda: rng.uniform(0.75, 1.3)  # noqa: E731 - per-phoneme duration jitter
    while total < duration:
        phrase_gain = rng.normal(0.0, 3.0)
        n_syll = int(rng.integers(3, 10))
        stressed = rng.random(n_syll) < 0.35
        stressed[rng.integers(n_syll)] = True
        for k in range(n_syll):
            shape = rng.choice(["V", "CV", "CV", "CV", "CVC", "CVC"])
            parts = ([int(rng.choice(CONSONANTS))] if shape.startswith("C") else []) + [int(rng.choice(VOWELS))]
            if shape == "CVC":
                parts.append(int(rng.choice(CONSONANTS)))
            syl_gain = phrase_gain + rng.normal(0.0, 2.0) + (3.0 if stressed[k] else 0.0) - 4.0 * k / n_syll
            for ph in parts:
                d = PHONEMES[ph].duration * jitter() / voice.rate
                if stressed[k] and ph in VOWELS:
                    d *= 1.4
                ids.append(ph)
                durs.append(d)
                stress.append(bool(stressed[k]))
                gain.append(syl_gain)
                total += d
        pause = rng.gamma(4.0, voice.pause / 4.0) + 0.08
        ids.append(SILENCE)
        durs.append(pause)
        stress.append(False)
        gain.append(0.0)
        total += pause
    end = np.cumsum(durs)
    return Timeline(np.array(ids, np.int64), np.concatenate([[0.0], end[:-1]]), end, np.array(stress), np.array(gain))


def _hann_smooth(x: np.ndarray, seconds: float, rate: float) -> np.ndarray:
    """Smooth ``x [T, ...]`` along time with a normalised Hann kernel ``seconds`` wide."""
    n = max(int(round(seconds * rate)) | 1, 3)
    kernel = np.hanning(n + 2)[1:-1]
    return convolve1d(x, kernel / kernel.sum(), axis=0, mode="nearest")


def _glottal_source(f0_per_sample: np.ndarray, open_quotient: float = 0.6) -> np.ndarray:
    """Differentiated Rosenberg glottal pulses for a per-sample F0 track (Hz)."""
    phase = np.mod(np.cumsum(f0_per_sample / SAMPLE_RATE), 1.0)
    rise, fall = 0.66 * open_quotient, 0.34 * open_quotient
    flow = np.where(
        phase < rise,
        0.5 * (1.0 - np.cos(np.pi * phase / rise)),
        np.where(phase < rise + fall, np.cos(0.5 * np.pi * (phase - rise) / fall), 0.0),
    )
    return np.diff(flow, prepend=0.0) * (SAMPLE_RATE / f0_per_sample.clip(50.0)) * 0.05


def _formant_envelope(formants: np.ndarray, freqs: np.ndarray, tract_scale: float) -> np.ndarray:
    """Cascade of 2-pole resonators: formants ``[H, 4]`` (Hz) -> magnitude ``[H, bins]``."""
    f = freqs[None, :, None]  # [1, bins, 1]
    fk = formants[:, None, :]  # [H, 1, 4]
    bk = (_BANDWIDTHS * tract_scale).astype(np.float32)
    mag = fk**2 / np.sqrt((fk**2 - f**2) ** 2 + (f * bk) ** 2)  # [H, bins, 4], 1 at DC
    return mag.prod(-1)


def synthesize(timeline: Timeline, voice: Voice, rng: np.random.Generator, num_samples: int | None = None) -> np.ndarray:
    """Source-filter synthesis of ``timeline`` with ``voice`` -> float32 audio ``[S]`` at 16 kHz."""
    n = num_samples if num_samples is not None else int(round(timeline.duration * SAMPLE_RATE))
    hop_rate = SAMPLE_RATE / _HOP
    n_hops = n // _HOP + 2
    t_hop = np.arange(n_hops) / hop_rate  # [H]
    seg = timeline.segment_at(t_hop)  # [H]
    ph = timeline.ids[seg]
    pos = (t_hop - timeline.start[seg]) / np.maximum(timeline.end[seg] - timeline.start[seg], 1e-3)

    # Formant tracks: phoneme targets (consonants as loci) blended smoothly over ~40 ms.
    formants = _hann_smooth(_TABLE_FORMANTS[ph] * voice.tract_scale, 0.04, hop_rate)  # [H, 4]

    # Voicing, aspiration and frication amplitudes per hop.
    plosive = _IS_PLOSIVE[ph]
    closure = plosive & (pos < 0.55)
    burst = plosive & (pos >= 0.55) & (pos < 0.75)
    aspiration = plosive & (pos >= 0.75) & (_TABLE_VOICE[ph] == 0.0)
    voice_amp = np.where(plosive, np.where(closure, _TABLE_VOICE[ph], 0.0), _TABLE_VOICE[ph])
    voice_amp = np.where(plosive & ~closure & (_TABLE_VOICE[ph] > 0), 0.8, voice_amp)  # voiced release
    fric_amp = np.where(plosive, np.where(burst, _TABLE_NOISE[ph], 0.0), _TABLE_NOISE[ph])
    asp_amp = voice.breathiness * voice_amp + np.where(aspiration, 0.25, 0.0)
    level = 10.0 ** ((timeline.gain[seg] + voice.gain_db) / 20.0)
    voice_amp = _hann_smooth(voice_amp * level, 0.012, hop_rate)
    asp_amp = _hann_smooth(asp_amp * level, 0.012, hop_rate)
    fric_amp = _hann_smooth(fric_amp * level, 0.008, hop_rate)

    # F0: declining phrase intonation, accents on stressed syllables, slow jitter.
    semis = np.zeros(n_hops)
    phrase_start = 0.0
    for s, e in zip(timeline.start[timeline.ids == SILENCE], timeline.end[timeline.ids == SILENCE]):
        within = (t_hop >= phrase_start) & (t_hop < s)
        if within.any():
            rel = (t_hop[within] - phrase_start) / max(s - phrase_start, 1e-3)
            semis[within] = voice.f0_range * (0.5 - rel)
        phrase_start = e
    semis += voice.f0_range * _hann_smooth((timeline.stress[seg] & np.isin(ph, VOWELS)).astype(float), 0.12, hop_rate)
    semis += _hann_smooth(rng.normal(0.0, 1.0, n_hops), 0.08, hop_rate) * 0.6
    f0_hop = voice.f0 * 2.0 ** (semis / 12.0)
    f0 = np.interp(np.arange(n) / SAMPLE_RATE, t_hop, f0_hop)

    # Sources and the time-varying filter in the STFT domain.
    freqs = np.fft.rfftfreq(_NFFT, 1.0 / SAMPLE_RATE).astype(np.float32)  # [bins]
    env = _formant_envelope(formants.astype(np.float32), freqs, voice.tract_scale)  # [H, bins]
    nasal = _IS_NASAL[ph][:, None]
    fz = np.maximum(_TABLE_ANTIFORMANT[ph][:, None] * voice.tract_scale, 1.0)  # [H, 1]
    zero = np.sqrt((fz**2 - freqs**2) ** 2 + (freqs * 200.0) ** 2) / fz**2  # anti-resonance
    env = np.where(nasal, env * np.minimum(zero, 1.0) / (1.0 + (freqs / 600.0) ** 2) ** 0.5, env)  # murmur
    # Equalise the intrinsic loudness of vowels partly (loudness must not identify the vowel).
    tilt = 1.0 / (1.0 + (freqs / 300.0) ** 2)
    env_energy = np.sqrt((env**2 * tilt).sum(-1, keepdims=True) / tilt.sum())
    env = env / env_energy**0.7 * 0.5
    fric_env = np.exp(-0.5 * ((freqs[None] - _TABLE_NOISE_HZ[ph][:, None]) / _TABLE_NOISE_BW[ph][:, None]) ** 2)

    kwargs = dict(fs=SAMPLE_RATE, nperseg=_NFFT, noverlap=_NFFT - _HOP, boundary="zeros", padded=True)
    voiced = _glottal_source(f0).astype(np.float32)
    noise = rng.normal(0.0, 0.5, n).astype(np.float32)
    _, _, v_spec = signal.stft(voiced, **kwargs)  # [bins, H']
    _, _, n_spec = signal.stft(noise, **kwargs)
    h = v_spec.shape[1]
    centre = np.clip(np.arange(h), 0, n_hops - 1)  # STFT frame k is centred on sample k * HOP
    spec = (
        v_spec * (env[centre] * voice_amp[centre, None]).T
        + n_spec * (env[centre] * asp_amp[centre, None] + fric_env[centre] * 0.02 * fric_amp[centre, None]).T
    )
    _, audio = signal.istft(spec, fs=SAMPLE_RATE, nperseg=_NFFT, noverlap=_NFFT - _HOP, boundary=True)
    audio = np.pad(audio, (0, max(0, n - len(audio))))[:n]
    audio = audio * 0.5 + rng.normal(0.0, 2e-4, n)  # level (peaks below -3 dBFS), recording floor
    return np.clip(audio, -0.99, 0.99).astype(np.float32)


def make_speech(duration: float, voice: Voice, rng: np.random.Generator) -> tuple[np.ndarray, Timeline]:
    """Random speech of exactly ``duration`` seconds -> (audio float32 ``[S]``, its timeline)."""
    timeline = random_timeline(duration, voice, rng)
    audio = synthesize(timeline, voice, rng, num_samples=int(round(duration * SAMPLE_RATE)))
    return audio, timeline
