"""The synthetic world: persons -> per-frame coefficients, audio and frames -> person clips.

Entry points:

* :func:`person_signals` - one person's audio and 257-d coefficients per frame (no images;
  fast, for tests of Stage 1 and of the world itself);
* :func:`make_person` - one person's full clip written with :func:`talkinghead.data.clip.write_clip`;
* :func:`make_corpus` - ``persons`` clips plus ``corpus.json`` (train / held-out split), in
  parallel worker processes, with an optional contact sheet ``preview.png``;
* :func:`main` - the body of ``scripts/make_synthetic.py`` (a composed config in, a corpus out).

Everything is deterministic from the seed: the same seed gives byte-identical files whatever
the number of workers (each person is generated from its own seed sequence, torch runs with
one thread per worker, and frames are processed in fixed-size chunks).

Coefficients of one frame (layout: :mod:`talkinghead.face.coeffs`):

* identity, texture: the person's, fixed;
* expression: the mouth units from the phonemes (:mod:`.mouth`), the person's smile with a slow
  drift, blinks, brow raises on stressed syllables, and small habitual offsets plus slow noise
  on the other 57 components;
* angles, translation: the person's head-pose style (:mod:`.motion`);
* lighting: the person's SH lighting with a slow small drift.

Synthetic clips are rendered directly in the fixed crop: its transform is the identity, the
landmarks are the face model's projected landmarks, and the aligned crops are cut from the
fixed frames with the 5-point alignment of :mod:`talkinghead.face.align`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from scipy.ndimage import convolve1d

from talkinghead.cli import cfg_get, to_plain
from talkinghead.data.clip import ClipMeta, PersonClip, default_split, read_clip, write_clip, write_corpus_index
from talkinghead.data.synthetic.espeak import available, espeak_speech
from talkinghead.data.synthetic.frames import FaceAttributes, FrameSynthesizer
from talkinghead.data.synthetic.motion import blinks, brow_raises, head_motion
from talkinghead.data.synthetic.mouth import MOUTH_UNITS, mouth_trajectory
from talkinghead.data.synthetic.people import Person, sample_people
from talkinghead.data.synthetic.speech import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, Timeline, make_speech
from talkinghead.progress import progress_bar
from talkinghead.errors import ConfigError
from talkinghead.face.align import alignment_transforms, warp_crop
from talkinghead.face.coeffs import COEFF_DIM, EXP_DIM, SLICES
from talkinghead.face.factory import DEFAULT_FACE_MODEL, face_model_spec, is_procedural, make_face_model
from talkinghead.face.procedural import EXPRESSION_UNITS

GENERATOR_VERSION = 1
#: The world's face model (one for all persons; persons differ by coefficients).
#: Expression coefficient of each mouth unit at unit value 1 (the procedural model's units
#: are "full action" at 1.0; speech uses part of that range).
MOUTH_SCALE = {"jaw_open": 0.6, "lip_round": 0.8, "lip_spread": 0.7, "lip_close": 1.0}
#: Frames rendered per batch (fixed: chunking is part of the determinism contract).
CHUNK_FRAMES = 32


@dataclass
class PersonSignals:
    """A person's clip content before rendering."""

    audio: np.ndarray  # float32 [num_frames * 640] at 16 kHz
    timeline: Timeline
    mouth: np.ndarray  # [N, 4] mouth units (MOUTH_UNITS), before MOUTH_SCALE
    coeffs: np.ndarray  # float32 [N, 257]


def _slow_noise(rng: np.random.Generator, n: int, dims: int, seconds: float) -> np.ndarray:
    """Unit-std Gaussian noise ``[n, dims]`` smoothed over about ``seconds`` (a Gaussian
    kernel of std ``seconds / 2``; scaled analytically, so short clips have the same statistics)."""
    sigma = seconds * FPS / 2.0
    taps = np.arange(-int(4 * sigma) - 1, int(4 * sigma) + 2)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= np.sqrt((kernel**2).sum())
    white = rng.normal(size=(n + len(kernel) - 1, dims))
    half = len(kernel) // 2
    return convolve1d(white, kernel, axis=0, mode="constant")[half:half + n]


#: Speech sources of the world (``make_synthetic.py speech=...``).
SPEECH_SOURCES = ("source_filter", "espeak", "mix")


def person_speech(person: Person, num_frames: int, speech: str = "source_filter") -> tuple[np.ndarray, Timeline, str]:
    """The person's audio ``[num_frames * 640]`` and phoneme timeline, and which synthesiser
    spoke: ``source_filter`` (the world's own, :mod:`.speech`), ``espeak`` (eSpeak NG in a random
    language and voice, :mod:`.espeak`) or ``mix`` (each person one of the two, even odds,
    drawn from the person's speech stream)."""
    if speech not in SPEECH_SOURCES:
        raise ConfigError(f"speech={speech!r}; use one of {', '.join(SPEECH_SOURCES)}")
    rng = person.streams()["speech"]
    if speech == "mix":
        speech = "espeak" if rng.random() < 0.5 else "source_filter"
    if speech == "espeak":
        audio, timeline, _ = espeak_speech(num_frames / FPS, rng)
        audio = np.clip(audio * 10.0 ** (person.voice.gain_db / 20.0), -0.99, 0.99) + rng.normal(0.0, 2e-4, len(audio))
        return audio.astype(np.float32), timeline, speech
    audio, timeline = make_speech(num_frames / FPS, person.voice, rng)
    return audio, timeline, speech


def person_signals(person: Person, num_frames: int, speech: str = "source_filter") -> PersonSignals:
    """Audio, phoneme timeline, mouth units and per-frame coefficients ``[N, 257]``
    (``speech``: the synthesiser, see :func:`person_speech`)."""
    streams = person.streams()
    audio, timeline, _ = person_speech(person, num_frames, speech)
    stress = timeline.stress_onsets()
    angles, translation = head_motion(person.pose_style, num_frames, stress, streams["motion"])

    rng = streams["expression"]
    mouth = mouth_trajectory(timeline, num_frames, person.articulation)  # [N, 4]
    expression = np.zeros((num_frames, EXP_DIM))
    for k, unit in enumerate(MOUTH_UNITS):
        expression[:, EXPRESSION_UNITS[unit]] = MOUTH_SCALE[unit] * mouth[:, k]
    smile = person.smile + 0.06 * _slow_noise(rng, num_frames, 1, 3.0)[:, 0]
    expression[:, EXPRESSION_UNITS["smile"]] = np.clip(smile, 0.0, None)
    expression[:, EXPRESSION_UNITS["blink"]] = blinks(num_frames, person.blink_rate, rng)
    expression[:, EXPRESSION_UNITS["brow_raise"]] = brow_raises(stress, num_frames, person.brow_coupling, rng)
    rest = slice(len(EXPRESSION_UNITS), EXP_DIM)
    expression[:, rest] = person.expression_bias[None] + 0.15 * _slow_noise(rng, num_frames, EXP_DIM - len(EXPRESSION_UNITS), 1.0)

    lighting = person.lighting[None] + 0.012 * _slow_noise(streams["lighting"], num_frames, 27, 4.0)

    coeffs = np.zeros((num_frames, COEFF_DIM), dtype=np.float32)
    coeffs[:, SLICES["identity"]] = person.identity
    coeffs[:, SLICES["texture"]] = person.texture
    coeffs[:, SLICES["expression"]] = expression
    coeffs[:, SLICES["angles"]] = angles
    coeffs[:, SLICES["lighting"]] = lighting
    coeffs[:, SLICES["translation"]] = translation
    return PersonSignals(audio=audio[: num_frames * SAMPLES_PER_FRAME], timeline=timeline, mouth=mouth, coeffs=coeffs)


def speech_clips(count: int, frames: int = 400, seed: int = 1, speech: str = "espeak",
                 articulation: dict[str, tuple[float, float]] | None = None) -> list:
    """``count`` extra speakers for Stage-1 training, in memory and without images: person clips
    (:class:`~talkinghead.data.clip.PersonClip`, frame arrays ``[N, 1, 1, 3]`` of zeros) holding
    the world's audio and coefficients of persons sampled from ``seed`` speaking with
    ``speech`` (default eSpeak NG). About half a second each: a general Stage-1 model hears far
    more voices and languages than the rendered corpus holds (``audio2coeff.train.extra_speakers``).
    ``articulation``: per mouth unit a ``(low, high)`` range the speakers' articulation gains are
    drawn from (:meth:`~talkinghead.data.synthetic.mouth.Articulation.with_gains_from`, from a
    stream of their own, so the audio does not change); ``None`` keeps the world's."""
    if count < 1:
        return []
    people = sample_people(count, seed, 0)
    train, test = default_split(frames)
    eye = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    empty = np.zeros((frames, 1, 1, 3), np.uint8)
    clips = []
    for person in people:
        if articulation:
            stream = np.random.SeedSequence(person.seed.entropy, spawn_key=(*person.seed.spawn_key, 1000))
            person = replace(person, articulation=person.articulation.with_gains_from(
                articulation, np.random.default_rng(stream)))
        signals = person_signals(person, frames, speech)
        meta = ClipMeta(name=f"{speech}_{seed}_{person.name}", num_frames=frames, crop_size=1, sample_rate=SAMPLE_RATE,
                        source="synthetic", split="train", train_frames=train, test_frames=test)
        clips.append(PersonClip(root=Path(f"<memory>/{meta.name}"), meta=meta, coeffs=signals.coeffs,
                                landmarks=np.zeros((frames, 68, 2), np.float32), fixed=empty, aligned=empty,
                                fixed_transform=eye, aligned_transforms=np.repeat(eye[None], frames, 0),
                                audio=signals.audio))
    return clips


# --------------------------------------------------------------------------------- clips
def render_frames(model, person: Person, coeffs: np.ndarray, crop_size: int = 224, attributes=None,
                  on_chunk: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Real frames ``uint8 [N, S, S, 3]`` and landmarks ``[N, 68, 2]`` of ``coeffs [N, 257]``."""
    noise_seed = int(person.streams()["frames"].integers(2**31))
    synth = FrameSynthesizer(model, person, crop_size, attributes=attributes, seed=noise_seed)
    n = len(coeffs)
    frames = np.empty((n, crop_size, crop_size, 3), np.uint8)
    landmarks = np.empty((n, 68, 2), np.float32)
    for lo in range(0, n, CHUNK_FRAMES):
        hi = min(lo + CHUNK_FRAMES, n)
        img, lm = synth.real(torch.from_numpy(coeffs[lo:hi]), torch.arange(lo, hi))
        frames[lo:hi], landmarks[lo:hi] = img.numpy(), lm.numpy()
        if on_chunk is not None:
            on_chunk(hi - lo)
    return frames, landmarks


def aligned_crops(frames: np.ndarray, landmarks: np.ndarray, crop_size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame 5-point aligned crops ``[N, S, S, 3]`` and their transforms ``[N, 2, 3]``."""
    transforms = alignment_transforms(landmarks, crop_size)
    aligned = np.stack([warp_crop(f, t, crop_size) for f, t in zip(frames, transforms)])
    return aligned, transforms


def make_person(out: str | os.PathLike, person: Person, num_frames: int, face_model: dict | None = None,
                crop_size: int = 224, on_chunk: Callable[[int], None] | None = None,
                speech: str = "source_filter") -> Path:
    """Generate ``person``'s clip of ``num_frames`` frames into ``out`` (a clip directory)."""
    spec = face_model_spec(face_model or DEFAULT_FACE_MODEL)
    model = make_face_model(spec)
    signals = person_signals(person, num_frames, speech)
    frames, landmarks = render_frames(model, person, signals.coeffs, crop_size, FaceAttributes.from_model(model), on_chunk)
    aligned, transforms = aligned_crops(frames, landmarks, crop_size)
    train, test = default_split(num_frames)
    meta = ClipMeta(
        name=person.name, num_frames=num_frames, crop_size=crop_size, sample_rate=SAMPLE_RATE, source="synthetic",
        split=person.split, train_frames=train, test_frames=test, face_model=spec,
        extra={"generator": "talkinghead.data.synthetic", "generator_version": GENERATOR_VERSION, **person.describe(),
               **({"speech": speech} if speech != "source_filter" else {})},
    )
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    return write_clip(out, meta, signals.coeffs, landmarks, frames, aligned, identity, transforms, audio=signals.audio)


# -------------------------------------------------------------------------------- corpus
def _make_person_job(args: tuple) -> str:
    """Worker entry (top level so it pickles): one thread, one person."""
    out, count, seed, heldout, index, num_frames, face_model, crop_size, speech = args
    torch.set_num_threads(1)
    person = sample_people(count, seed, heldout)[index]
    return str(make_person(Path(out) / person.name, person, num_frames, face_model, crop_size, speech=speech))


def make_corpus(out: str | os.PathLike, persons: int, frames: int, seed: int = 0, heldout: int = 4,
                workers: int = 0, preview: bool = False, progress: bool = True, face_model: dict | None = None,
                crop_size: int = 224, speech: str = "source_filter") -> Path:
    """Write ``persons`` synthetic clips of ``frames`` frames to ``out`` with ``corpus.json``;
    the last ``heldout`` persons are held out. ``workers``: processes (0 = one per CPU core).
    ``speech``: who speaks (:func:`person_speech`). Returns ``out``."""
    _check_sizes(persons, heldout, frames)
    if speech not in SPEECH_SOURCES:
        raise ConfigError(f"speech={speech!r}; use one of {', '.join(SPEECH_SOURCES)}")
    if speech != "source_filter":
        problem = available()
        if problem is not None:
            raise ConfigError(f"speech={speech} needs eSpeak NG: {problem}; or use speech=source_filter")
    spec = face_model_spec(face_model or DEFAULT_FACE_MODEL)
    if not is_procedural(spec):
        raise ConfigError(f"face_model._target_={face_model_spec(spec)['_target_']!r}: the synthetic world drives the "
                          "procedural face model's named expression units; use face_model=procedural")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    people = sample_people(persons, seed, heldout)
    workers = min(persons, workers if workers > 0 else (os.cpu_count() or 1))
    jobs = [(str(out), persons, seed, heldout, i, frames, spec, crop_size, speech) for i in range(persons)]
    with progress_bar(total=persons * frames, unit="frame", desc="synthetic corpus", enabled=progress) as bar:
        if workers <= 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for person in people:
                    make_person(out / person.name, person, frames, spec, crop_size, on_chunk=bar.update, speech=speech)
            finally:
                torch.set_num_threads(threads)
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for _ in pool.map(_make_person_job, jobs):
                    bar.update(frames)
    info = {
        "generator": "talkinghead.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "frames": int(frames),
        "heldout": int(heldout),
        "face_model": spec,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "speech": speech,
    }
    write_corpus_index(out, [{"name": p.name, "split": p.split} for p in people], info)
    if preview:
        write_preview(out, people[: min(4, persons)], spec)
    return out


def _check_sizes(persons: int, heldout: int, frames: int) -> None:
    if int(persons) < 1:
        raise ConfigError(f"persons={persons}: need at least 1 person (e.g. persons=20)")
    if not 0 <= int(heldout) < int(persons):
        raise ConfigError(f"heldout={heldout}: must be >= 0 and smaller than persons={persons} "
                          f"(e.g. heldout={min(4, max(int(persons) - 1, 0))})")
    if int(frames) < 8:
        raise ConfigError(f"frames={frames}: need at least 8 frames per person (400 for the method's 300/100 split)")


# ------------------------------------------------------------------------------- preview
def write_preview(out: str | os.PathLike, people: list[Person], face_model: dict | None = None,
                  columns: int = 5, crop_size: int = 224) -> Path:
    """Contact sheet ``OUT/preview.png``: per person a row of plain 3DMM renders and a row of
    the real frames of the same time steps (read back from the written clips)."""
    out = Path(out)
    model = make_face_model(dict(face_model or DEFAULT_FACE_MODEL))
    rows = []
    for person in people:
        clip = read_clip(out / person.name, load_audio=False)
        idx = np.linspace(0, clip.num_frames - 1, columns).round().astype(int)
        synth = FrameSynthesizer(model, person, crop_size)
        plain = synth.plain(torch.from_numpy(np.ascontiguousarray(clip.coeffs[idx])))
        plain = (plain[:, :3] * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        real = np.asarray(clip.fixed[idx])
        for label, images in (("render", plain), ("real", real)):
            row = np.concatenate(list(images), 1).copy()
            cv2.putText(row, f"{person.name} {label}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            for j, f in enumerate(idx):
                cv2.putText(row, f"t={f}", (j * crop_size + 6, crop_size - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                            (255, 255, 255), 1, cv2.LINE_AA)
            rows.append(row)
    sheet = np.concatenate(rows, 0)
    path = out / "preview.png"
    cv2.imwrite(str(path), sheet[..., ::-1])
    return path


# ----------------------------------------------------------------------------------- CLI
def main(cfg: Any) -> Path:
    """``scripts/make_synthetic.py``: build the corpus the composed config describes (keys
    ``out persons heldout frames seed preview workers progress``; optional ``face_model``)."""
    face_model = cfg_get(cfg, "face_model", None)
    heldout = cfg_get(cfg, "heldout", None)
    if heldout is None:  # the default: data.heldout (4), at most all persons but one
        heldout = min(int(cfg_get(cfg, "data.heldout", 4)), max(int(cfg.persons) - 1, 0))
    out = make_corpus(
        out=str(cfg.out),
        persons=int(cfg.persons),
        frames=int(cfg.frames),
        seed=int(cfg.seed),
        heldout=int(heldout),
        workers=int(cfg_get(cfg, "workers", 0)),
        preview=bool(cfg_get(cfg, "preview", False)),
        progress=bool(cfg_get(cfg, "progress", True)),
        face_model=to_plain(face_model) if face_model is not None else None,
        speech=str(cfg_get(cfg, "speech", "source_filter")),
    )
    index = json.loads((out / "corpus.json").read_text())
    n_held = sum(p["split"] == "heldout" for p in index["persons"])
    print(f"wrote {len(index['persons'])} persons ({n_held} held out) x {cfg.frames} frames to {out}"
          + (f"; contact sheet {out / 'preview.png'}" if cfg_get(cfg, "preview", False) else ""))
    return out
