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

eSpeak keeps state between calls within a process (the same text spoken twice differs), so
each call of :func:`espeak_speech` synthesises in a fresh ``python -c`` process
(:func:`synthesize_texts`, about 0.1 s): the audio is a function of the seed alone.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import resample_poly

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

#: The synthesis runs in a fresh ``python -c`` process per person: eSpeak keeps state between
#: calls in a process (its pitch flutter and wave generator), so the same text spoken twice in
#: one process differs; a fresh process makes every person's audio a function of its seed,
#: whichever worker generates it. Input (stdin, JSON): library, data path, voice name, rate,
#: pitch, range, word gap, texts, samples wanted; output (stdout): a JSON line per utterance
#: ``[num_samples, [[ipa, ms], ...]]``, then ``END``, then the int16 samples of all utterances.
_WORKER = r"""
import ctypes, json, sys
job = json.loads(sys.stdin.read())
class EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]
class Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", EventId)]
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(Event))
lib = ctypes.CDLL(job["library"])
lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                             ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
lib.espeak_SetSynthCallback.argtypes = [CALLBACK]
rate = lib.espeak_Initialize(2, 0, job["data"].encode(), 0x0001 | 0x0002)  # SYNCHRONOUS; phoneme events in IPA
if rate <= 0:
    sys.exit("espeak_Initialize failed")
samples, events = [], []
def collect(wav, count, ev):
    if count > 0:
        samples.append(ctypes.string_at(wav, 2 * count))
    i = 0
    while ev[i].type != 0:  # espeakEVENT_LIST_TERMINATED
        if ev[i].type == 7:  # espeakEVENT_PHONEME
            events.append([ev[i].id.string.decode("utf-8", "ignore"), ev[i].audio_position])
        i += 1
    return 0
try:  # the noise of whispered/breathy variants: seeded, not from the clock
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed(job["seed"])
except AttributeError:
    pass
ctypes.CDLL(None).srand(job["seed"])
callback = CALLBACK(collect)
lib.espeak_SetSynthCallback(callback)
if lib.espeak_SetVoiceByName(job["voice"].encode()) != 0:
    sys.exit("no voice " + job["voice"])
for param, value in ((1, job["rate"]), (3, job["pitch"]), (4, job["range"]), (2, 100), (7, job["word_gap"])):
    lib.espeak_SetParameter(param, value, 0)
out, header, total = [], [], 0
for text in job["texts"]:
    samples.clear(); events.clear()
    data = text.encode("utf-8") + b"\0"
    lib.espeak_Synth(ctypes.create_string_buffer(data), len(data), 0, 0, 0, 1, None, None)  # espeakCHARS_UTF8
    audio = b"".join(samples)
    out.append(audio)
    header.append([len(audio) // 2, list(events)])
    total += len(audio) // 2
    if total >= job["samples"]:
        break
sys.stdout.write(json.dumps({"rate": rate, "utterances": header}) + "\nEND\n")
sys.stdout.flush()
sys.stdout.buffer.write(b"".join(out))
"""


@lru_cache(maxsize=1)
def _paths() -> tuple[str, str]:
    """(libespeak-ng, its data folder) from the ``espeakng-loader`` wheel; the library is
    loaded once here to check it (synthesis runs in worker processes)."""
    import espeakng_loader  # optional dependency

    library, data = str(espeakng_loader.get_library_path()), str(espeakng_loader.get_data_path())
    ctypes.CDLL(library)
    return library, data


def available() -> str | None:
    """``None`` when eSpeak NG can be used, else why not (with :data:`INSTALL_HINT`)."""
    try:
        _paths()
    except ImportError:
        return f"eSpeak NG is not installed; {INSTALL_HINT}"
    except OSError as err:
        return f"eSpeak NG could not be loaded ({err}); reinstall it: {INSTALL_HINT}"
    return None


def synthesize_texts(texts: list[str], voice: "EspeakVoice", max_seconds: float) -> tuple[int, list[tuple[np.ndarray, list]]]:
    """Speak ``texts`` in order with ``voice`` in a fresh eSpeak process, stopping once
    ``max_seconds`` are spoken: ``(sample rate, [(int16 audio [n], [(ipa, start ms), ...]), ...])``."""
    library, data = _paths()
    job = {"library": library, "data": data, "voice": voice.name, "rate": voice.rate, "pitch": voice.pitch,
           "range": voice.pitch_range, "word_gap": voice.word_gap, "texts": texts,
           "samples": int(max_seconds * 22050) + 1, "seed": 12345}
    proc = subprocess.run([sys.executable, "-c", _WORKER], input=json.dumps(job).encode(), capture_output=True)
    if proc.returncode != 0:
        raise ConfigError(f"eSpeak NG failed for voice {voice.name!r}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    head, _, body = proc.stdout.partition(b"\nEND\n")
    info = json.loads(head)
    pcm = np.frombuffer(body, dtype="<i2")
    out, offset = [], 0
    for count, events in info["utterances"]:
        out.append((pcm[offset:offset + count], [(str(ipa), int(ms)) for ipa, ms in events]))
        offset += count
    return int(info["rate"]), out


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
    lead = int(rng.uniform(0.05, 0.4) * SAMPLE_RATE)
    pieces, symbols, starts, stressed = [np.zeros(lead, np.float32)], ["sil"], [0.0], [False]
    filled = lead
    while filled < total:  # usually one batch: texts for far more than the duration
        texts = [random_text(rng, int(rng.integers(3, 12))) for _ in range(max(4, int(duration / 1.5)))]
        pauses = [int(rng.gamma(4.0, 0.08) * SAMPLE_RATE) for _ in texts]
        rate, utterances = synthesize_texts(texts, voice, 1.2 * (total - filled) / SAMPLE_RATE)
        if not utterances or not any(len(a) for a, _ in utterances):
            raise ConfigError(f"eSpeak NG produced no audio for voice {voice.name!r}")
        for (pcm, events), pause in zip(utterances, pauses):
            offset = filled / SAMPLE_RATE
            for symbol, ms in events:
                symbols.append(ipa_to_world(symbol))
                starts.append(offset + ms / 1000.0)
                stressed.append("ˈ" in symbol)  # eSpeak marks the primary-stressed vowel
            audio = _resample(pcm.astype(np.float32) / 32768.0, rate)
            pieces.append(audio)
            filled += len(audio)
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
