"""Real synthetic speech from eSpeak NG: many languages, voices, rates and pitches, with the
phoneme timing the world's mouth needs.

eSpeak NG (a formant synthesiser speaking about a hundred languages) comes from the PyPI wheel
``espeakng-loader``, which ships ``libespeak-ng`` and its data, so a fresh ``pip install``
has it without a system package. It is driven through ``ctypes``:
``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ..., espeakINITIALIZE_PHONEME_EVENTS |
espeakINITIALIZE_PHONEME_IPA)``, a synthesis callback collecting the 22,050 Hz samples and the
``espeakEVENT_PHONEME`` events (IPA symbol and start time of each phoneme), then
``espeak_Synth`` of one text.

:func:`espeak_speech` speaks random pseudo-words (syllables of the language's letters, with
commas and full stops for pauses) in a random language, voice variant, rate, pitch and
intonation range, resamples to 16 kHz and returns the audio with a
:class:`~talkinghead.data.synthetic.speech.Timeline` whose phonemes are mapped from IPA to the
world's inventory (:func:`ipa_to_world`: open/mid/close, front/back/rounded vowels,
bilabials, labiodentals, alveolars, velars), so :mod:`.mouth` drives the mouth from it exactly
as for the world's own synthesiser. Why: the world's source-filter voices share one
synthesiser, one inventory of 19 phonemes and one recording chain; a model trained on them
alone learned those voices, not speech (issue 13). eSpeak adds real phonotactics, durations,
coarticulation and prosody of many languages and a different synthesiser.

eSpeak has one global state per process: :func:`espeak_speech` holds a lock, and the world
generates persons in worker processes, each initialising its own copy.
"""

from __future__ import annotations

import ctypes
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from talkinghead.data.synthetic.speech import INDEX, SAMPLE_RATE, Timeline
from talkinghead.errors import ConfigError

__all__ = ["available", "espeak_speech", "ipa_to_world", "EspeakVoice", "LANGUAGES", "INSTALL_HINT"]

INSTALL_HINT = "pip install espeakng-loader (the PyPI wheel ships libespeak-ng and its data)"

#: Languages written in Latin letters that read pseudo-words letter by letter (eSpeak voice names).
LANGUAGES: tuple[str, ...] = ("en-us", "en", "es", "it", "de", "fr", "pt", "pl", "cs", "nl", "sv", "fi", "hu",
                              "ro", "hr", "tr", "id", "sw", "ca", "da", "sk", "sl", "lv", "et", "eo", "la")
#: eSpeak voice variants (male, female and other timbres).
VARIANTS: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
                             "klatt2", "klatt3", "croak", "whisperf", "iven", "Andy", "Alvin")

# eSpeak API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_EVENT_PHONEME, _EVENT_END, _EVENT_MSG_TERMINATED, _EVENT_LIST_TERMINATED = 7, 5, 6, 0
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_ESPEAK_RATE = 22050


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_LOCK = threading.Lock()


class _Engine:
    """The process's eSpeak instance and the buffers its callback fills."""

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                                          _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data {espeakng_loader.get_data_path()}")
        self.rate = rate
        self.samples: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []  # (IPA symbol, start in ms)
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the engine
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self.samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self.events.append((events[i].id.string.decode("utf-8", errors="ignore"), int(events[i].audio_position)))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, word_gap: int) -> tuple[np.ndarray, list]:
        self.samples, self.events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ConfigError(f"eSpeak has no voice {voice!r}; use a language of talkinghead.data.synthetic.espeak.LANGUAGES")
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                             (_PARAM_VOLUME, 100), (_PARAM_WORDGAP, word_gap)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        self.lib.espeak_Synth(buf, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
        audio = np.concatenate(self.samples) if self.samples else np.zeros(0, np.int16)
        return audio.astype(np.float32) / 32768.0, list(self.events)


@lru_cache(maxsize=1)
def _engine() -> _Engine:
    return _Engine()


def available() -> str | None:
    """``None`` when eSpeak NG can be used, else why not (with :data:`INSTALL_HINT`)."""
    try:
        _engine()
    except ImportError:
        return f"eSpeak NG is not installed; {INSTALL_HINT}"
    except (OSError, RuntimeError) as err:
        return f"eSpeak NG could not be loaded ({err}); reinstall it: {INSTALL_HINT}"
    return None


# ------------------------------------------------------------------------------ IPA -> world
_VOWELS = {
    "a": "a", "ɑ": "a", "æ": "a", "ɐ": "a", "ʌ": "a", "ɶ": "a", "ä": "a",
    "e": "e", "ɛ": "e", "ɜ": "e", "ɞ": "e", "ø": "o", "œ": "o",
    "i": "i", "ɪ": "i", "ɨ": "i", "y": "u", "ʏ": "u",
    "o": "o", "ɔ": "o", "ɒ": "o", "ɤ": "o",
    "u": "u", "ʊ": "u", "ɯ": "u", "ʉ": "u",
    "ə": "@", "ɚ": "@", "ɘ": "@", "ɵ": "@", "ᵻ": "i", "ɝ": "@",
}
_CONSONANTS = {
    "p": "p", "b": "b", "m": "m", "ɸ": "f", "β": "v", "ʙ": "b",
    "f": "f", "v": "v", "ɱ": "m", "ʋ": "v",
    "t": "t", "d": "d", "n": "n", "l": "l", "s": "s", "z": "s", "θ": "t", "ð": "d", "ɹ": "l", "r": "l",
    "ɾ": "l", "ɻ": "l", "ɫ": "l", "ʃ": "s", "ʒ": "s", "ɕ": "s", "ʑ": "s", "ʂ": "s", "ʐ": "s", "ɬ": "l",
    "ɲ": "n", "ɳ": "n", "ʎ": "l", "c": "k", "ɟ": "g", "j": "i", "ʝ": "i", "ç": "s", "ɖ": "d", "ʈ": "t",
    "k": "k", "g": "g", "ɡ": "g", "ŋ": "n", "x": "k", "ɣ": "g", "χ": "k", "ʁ": "g", "q": "k", "ɢ": "g",
    "h": "k", "ɦ": "k", "ʔ": "k", "w": "u", "ɥ": "u", "ʍ": "u", "ħ": "k", "ʕ": "g",
}


def ipa_to_world(symbol: str) -> str:
    """The world phoneme (:data:`~talkinghead.data.synthetic.speech.SYMBOLS`) for one eSpeak
    IPA phoneme: the first character that names a sound decides (``"aɪ"`` -> ``"a"``,
    ``"tʃ"`` -> ``"t"``); stress and length marks are skipped; pauses (``"_"``, empty) are
    ``"sil"``; an unknown symbol is a schwa."""
    for char in unicodedata.normalize("NFD", symbol):
        if char in _VOWELS:
            return _VOWELS[char]
        if char in _CONSONANTS:
            return _CONSONANTS[char]
    return "sil" if not symbol.strip("ˈˌː_ ") or "_" in symbol else "@"


# ------------------------------------------------------------------------------ utterances
@dataclass(frozen=True)
class EspeakVoice:
    """One eSpeak speaker: language, variant, rate (words/min), pitch and range (0-100)."""

    language: str = "en-us"
    variant: str = "m1"
    rate: int = 170
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0  # extra pause between words, in units of 10 ms

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "EspeakVoice":
        return cls(
            language=str(rng.choice(LANGUAGES)),
            variant=str(rng.choice(VARIANTS)),
            rate=int(rng.integers(120, 250)),
            pitch=int(rng.integers(15, 85)),
            pitch_range=int(rng.integers(10, 90)),
            word_gap=int(rng.choice([0, 0, 0, 1, 2, 4])),
        )

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"


_ONSETS = ("p", "b", "m", "f", "v", "t", "d", "s", "n", "l", "k", "g", "r", "z", "h", "j", "w", "ch", "sh", "pr",
           "tr", "kl", "st", "bl", "gr", "")
_NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "au", "ei", "ou", "ia", "io")
_CODAS = ("", "", "", "n", "m", "s", "r", "l", "t", "k", "nt", "st")


def random_text(rng: np.random.Generator, words: int) -> str:
    """Pseudo-words of 1-4 syllables in Latin letters, with commas and full stops (pauses)."""
    out = []
    for k in range(words):
        syllables = int(rng.integers(1, 5))
        word = "".join(str(rng.choice(_ONSETS)) + str(rng.choice(_NUCLEI)) + str(rng.choice(_CODAS))
                       for _ in range(syllables))
        out.append(word)
        if k < words - 1:
            r = rng.random()
            out.append(". " if r < 0.1 else ", " if r < 0.2 else " ")
    return "".join(out) + "."


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = np.gcd(SAMPLE_RATE, rate)
    return resample_poly(audio.astype(np.float64), SAMPLE_RATE // g, rate // g).astype(np.float32)


def espeak_speech(duration: float, rng: np.random.Generator, voice: EspeakVoice | None = None) -> tuple[np.ndarray, Timeline, EspeakVoice]:
    """Random eSpeak speech of exactly ``duration`` seconds: ``(audio float32 [S] at 16 kHz,
    timeline, voice)``. Utterances of random pseudo-words are spoken with ``voice`` (default: a
    random one) and joined with short pauses until the duration is filled; the audio is
    normalised to a peak of about -6 dBFS."""
    problem = available()
    if problem is not None:
        raise ConfigError(problem)
    voice = voice or EspeakVoice.sample(rng)
    total = int(round(duration * SAMPLE_RATE))
    pieces, symbols, starts, stressed = [], [], [], []
    filled = 0
    with _LOCK:
        engine = _engine()
        lead = int(rng.uniform(0.05, 0.4) * SAMPLE_RATE)
        pieces.append(np.zeros(lead, np.float32))
        symbols.append("sil"), starts.append(0.0), stressed.append(False)
        filled = lead
        while filled < total:
            audio, events = engine.synth(random_text(rng, int(rng.integers(3, 12))), voice.name, voice.rate,
                                         voice.pitch, voice.pitch_range, voice.word_gap)
            audio = _resample(audio, engine.rate)
            offset = filled / SAMPLE_RATE
            for symbol, ms in events:
                symbols.append(ipa_to_world(symbol))
                starts.append(offset + ms / 1000.0)
                stressed.append("ˈ" in symbol)  # eSpeak marks the primary-stressed vowel
            pieces.append(audio)
            filled += len(audio)
            pause = int(rng.gamma(4.0, 0.08) * SAMPLE_RATE)
            symbols.append("sil"), starts.append(filled / SAMPLE_RATE), stressed.append(False)
            pieces.append(np.zeros(pause, np.float32))
            filled += pause
    audio = np.concatenate(pieces)[:total]
    audio = np.pad(audio, (0, total - len(audio)))
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio = audio * (0.5 / peak)
    start = np.asarray(starts, np.float64)
    order = np.argsort(start, kind="stable")  # events are in time order; keep it robust
    start, ids = start[order], np.array([INDEX[s] for s in np.asarray(symbols)[order]], np.int64)
    stress = np.asarray(stressed, bool)[order]
    keep = np.concatenate([[True], np.diff(start) > 1e-4])  # zero-length segments (same start) dropped
    keep[:-1] &= np.diff(start) > 1e-4
    keep[-1] = True
    start, ids, stress = start[keep], ids[keep], stress[keep]
    end = np.concatenate([start[1:], [max(duration, start[-1] + 0.01)]])
    timeline = Timeline(ids=ids, start=start, end=end, stress=stress, gain=np.zeros(len(ids)))
    return audio.astype(np.float32), timeline, voice
