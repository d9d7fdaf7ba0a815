"""Channel/room augmentation and per-utterance CMVN (talkinghead.audio.augment), and their use
in the Stage-1 dataset: shapes, determinism per seed, what each transform does to the signal,
CMVN's invariance to gain, time-warped targets of speed-perturbed copies."""

from __future__ import annotations

import numpy as np
import pytest

from talkinghead.audio.augment import (
    AugmentConfig,
    add_noise,
    apply_gain,
    augment_audio,
    average_over_rates,
    band_limit,
    mu_law,
    random_eq,
    reverberate,
    speed_perturb,
)
from talkinghead.audio.features import frame_windows, iter_frame_windows, mfcc, utterance_cmvn
from talkinghead.errors import ConfigError

SR = 16000


def speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Voiced bursts (harmonics of 150 Hz, syllable envelope) with silences."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
    return (0.2 * env * tone + 0.001 * rng.standard_normal(len(t))).astype(np.float32)


def band_energy(audio: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    f = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(spectrum[(f >= lo) & (f < hi)].sum())


def test_transforms_keep_shape_and_do_what_they_say():
    audio = speechlike()
    rng = np.random.default_rng(0)
    for out in (add_noise(audio, 10.0, rng), add_noise(audio, 10.0, rng, "pink"), reverberate(audio, 0.5, rng),
                random_eq(audio, rng), band_limit(audio), mu_law(audio), apply_gain(audio, -6.0)):
        assert out.shape == audio.shape and out.dtype == np.float32 and np.isfinite(out).all()
    noisy = add_noise(audio, 10.0, np.random.default_rng(1))
    snr = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean((noisy - audio).astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.1
    np.testing.assert_allclose(apply_gain(audio, -6.0), audio * 10 ** (-6 / 20), rtol=1e-5)
    limited = band_limit(audio, 300.0, 3400.0)
    assert band_energy(limited, 4500, 8000) < 1e-3 * band_energy(audio, 4500, 8000)
    assert band_energy(limited, 800, 2000) > 0.8 * band_energy(audio, 800, 2000)
    # Reverberation fills the silences between syllables (energy where the dry signal has none).
    wet = reverberate(audio, 0.6, np.random.default_rng(2))
    gap = slice(int(0.17 * SR), int(0.32 * SR))  # env = 0 between the bursts at 3 Hz
    assert np.mean(wet[gap] ** 2) > 100 * np.mean(audio[gap] ** 2)
    assert np.max(np.abs(mu_law(audio) - audio)) < 0.02  # 8-bit companding: small error
    fast = speed_perturb(audio, 1.1)
    assert len(fast) == round(len(audio) / 1.1)
    # Speed 1.1: the 150 Hz fundamental moves to 165 Hz.
    f = np.fft.rfftfreq(len(fast), 1 / SR)
    peak = f[np.argmax(np.abs(np.fft.rfft(fast)) * (f < 200))]
    assert abs(peak - 165.0) < 2.0


def test_augment_is_deterministic_per_seed():
    audio = speechlike()
    cfg = {"copies": 1, "p_speed": 1.0, "p_reverb": 1.0, "p_noise": 1.0}
    a, fa = augment_audio(audio, np.random.default_rng([7, 0, 1]), cfg)
    b, fb = augment_audio(audio, np.random.default_rng([7, 0, 1]), cfg)
    c, fc = augment_audio(audio, np.random.default_rng([8, 0, 1]), cfg)
    np.testing.assert_array_equal(a, b)
    assert fa == fb and 0.9 <= fa <= 1.1 and len(a) == round(len(audio) / fa)
    assert fa != fc or not np.array_equal(a[: len(c)], c[: len(a)])
    assert np.abs(a).max() <= 1.0
    with pytest.raises(ConfigError, match="augment.bogus"):
        AugmentConfig.coerce({"bogus": 1})


def test_cmvn_standardises_and_ignores_gain():
    audio = speechlike(3.0)
    windows = frame_windows(audio, cmvn=True)  # [N, 28, 12]
    assert windows.shape == frame_windows(audio).shape and windows.dtype == np.float32
    mean, std = utterance_cmvn(audio)
    assert mean.shape == (12,) and std.shape == (12,)
    plain = frame_windows(audio)
    np.testing.assert_allclose(windows, (plain - mean) / std, rtol=1e-5, atol=1e-5)
    # The utterance's MFCC rows (not the padding) come out with zero mean and unit deviation.
    rows = (mfcc(audio) - mean) / std  # [T, 12]
    np.testing.assert_allclose(rows.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(rows.std(0), 1.0, atol=1e-4)
    # A gain change leaves the CMVN windows unchanged (c0, the only gain-dependent cepstrum, is dropped).
    np.testing.assert_allclose(frame_windows(audio * np.float32(0.1), cmvn=True), windows, atol=1e-3)
    np.testing.assert_allclose(frame_windows(apply_gain(audio, 9.0), cmvn=True), windows, atol=1e-3)
    # A fixed EQ shifts the plain cepstra; CMVN removes most of that shift.
    coloured = random_eq(audio, np.random.default_rng(4), max_db=10.0)
    shift_plain = np.abs(frame_windows(coloured) - plain)[5:-8].mean()
    shift_cmvn = np.abs(frame_windows(coloured, cmvn=True) * std - windows * std)[5:-8].mean()
    assert shift_cmvn < 0.6 * shift_plain
    # Chunked windows use the whole utterance's statistics: blocks concatenate to one pass.
    blocks = list(iter_frame_windows(audio, chunk_frames=17, cmvn=True))
    np.testing.assert_array_equal(np.concatenate(blocks), windows)


def test_dataset_adds_seeded_augmented_copies_with_warped_targets(tmp_path):
    from talkinghead.data.clip import read_clip
    from talkinghead.data.stage1_dataset import Stage1WindowDataset, augmented_clip_frames, load_clip_frames
    from tests.test_stage1 import make_clip

    clip = read_clip(make_clip(tmp_path, "p", 120, seed=1))
    plain = Stage1WindowDataset([clip], window=16, stride=4)
    aug = dict(copies=2, p_speed=1.0, speed=(1.1, 1.1))
    data = Stage1WindowDataset([clip], window=16, stride=4, augment=aug, seed=3, cmvn=True)
    again = Stage1WindowDataset([clip], window=16, stride=4, augment=aug, seed=3, cmvn=True)
    assert len(data) > 2 * len(plain) and data.clip_names == ["p"] and "2 augmented copies" in repr(data)
    assert data.windows.shape[1:] == (28, 12) and data.target.shape[1:] == (70,)
    np.testing.assert_array_equal(data.windows.numpy(), again.windows.numpy())
    # Speed 1.1: copy frame t' shows the clip's targets at frame 1.1 t' (the jaw follows the audio).
    copy = augmented_clip_frames(clip, np.random.default_rng([3, 0, 1]), AugmentConfig.coerce(aug))
    assert len(copy.target) == round(120 / 1.1)
    original = load_clip_frames(clip).target
    np.testing.assert_allclose(copy.target[10], original[11], atol=1e-6)
    np.testing.assert_allclose(copy.target[5], 0.5 * original[5] + 0.5 * original[6], atol=1e-6)


def test_average_over_rates_reads_each_copy_at_the_same_moment():
    audio = speechlike(2.0)  # 50 frames at 25 fps
    calls = []

    def elapsed(played: np.ndarray, frames: int) -> np.ndarray:
        """[frames, 2]: for each frame of the played copy, the original frame it plays, and 1."""
        calls.append((len(played), frames))
        rate = len(audio) / len(played)
        return np.stack([np.arange(frames) * rate, np.ones(frames)], axis=1)

    out = average_over_rates(elapsed, audio, 50, (0.9, 1.0, 1.1))
    assert out.shape == (50, 2) and out.dtype == np.float32
    assert len(calls) == 3 and (len(audio), 50) in calls  # rate 1: the audio itself
    assert {n for n, _ in calls} == {len(audio), len(speed_perturb(audio, 0.9)), len(speed_perturb(audio, 1.1))}
    np.testing.assert_allclose(out[:, 0], np.arange(50), atol=0.02)  # every copy read at the same moment
    np.testing.assert_allclose(out[:, 1], 1.0)
    plain = average_over_rates(elapsed, audio, 50, (1.0,))
    np.testing.assert_array_equal(plain, elapsed(audio, 50).astype(np.float32))


def test_person_ridge_on_audio_matches_its_windows_in_any_blocks():
    from talkinghead.models.linear import fit_window_ridge, predict_ridge

    audio = speechlike(3.0, seed=2)
    windows = frame_windows(audio, 75)  # plain MFCC, as the person ridge reads them
    rng = np.random.default_rng(0)
    ridge = fit_window_ridge(windows, windows.reshape(75, -1) @ rng.normal(size=(336, 4)), 10.0)
    ridge.cmvn = False
    for chunk in (7, 75, 500):
        np.testing.assert_allclose(predict_ridge(ridge, audio, 75, chunk_frames=chunk), ridge.predict_windows(windows),
                                   atol=1e-4)
    ridge.cmvn = None  # a file from before session 24: the network's windows
    np.testing.assert_allclose(predict_ridge(ridge, audio, 75, default_cmvn=True),
                               ridge.predict_windows(frame_windows(audio, 75, cmvn=True)), atol=1e-4)
