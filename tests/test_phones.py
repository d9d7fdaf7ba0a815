"""Phone posteriors from pocketsphinx's acoustic model (talkinghead.audio.phones), the windows that
carry them (features=phones / mfcc+phones) and the Stage-1 network's phone encoder."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from talkinghead.audio import phones
from talkinghead.audio.features import AUDIO_FEATURES, frame_windows, iter_frame_windows, window_columns
from talkinghead.audio.phones import NUM_PHONES, PHONES, phone_log_posteriors, read_s3_gaussians
from talkinghead.errors import ConfigError, InputError
from talkinghead.models.audio2coeff import NormalizedExpressionPoseLSTM

SR = 16000


def _speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Voiced vowel-like stretches (a 120 Hz pulse train through two resonances) between noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pulses = (np.sin(2 * np.pi * 120 * t) > 0.99).astype(np.float64)
    from scipy.signal import lfilter

    voiced = pulses
    for f in (700, 1200):
        r = 0.97
        voiced = lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * f / SR), r * r], voiced)
    noise = rng.standard_normal(len(t))
    gate = (np.sin(2 * np.pi * 2.0 * t) > 0).astype(np.float64)
    audio = gate * voiced / np.abs(voiced).max() + (1 - gate) * 0.2 * noise
    return (0.3 * audio).astype(np.float32)


def _write_s3(path, values: np.ndarray, order: str = "<") -> None:
    codebooks, streams, densities, dims = values.shape
    header = b"s3\nversion 1.0\nchksum0 yes\nendhdr\n"
    ints = np.array([0x11223344, codebooks, streams, densities, *([dims] * streams), values.size], f"{order}u4")
    path.write_bytes(header + ints.tobytes() + values.astype(f"{order}f4").tobytes() + b"\0\0\0\0")


@pytest.mark.parametrize("order", ["<", ">"])
def test_s3_gaussians_round_trip_in_both_byte_orders(tmp_path, order):
    values = np.random.default_rng(0).standard_normal((3, 2, 4, 5)).astype(np.float32)
    _write_s3(tmp_path / "means", values, order)
    assert np.array_equal(read_s3_gaussians(tmp_path / "means"), values)


def test_s3_reader_rejects_foreign_and_truncated_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a Sphinx s3 file"):
        read_s3_gaussians(tmp_path / "junk")
    values = np.ones((2, 3, 4, 5), np.float32)
    _write_s3(tmp_path / "means", values)
    raw = (tmp_path / "means").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-100])
    with pytest.raises(InputError, match="truncated"):
        read_s3_gaussians(tmp_path / "short")
    with pytest.raises(InputError, match="cannot read the acoustic model file"):
        read_s3_gaussians(tmp_path / "missing")


def test_the_shipped_model_has_42_phone_codebooks():
    model = phones.acoustic_model()
    assert len(PHONES) == NUM_PHONES == 42 and PHONES.index("SIL") == 32
    assert len(model.quad) == 3 and model.quad[0].shape == (13, 42 * 128)
    assert model.filters.shape == (25, 257)
    assert np.allclose(model.filters.sum(1) * SR / 512, 1.0, rtol=0.05)  # unit-area triangles (area in Hz)


def test_posteriors_have_one_row_per_10_ms_and_sum_to_one():
    audio = _speech_like(1.5)
    lp = phone_log_posteriors(audio)
    assert lp.shape == (1 + (len(audio) - 410) // 160, NUM_PHONES) and lp.dtype == np.float32
    prob = np.exp(lp.astype(np.float64)) - phones.POSTERIOR_FLOOR
    assert np.allclose(prob.sum(1), 1.0, atol=1e-4)
    assert lp.min() >= np.log(phones.POSTERIOR_FLOOR) - 1e-5 and lp.max() <= 1e-4
    assert np.array_equal(lp, phone_log_posteriors(audio))  # deterministic


def test_posteriors_do_not_change_with_the_gain():
    """Utterance-mean cepstral normalisation: a gain only moves c0's mean, which is removed."""
    audio = _speech_like(1.5, seed=1)
    lp = phone_log_posteriors(audio)
    for gain in (0.1, 3.0):
        assert np.abs(phone_log_posteriors(audio * gain) - lp).max() < 1e-3  # float32 rounding of the scaled audio


def test_long_audio_is_scored_in_blocks_with_the_same_result(monkeypatch):
    audio = _speech_like(3.0, seed=2)
    whole = phone_log_posteriors(audio)
    monkeypatch.setattr(phones, "_BLOCK_ROWS", 37)
    assert np.allclose(phone_log_posteriors(audio), whole, atol=1e-5)


def test_bad_input_is_a_clear_error():
    with pytest.raises(InputError, match="16000 Hz"):
        phone_log_posteriors(np.zeros(8000, np.float32), sample_rate=8000)
    with pytest.raises(InputError, match="mono"):
        phone_log_posteriors(np.zeros((2, 8000), np.float32))


def test_missing_pocketsphinx_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # import fails
    with pytest.raises(ConfigError, match="pip install 'pocketsphinx") as err:
        phones.default_model_dir()
    assert "features=mfcc" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_vowels_and_fricatives_of_espeak_speech_get_their_phone_classes():
    """On eSpeak speech (another synthesiser than the model was trained on), the vowel phones
    carry more posterior mass in the vowels than elsewhere, and the fricative phones more in
    the s/f sounds than in the vowels."""
    from talkinghead.data.synthetic import espeak
    from talkinghead.data.synthetic.speech import PHONEMES

    if espeak.available() is not None:
        pytest.skip(str(espeak.available()))
    vowels = [PHONES.index(p) for p in "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()]
    fricatives = [PHONES.index(p) for p in "S SH Z ZH F TH V HH".split()]
    kinds = np.array([p.kind for p in PHONEMES])
    symbols = np.array([p.symbol for p in PHONEMES])
    for seed in range(3):
        audio, timeline, _ = espeak.espeak_speech(4.0, np.random.default_rng(seed))
        prob = np.exp(phone_log_posteriors(audio))
        centres = (np.arange(len(prob)) * 160 + 205) / SR
        segment = timeline.ids[np.clip(np.searchsorted(timeline.start, centres, side="right") - 1, 0, len(timeline.ids) - 1)]
        is_vowel = kinds[segment] == "vowel"
        is_fricative = np.isin(symbols[segment], ["s", "f"])
        vowel_mass = prob[:, vowels].sum(1)
        assert vowel_mass[is_vowel].mean() > 1.5 * vowel_mass[~is_vowel].mean(), seed
        if is_fricative.sum() >= 5:
            fricative_mass = prob[:, fricatives].sum(1)
            assert fricative_mass[is_fricative].mean() > fricative_mass[is_vowel].mean(), seed


@pytest.mark.parametrize("features", AUDIO_FEATURES)
def test_windows_carry_the_chosen_columns(features):
    audio = _speech_like(2.0, seed=3)
    windows = frame_windows(audio, cmvn=True, features=features)
    assert windows.shape == (50, 28, window_columns(features)) and windows.dtype == np.float32
    blocks = list(iter_frame_windows(audio, chunk_frames=7, cmvn=True, features=features))
    assert np.array_equal(np.concatenate(blocks), windows)
    mfcc = frame_windows(audio, cmvn=True)
    rows = phone_log_posteriors(audio)
    if features == "mfcc":
        assert np.array_equal(windows, mfcc)
    else:
        phone_part = windows[..., -NUM_PHONES:]
        # row 12 of window t is the 10 ms row starting at frame t's time: phone row 4t
        for t in (3, 10, 40):
            assert np.array_equal(phone_part[t, 12], rows[4 * t])
            assert np.array_equal(phone_part[t], rows[4 * t - 12:4 * t + 16])
        assert np.array_equal(phone_part[0, :12], np.repeat(rows[:1], 12, 0))  # before the audio: the first row
        if features == "mfcc+phones":
            assert np.array_equal(windows[..., :12], mfcc)


def test_unknown_features_are_a_one_line_config_error():
    with pytest.raises(ConfigError, match="audio2coeff.model.features='mel'; use one of mfcc, phones, mfcc\\+phones"):
        frame_windows(np.zeros(SR, np.float32), features="mel")
    with pytest.raises(ConfigError, match="features"):
        NormalizedExpressionPoseLSTM(features="mel")


@pytest.mark.parametrize("features, columns, has_cnn", [("phones", 42, False), ("mfcc+phones", 54, True)])
def test_network_takes_phone_windows(features, columns, has_cnn):
    torch.manual_seed(0)
    model = NormalizedExpressionPoseLSTM(width=0.125, fc_dim=32, embed_dim=16, hidden=16, layers=1, features=features,
                                         phone_dim=24)
    assert model.window_shape == (28, columns) and (model.audio_encoder is not None) == has_cnn
    assert model.input_mean.shape == (columns,)
    windows = torch.randn(2, 5, 28, columns)
    pred, _ = model(windows)
    assert pred.shape == (2, 5, 70)
    # the phone columns reach the output
    changed = windows.clone()
    changed[..., -NUM_PHONES:] += 1.0
    assert not torch.allclose(model(changed)[0], pred)
    with pytest.raises(InputError, match=re.escape(f"28, {columns}]") + ".*" + re.escape(f"features='{features}'")):
        model(torch.randn(2, 5, 28, 12))
