"""eSpeak NG speech in the synthetic world (talkinghead.data.synthetic.espeak): the ctypes
driver, phoneme timing that matches the audio, the IPA -> world phoneme map, determinism, and
the world's ``speech=espeak|mix`` persons."""

from __future__ import annotations

import numpy as np
import pytest

from talkinghead.data.synthetic import espeak
from talkinghead.data.synthetic.speech import INDEX, SAMPLE_RATE, SILENCE, VOWELS

pytestmark = pytest.mark.skipif(espeak.available() is not None, reason=str(espeak.available()))


def test_ipa_map_covers_the_mouth_classes():
    cases = {"ˈa": "a", "aɪ": "a", "ɛ": "e", "iː": "i", "ɪ": "i", "ˈoʊ": "o", "ɔ": "o", "uː": "u", "ʊ": "u",
             "ə": "@", "p": "p", "b": "b", "m": "m", "f": "f", "v": "v", "tʃ": "t", "ʃ": "s", "z": "s", "ɹ": "l",
             "ŋ": "n", "x": "k", "ɡ": "g", "w": "u", "": "sil", "_": "sil", "ˈ": "sil", "?!": "@"}
    for ipa, world in cases.items():
        assert espeak.ipa_to_world(ipa) == world, ipa
        assert world in INDEX


def test_espeak_speech_has_matching_timing_and_is_deterministic():
    audio, timeline, voice = espeak.espeak_speech(6.0, np.random.default_rng(0))
    assert audio.shape == (6 * SAMPLE_RATE,) and audio.dtype == np.float32 and np.abs(audio).max() <= 0.51
    assert np.all(np.diff(timeline.start) > 0) and np.all(timeline.end > timeline.start)
    assert timeline.start[0] == 0.0 and timeline.end[-1] >= 6.0
    assert np.isin(timeline.ids, VOWELS).sum() > 10 and timeline.stress.any()
    # The phoneme events line up with the sound: vowels are far louder than the pauses.
    seg = timeline.segment_at(np.arange(len(audio)) / SAMPLE_RATE)
    ids = timeline.ids[seg]
    rms = lambda mask: float(np.sqrt(np.mean(audio[mask].astype(np.float64) ** 2)))  # noqa: E731
    assert rms(np.isin(ids, VOWELS)) > 4 * rms(ids == SILENCE)
    again, timeline2, voice2 = espeak.espeak_speech(6.0, np.random.default_rng(0))
    np.testing.assert_array_equal(audio, again)
    np.testing.assert_array_equal(timeline.ids, timeline2.ids) and voice == voice2
    other = espeak.espeak_speech(6.0, np.random.default_rng(1))[2]
    assert other != voice and other.language in espeak.LANGUAGES


def test_world_persons_speak_with_espeak_and_their_mouth_follows():
    from talkinghead.data.synthetic.people import sample_people
    from talkinghead.data.synthetic.world import person_signals, person_speech

    people = sample_people(6, seed=0, heldout=1)
    signals = person_signals(people[0], 100, speech="espeak")
    assert signals.audio.shape == (100 * 640,) and signals.coeffs.shape == (100, 257)
    jaw = signals.mouth[:, 0]
    loud = np.sqrt(np.mean(signals.audio.reshape(100, 640).astype(np.float64) ** 2, axis=1))
    assert np.corrcoef(jaw, loud)[0, 1] > 0.3  # the jaw opens when there is sound
    used = {person_speech(p, 25, "mix")[2] for p in people}
    assert used == {"espeak", "source_filter"}
    # The default keeps the world's own synthesiser, byte for byte.
    np.testing.assert_array_equal(person_signals(people[1], 50).audio, person_signals(people[1], 50, "source_filter").audio)


def test_extra_speakers_are_in_memory_clips_for_stage1():
    from talkinghead.data.stage1_dataset import Stage1WindowDataset, reference_expression
    from talkinghead.data.synthetic.world import speech_clips

    clips = speech_clips(2, frames=60, seed=3)
    assert [c.num_frames for c in clips] == [60, 60] and clips[0].name != clips[1].name
    assert clips[0].audio.shape == (60 * 640,) and clips[0].coeffs.shape == (60, 257)
    data = Stage1WindowDataset(clips, window=16, stride=4, center_expression=True, cmvn=True)
    assert len(data) == 2 * ((60 - 16) // 4 + 1) and data.clip_names == [c.name for c in clips]
    assert reference_expression(clips[0]).shape == (64,)
    np.testing.assert_array_equal(speech_clips(1, frames=60, seed=3)[0].audio, clips[0].audio)  # seeded
