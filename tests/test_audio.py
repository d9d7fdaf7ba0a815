"""Tests for talkinghead.audio: loading, MFCC (parity with python_speech_features), windows."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from talkinghead.audio import (
    check_not_silent,
    frame_windows,
    iter_frame_windows,
    load_audio,
    mfcc,
    num_mfcc_rows,
    num_video_frames,
    save_wav,
)
from talkinghead.audio.io import ffmpeg_exe
from talkinghead.errors import InputError, TalkingHeadError

SR = 16000


# --------------------------------------------------------------------------------------------
# Reference: python_speech_features.mfcc, re-implemented independently (loops, float64), as its
# source does it: preemphasis, framesig (rectangular window), powspec, get_filterbanks, log,
# dct type 2 ortho, lifter. The package itself is not installed here.
# --------------------------------------------------------------------------------------------
def _psf_mfcc(signal, samplerate=16000, winlen=0.025, winstep=0.01, numcep=13, nfilt=26, nfft=512,
              preemph=0.97, ceplifter=22):
    import scipy.fftpack

    signal = np.asarray(signal, dtype=np.float64)
    signal = np.append(signal[0], signal[1:] - preemph * signal[:-1])
    frame_len, frame_step = int(winlen * samplerate + 0.5), int(winstep * samplerate + 0.5)
    if len(signal) <= frame_len:
        numframes = 1
    else:
        numframes = 1 + int(math.ceil((1.0 * len(signal) - frame_len) / frame_step))
    padded = np.concatenate([signal, np.zeros((numframes - 1) * frame_step + frame_len - len(signal))])
    frames = np.stack([padded[i * frame_step : i * frame_step + frame_len] for i in range(numframes)])
    pspec = 1.0 / nfft * np.square(np.absolute(np.fft.rfft(frames, nfft)))

    def hz2mel(hz):
        return 2595 * np.log10(1 + hz / 700.0)

    def mel2hz(mel):
        return 700 * (10 ** (mel / 2595.0) - 1)

    melpoints = np.linspace(hz2mel(0), hz2mel(samplerate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * mel2hz(melpoints) / samplerate)
    fbank = np.zeros([nfilt, nfft // 2 + 1])
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fbank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fbank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])

    feat = pspec @ fbank.T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    feat = scipy.fftpack.dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    feat = feat * (1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter))
    return feat  # c0 would be replaced by log energy (appendEnergy); callers drop it


def _speechlike(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Gated chirp with harmonics and a little noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 60 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    gate = (np.sin(2 * np.pi * 2.5 * t) > -0.3).astype(np.float64)
    x = 0.25 * voiced * gate + 0.01 * rng.standard_normal(t.size)
    return (x / np.abs(x).max() * 0.8).astype(np.float32)


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


# --------------------------------------------------------------------------------------------
# MFCC
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples", [250, 400, 401, 16000, 16000 * 2 + 333])
def test_mfcc_matches_python_speech_features(num_samples):
    audio = _speechlike(num_samples / SR + 0.01)[:num_samples]
    ours = mfcc(audio)
    ref = _psf_mfcc(audio)[:, 1:]
    assert ours.shape == ref.shape == (num_mfcc_rows(num_samples), 12)
    assert ours.dtype == np.float32
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * max(scale, 1.0))


def test_mfcc_row_count_follows_psf_framing():
    assert num_mfcc_rows(400) == 1 and num_mfcc_rows(401) == 2 and num_mfcc_rows(560) == 2
    assert num_mfcc_rows(561) == 3 and num_mfcc_rows(0) == 1
    assert num_mfcc_rows(16000) == 1 + math.ceil((16000 - 400) / 160)


def test_mfcc_rejects_multichannel_array():
    with pytest.raises(InputError, match="1-D mono"):
        mfcc(np.zeros((1000, 2), np.float32))


# --------------------------------------------------------------------------------------------
# Frame windows
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_frames", [1, 2, 7, 25, 29, 101])
@pytest.mark.parametrize("extra_samples", [0, 1, 319, 321, 639])
def test_n_video_frames_give_n_windows(num_frames, extra_samples):
    # extra < 320 rounds down to num_frames; 320..639 rounds up to num_frames + 1.
    num_samples = num_frames * 640 + extra_samples
    expected = num_frames + (1 if extra_samples >= 320 else 0)
    audio = _speechlike(num_samples / SR + 0.01, seed=num_frames)[:num_samples]
    windows = frame_windows(audio)
    assert num_video_frames(num_samples) == expected
    assert windows.shape == (expected, 28, 12)
    assert windows.dtype == np.float32 and np.isfinite(windows).all()
    assert frame_windows(audio, num_frames=num_frames + 3).shape == (num_frames + 3, 28, 12)


def test_windows_are_rows_of_padded_mfcc():
    audio = _speechlike(1.5)
    padded_mfcc = mfcc(np.concatenate([np.zeros(1920, np.float32), audio, np.zeros(1920, np.float32)]))
    windows = frame_windows(audio)
    for t in (0, 5, len(windows) // 2):
        np.testing.assert_array_equal(windows[t], padded_mfcc[4 * t : 4 * t + 28])
    # The last windows run past the MFCC and repeat its last row.
    last = windows[-1]
    available = len(padded_mfcc) - 4 * (len(windows) - 1)
    assert available < 28
    np.testing.assert_array_equal(last[:available], padded_mfcc[-available:])
    np.testing.assert_array_equal(last[available:], np.repeat(padded_mfcc[-1:], 28 - available, 0))


def test_click_at_frame_time_shows_at_row_12():
    t, seconds = 20, 2.0
    rng = np.random.default_rng(1)
    background = (0.01 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    clicked = background.copy()
    clicked[t * 640] = 0.9  # frame t's time
    change = np.abs(frame_windows(clicked) - frame_windows(background)).max(axis=2)  # [N, 28]
    # Row 12 of window t starts at the click; the 25 ms rows 10 and 11 also reach it.
    assert change[t, 12] > 1.0
    changed_rows = set(np.flatnonzero(change[t] > 1e-3))
    assert changed_rows == {10, 11, 12}
    # Two frames (8 rows) away it sits at rows 2..4 / 18..20, not at row 12.
    assert change[t - 2, 12] < 1e-3 and change[t + 2, 12] < 1e-3
    assert change[t + 2, 4] > 1.0 and change[t - 2, 20] > 1.0


def test_onset_at_frame_time_fills_rows_from_12():
    t = 20
    audio = np.zeros(2 * SR, np.float32)
    n = np.arange(audio.size - t * 640)
    audio[t * 640 :] = 0.5 * np.sin(2 * np.pi * 500 * n / SR)  # tone starts at frame t's time
    window = frame_windows(audio)[t]
    distance_to_steady = np.abs(window - window[20]).max(axis=1)  # [28]
    assert distance_to_steady[13:].max() < 1e-3  # rows starting after the onset: steady tone
    assert np.all(np.diff(distance_to_steady[9:14]) < 0)  # approaches steady state through row 12
    np.testing.assert_allclose(window[:10], 0.0, atol=1e-6)  # silence before (log eps floor, c0 dropped)


@pytest.mark.parametrize("chunk_frames", [1, 7, 50, 1000])
def test_chunked_windows_equal_full(chunk_frames):
    audio = _speechlike(3.37, seed=3)
    full = frame_windows(audio)
    blocks = list(iter_frame_windows(audio, chunk_frames=chunk_frames))
    assert all(len(b) <= chunk_frames for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), full)
    longer = np.concatenate(list(iter_frame_windows(audio, chunk_frames=chunk_frames, num_frames=len(full) + 9)))
    np.testing.assert_array_equal(longer, frame_windows(audio, num_frames=len(full) + 9))


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------
def _harmonic_voice(sample_rate: int, seconds: float = 2.0) -> np.ndarray:
    """Analytic band-limited test signal (gliding harmonics under an envelope) at any rate."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    # f0(t) = 140 + 60 sin(2 pi 1.3 t), integrated analytically.
    phase = 2 * np.pi * (140 * t - 60 / (2 * np.pi * 1.3) * (np.cos(2 * np.pi * 1.3 * t) - 1))
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))  # harmonics below 2.2 kHz
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t)
    return (0.3 * voiced * envelope).astype(np.float32)


def test_stereo_44k_matches_16k_mono(tmp_path):
    mono16 = _harmonic_voice(SR)
    at44k = _harmonic_voice(44100)
    left, right = 1.4 * at44k, 0.6 * at44k  # the average of the channels is `at44k`
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    soundfile.write(tmp_path / "mono.wav", mono16, SR, subtype="FLOAT")

    loaded = load_audio(tmp_path / "stereo.wav")
    np.testing.assert_array_equal(load_audio(tmp_path / "mono.wav"), mono16)
    assert loaded.shape == mono16.shape
    # Tolerance: away from the ends (soxr's edge transients, ~5 ms) the waveform matches to 1e-5,
    # and windows 4..N-5 (whose rows do not touch the first/last 25 ms) to 0.01 on cepstra
    # spanning about +-70; the outer windows to 5.
    assert np.abs(loaded[200:-200] - mono16[200:-200]).max() < 1e-5
    ours, reference = frame_windows(loaded), frame_windows(mono16)
    assert ours.shape == reference.shape == (50, 28, 12)
    assert np.abs(ours[4:-4] - reference[4:-4]).max() < 0.01
    assert np.abs(ours - reference).max() < 5.0
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.9999


@pytest.mark.parametrize("ext,codec", [(".mp3", "libmp3lame"), (".m4a", "aac")])
def test_compressed_round_trip_through_ffmpeg(tmp_path, ext, codec):
    seconds, freq = 1.5, 440.0
    tone = (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * 44100)) / 44100)).astype(np.float32)
    soundfile.write(tmp_path / "tone.wav", np.stack([tone, tone], 1), 44100, subtype="PCM_16")
    _ffmpeg("-i", tmp_path / "tone.wav", "-c:a", codec, "-b:a", "128k", tmp_path / f"tone{ext}")

    audio = load_audio(tmp_path / f"tone{ext}")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SR - seconds) < 0.06  # encoder padding is at most a few frames
    middle = audio[len(audio) // 4 : 3 * len(audio) // 4]
    spectrum = np.abs(np.fft.rfft(middle))
    assert abs(np.argmax(spectrum) * SR / len(middle) - freq) < 3.0
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.03


def test_save_wav_round_trip_and_atomic(tmp_path):
    audio = _speechlike(0.5)
    out = save_wav(tmp_path / "x.wav", audio, SR)
    back = load_audio(out)
    assert np.abs(back - audio).max() < 1.0 / 32768 + 1e-6  # PCM_16 quantisation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]  # no temp file left
    with pytest.raises(InputError, match="does not exist"):
        save_wav(tmp_path / "missing_dir" / "x.wav", audio, SR)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in _one_line(err) and "not found" in str(err.value)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as err:
        load_audio(path)
    assert "corrupt.wav" in _one_line(err)


def test_empty_and_too_short_wav(tmp_path):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(InputError) as err:
        load_audio(tmp_path / "empty.wav")
    assert "empty.wav" in _one_line(err)
    soundfile.write(tmp_path / "short.wav", np.full(100, 0.5, np.float32), SR)  # 6 ms < one frame
    with pytest.raises(InputError, match="too short"):
        load_audio(tmp_path / "short.wav")


def test_video_without_audio_track(tmp_path):
    path = tmp_path / "silent_video.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=red:s=32x32:r=25:d=0.4", "-c:v", "libx264", path)
    with pytest.raises(InputError, match="no audio track"):
        load_audio(path)


def test_silent_audio(tmp_path):
    soundfile.write(tmp_path / "silence.wav", np.zeros(SR, np.float32), SR)
    audio = load_audio(tmp_path / "silence.wav")  # loading itself is fine
    with pytest.raises(InputError) as err:
        check_not_silent(audio, tmp_path / "silence.wav")
    assert "is silent (peak -inf dBFS)" in _one_line(err) and "silence.wav" in str(err.value)
    with pytest.raises(TalkingHeadError, match="peak -80.0 dBFS"):
        check_not_silent(np.full(100, 1e-4, np.float32), "quiet.wav")
    check_not_silent(_speechlike(0.2), "speech.wav")  # no error


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio_has_its_own_message(bad):
    audio = _speechlike(0.2)
    audio[10] = bad
    with pytest.raises(InputError) as err:
        check_not_silent(audio, "broken.wav")
    message = _one_line(err)
    assert "broken.wav has 1 NaN or infinite samples of" in message and "silent" not in message


def test_mel_scale_is_librosas_htk_scale_without_librosa():
    """hz_to_mel/mel_to_hz are librosa's htk formulas to the bit (the filterbank's floored bin
    edges depend on it), and MFCCs do not import librosa (the GPU image lacks it)."""
    import subprocess
    import sys

    from talkinghead.audio.features import hz_to_mel, mel_to_hz

    librosa = pytest.importorskip("librosa")
    hz = np.array([0.0, 133.3, 1000.0, 4000.0, 8000.0, 22050.0])
    assert np.array_equal(hz_to_mel(hz), librosa.hz_to_mel(hz, htk=True))
    mel = np.linspace(0.0, hz_to_mel(8000.0), 28)
    assert np.array_equal(mel_to_hz(mel), librosa.mel_to_hz(mel, htk=True))
    code = ("import sys, numpy as np; sys.modules['librosa'] = None\n"  # any import of librosa now fails
            "from talkinghead.audio import frame_windows\n"
            "print(frame_windows(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "(25, 28, 12)"


def test_resampling_without_librosa_matches_soxr(monkeypatch):
    """Where librosa is missing, resampling falls back to scipy's polyphase filter: same length
    as soxr's and the same signal away from the edges."""
    from talkinghead.audio.io import resample

    pytest.importorskip("librosa")
    t = np.arange(44100 * 2) / 44100
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1900 * t)).astype(np.float32)
    soxr = resample(audio, 44100, 16000)
    monkeypatch.setitem(sys.modules, "librosa", None)  # import librosa now fails
    poly = resample(audio, 44100, 16000)
    assert poly.dtype == np.float32 and poly.shape == soxr.shape == (32000,)
    assert np.abs(poly[200:-200] - soxr[200:-200]).max() < 2e-3


def _voice(seconds: float, pitch: float, formant: float, seed: int) -> np.ndarray:
    """A crude voiced sound: a pitch-pulse train through one resonance, with syllable-rate
    loudness and pauses (``formant`` Hz sets the spectral envelope, i.e. the "voice")."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    pulses = (np.diff(np.floor(t * pitch * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))), prepend=0) > 0).astype(np.float64)
    r, theta = 0.97, 2 * np.pi * formant / 16000
    voiced = lfilter([1.0], [1.0, -2 * r * np.cos(theta), r * r], pulses)
    envelope = np.clip(np.sin(2 * np.pi * 3 * t + rng.uniform(0, 6)), 0, None)  # syllables and pauses
    out = voiced * envelope + 0.002 * rng.standard_normal(n)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def test_voice_distance_tells_the_same_voice_from_another():
    from talkinghead.audio.features import voice_distance, voice_statistics

    person = _voice(6.0, 200.0, 700.0, seed=0)
    same_later = _voice(3.0, 205.0, 700.0, seed=1)
    other = _voice(3.0, 120.0, 1500.0, seed=2)
    stats = voice_statistics(person)
    assert stats[0].shape == stats[1].shape == (12,) and stats[0].dtype == np.float32
    assert voice_distance(stats, stats) == 0.0
    assert voice_distance(stats, voice_statistics(0.1 * person)) < 1e-3  # a gain change is not another voice
    own, foreign = voice_distance(stats, voice_statistics(same_later)), voice_distance(stats, voice_statistics(other))
    assert own < 0.35 < 0.5 < foreign, (own, foreign)  # the fine-tuning default voice_gate [0.35, 0.5] separates them


def test_window_ridge_round_trip_with_and_without_its_voice(tmp_path):
    from talkinghead.audio.features import voice_statistics
    from talkinghead.models.linear import WindowRidge, fit_window_ridge

    rng = np.random.default_rng(0)
    windows, targets = rng.standard_normal((40, 28, 12)).astype(np.float32), rng.standard_normal((40, 3))
    ridge = fit_window_ridge(windows, targets, 10.0)
    ridge.blend = 0.3
    old = WindowRidge.load(ridge.save(tmp_path / "old.npz"))  # saved without a voice: always applies
    assert old.voice_gate is None and old.voice_weight(_voice(1.0, 200.0, 700.0, 0)) == (1.0, None)
    assert old.cmvn is None  # files before session 24: the network's windows
    np.testing.assert_allclose(old.predict_windows(windows), ridge.predict_windows(windows))
    ridge.voice_mean, ridge.voice_std = voice = voice_statistics(_voice(4.0, 200.0, 700.0, 0))
    ridge.voice_gate, ridge.cmvn = (0.35, 0.5), False
    loaded = WindowRidge.load(ridge.save(tmp_path / "voice.npz"))
    assert loaded.voice_gate == (0.35, 0.5) and loaded.blend == 0.3 and loaded.lam == 10.0 and loaded.cmvn is False
    np.testing.assert_array_equal(loaded.voice_mean, voice[0])
    weight, distance = loaded.voice_weight(_voice(2.0, 205.0, 700.0, 1))
    assert weight == 1.0 and distance < 0.35
    weight, distance = loaded.voice_weight(_voice(2.0, 120.0, 1500.0, 2))
    assert weight == 0.0 and distance > 0.5
