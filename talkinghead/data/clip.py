"""The person-clip format: the contract between preprocessing (real or synthetic) and training /
inference. Documented in ``docs/data-format.md``; this module is its only reader and writer.

A clip is a directory::

    PERSON/
      meta.json        format_version, name, fps, num_frames, crop_size, sample_rate, source,
                       has_audio, split, train/test frame ranges, face_model spec, extra
      coeffs.npy       float32 [N, 257]   per-frame 3DMM coefficients (layout: face/coeffs.py),
                                          fitted in the fixed-crop frame (head motion kept)
      landmarks.npy    float32 [N, 68, 2] 2-D landmarks in fixed-crop pixels (u right, v down)
      fixed.npy        uint8 [N, S, S, 3] crops cut with frame 0's transform: the head moves
                                          inside them; the background source and Stage-2 target
      aligned.npy      uint8 [N, S, S, 3] per-frame 5-point similarity-aligned crops
      transforms.npz   fixed [2, 3] (full frame -> fixed crop, frame 0's), aligned [N, 2, 3]
      audio.wav        16 kHz mono PCM (absent when the source had no audio track)
      source.mp4       optional: the 25-fps source video, for paste-back into the full frame

Frames are stored as raw ``.npy`` (memory-mapped on read: random access for datasets without
decoding, and byte-identical output for identical input). A clip is written into a temporary
sibling directory and renamed into place, so a crash never leaves a half-written clip.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkinghead.audio.io import load_audio as _load_audio  # read_clip has a parameter load_audio
from talkinghead.audio.io import save_wav
from talkinghead.errors import InputError
from talkinghead.face.coeffs import COEFF_DIM
from talkinghead.face.factory import DEFAULT_FACE_MODEL
from talkinghead.stagedir import write_json_atomic

FORMAT_VERSION = 1
TRAIN_FRAMES = (0, 300)  # fine-tuning frames (method.md section 2)
TEST_FRAMES = (300, 400)  # held-out frames
MIN_FRAMES = 150  # the shortest clip (6 s): 113 fine-tuning frames (97 windows of 16) and 37 held out


def default_split(num_frames: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Fine-tuning and held-out frame ranges of a clip of ``num_frames`` frames: the method's
    0-299 / 300-399 for 400 frames or more; a shorter clip holds out (about) its last quarter (an 8 s
    clip of 200 frames: 0-149 / 150-199)."""
    if num_frames >= TEST_FRAMES[1]:
        return TRAIN_FRAMES, TEST_FRAMES
    cut = max(1, min(num_frames - 1, int(round(0.75 * num_frames))))
    return (0, cut), (cut, num_frames)
CORPUS_FILE = "corpus.json"

_REQUIRED = ("meta.json", "coeffs.npy", "landmarks.npy", "fixed.npy", "aligned.npy", "transforms.npz")


@dataclass
class ClipMeta:
    """Contents of ``meta.json``."""

    name: str
    num_frames: int
    fps: int = 25
    crop_size: int = 224
    sample_rate: int = 16000
    source: str = "video"  # "video" | "synthetic"
    has_audio: bool = True
    split: str = "person"  # "train" | "heldout" in a corpus; "person" for a user's own clip
    train_frames: tuple[int, int] = TRAIN_FRAMES
    test_frames: tuple[int, int] = TEST_FRAMES
    face_model: dict = field(default_factory=lambda: dict(DEFAULT_FACE_MODEL))
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["train_frames"], d["test_frames"] = list(self.train_frames), list(self.test_frames)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> "ClipMeta":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(
                f"{path}: clip format version {version!r} is not supported (expected {FORMAT_VERSION}); "
                "re-create the clip with scripts/preprocess.py or scripts/make_synthetic.py"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"{path}: unknown meta keys {sorted(unknown)}; the clip was written by another version")
        try:
            d = dict(d)
            d["train_frames"] = tuple(d.get("train_frames", TRAIN_FRAMES))
            d["test_frames"] = tuple(d.get("test_frames", TEST_FRAMES))
            return cls(**d)
        except TypeError as err:
            raise InputError(f"{path}: malformed meta.json ({err})") from None


@dataclass
class PersonClip:
    """One person's clip, loaded. Frame arrays are read-only memory maps."""

    root: Path
    meta: ClipMeta
    coeffs: np.ndarray  # float32 [N, 257]
    landmarks: np.ndarray  # float32 [N, 68, 2]
    fixed: np.ndarray  # uint8 [N, S, S, 3]
    aligned: np.ndarray  # uint8 [N, S, S, 3]
    fixed_transform: np.ndarray  # float32 [2, 3]
    aligned_transforms: np.ndarray  # float32 [N, 2, 3]
    audio: np.ndarray | None  # float32 [samples] at meta.sample_rate

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def num_frames(self) -> int:
        return self.meta.num_frames

    @property
    def train_slice(self) -> slice:
        return slice(*self.meta.train_frames)

    @property
    def test_slice(self) -> slice:
        return slice(*self.meta.test_frames)

    @property
    def source_video(self) -> Path | None:
        p = self.root / "source.mp4"
        return p if p.is_file() else None

    def audio_for_frames(self, frames: slice) -> np.ndarray:
        """The audio samples spanning video frames ``frames`` (e.g. the held-out 300-399)."""
        if self.audio is None:
            raise InputError(f"{self.root}: this clip has no audio track; Stage 1 needs a video with speech")
        spf = self.meta.sample_rate / self.meta.fps
        start, stop = int(round(frames.start * spf)), int(round(min(frames.stop, self.num_frames) * spf))
        return self.audio[start:stop]


def _check(cond: bool, root: Path, message: str) -> None:
    if not cond:
        raise InputError(f"{root}: {message}")


def write_clip(
    root: str | os.PathLike,
    meta: ClipMeta,
    coeffs: np.ndarray,
    landmarks: np.ndarray,
    fixed: np.ndarray,
    aligned: np.ndarray,
    fixed_transform: np.ndarray,
    aligned_transforms: np.ndarray,
    audio: np.ndarray | None = None,
    source_video: str | os.PathLike | None = None,
    overwrite: bool = True,
) -> Path:
    """Validate and write a clip atomically (temp dir + rename). Returns the clip path."""
    root = Path(root)
    n = len(coeffs)
    meta.num_frames = n
    meta.has_audio = audio is not None
    arrays = dict(
        coeffs=np.ascontiguousarray(coeffs, dtype=np.float32),
        landmarks=np.ascontiguousarray(landmarks, dtype=np.float32),
        fixed=np.ascontiguousarray(fixed, dtype=np.uint8),
        aligned=np.ascontiguousarray(aligned, dtype=np.uint8),
    )
    _validate_arrays(root, meta, arrays, np.asarray(fixed_transform), np.asarray(aligned_transforms))
    if root.exists() and not overwrite:
        raise InputError(f"{root} already exists; pass overwrite=true or choose another out=")
    root.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(root.parent, os.W_OK):
        raise InputError(f"cannot write to {root.parent}: directory is not writable; choose another out=")
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", arr)
        np.savez(
            tmp / "transforms.npz",
            fixed=np.asarray(fixed_transform, np.float32),
            aligned=np.asarray(aligned_transforms, np.float32),
        )
        if audio is not None:
            save_wav(tmp / "audio.wav", np.asarray(audio, np.float32), meta.sample_rate)
        if source_video is not None:
            shutil.copyfile(source_video, tmp / "source.mp4")
        (tmp / "meta.json").write_text(meta.to_json())
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _validate_arrays(root: Path, meta: ClipMeta, a: dict, fixed_t: np.ndarray, aligned_t: np.ndarray) -> None:
    n, s = meta.num_frames, meta.crop_size
    _check(a["coeffs"].shape == (n, COEFF_DIM), root, f"coeffs must be [N, {COEFF_DIM}], got {a['coeffs'].shape}")
    _check(bool(np.isfinite(a["coeffs"]).all()), root, "coeffs contain NaN/inf; re-run preprocessing")
    _check(a["landmarks"].shape == (n, 68, 2), root, f"landmarks must be [N, 68, 2], got {a['landmarks'].shape}")
    for key in ("fixed", "aligned"):
        _check(a[key].shape == (n, s, s, 3), root, f"{key} frames must be [N, {s}, {s}, 3], got {a[key].shape}")
    _check(fixed_t.shape == (2, 3), root, f"transforms.npz:fixed must be [2, 3], got {fixed_t.shape}")
    _check(aligned_t.shape == (n, 2, 3), root, f"transforms.npz:aligned must be [N, 2, 3], got {aligned_t.shape}")
    _check(meta.fps == 25, root, f"fps must be 25, got {meta.fps}")


def read_clip(root: str | os.PathLike, load_audio: bool = True) -> PersonClip:
    """Load and validate a clip; every problem is a one-line :class:`InputError` naming the file."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            f"person clip not found: {root}; create it with scripts/preprocess.py video=FILE out={root} "
            "or scripts/make_synthetic.py"
        )
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    _check(not missing, root, f"incomplete clip, missing {missing}; re-run preprocessing for this person")
    try:
        meta = ClipMeta.from_dict(json.loads((root / "meta.json").read_text()), root / "meta.json")
    except json.JSONDecodeError as err:
        raise InputError(f"{root / 'meta.json'}: not valid JSON ({err.msg}); re-run preprocessing") from None
    arrays = {}
    for key in ("coeffs", "landmarks", "fixed", "aligned"):
        try:
            arrays[key] = np.load(root / f"{key}.npy", mmap_mode="r" if key in ("fixed", "aligned") else None)
        except (ValueError, OSError) as err:
            raise InputError(f"{root / (key + '.npy')}: unreadable ({err}); re-run preprocessing") from None
    try:
        with np.load(root / "transforms.npz") as t:
            fixed_t, aligned_t = t["fixed"], t["aligned"]
    except (ValueError, OSError, KeyError) as err:
        raise InputError(f"{root / 'transforms.npz'}: unreadable ({err}); re-run preprocessing") from None
    _validate_arrays(root, meta, arrays, fixed_t, aligned_t)
    audio = None
    if meta.has_audio and load_audio:
        audio = _load_audio(root / "audio.wav", meta.sample_rate)
    return PersonClip(root, meta, arrays["coeffs"], arrays["landmarks"], arrays["fixed"], arrays["aligned"],
                      fixed_t, aligned_t, audio)


# ---------------------------------------------------------------------------------------------
# Cross-validation folds: in-memory views of one clip with another block of frames held out.


def _fold_blocks(meta: ClipMeta, root: Path) -> tuple[int, int, int]:
    """(span F, block length T, folds K) of a clip's fine-tuning + held-out frames."""
    (train_start, train_stop), (test_start, test_stop) = meta.train_frames, meta.test_frames
    _check(train_start == 0 and train_stop == test_start and test_stop > test_start, root,
           f"cross-validation needs the fine-tuning frames to be 0..h-1 and the held-out ones to follow them, "
           f"got {list(meta.train_frames)} and {list(meta.test_frames)}")
    length = test_stop - test_start
    return test_stop, length, test_stop // length


def num_folds(clip: PersonClip) -> int:
    """How many :func:`held_out_fold` views a clip has: its fine-tuning + held-out span cut into
    blocks of the held-out length (4 for the method's 0-299 / 300-399 and for a short clip's
    first three quarters / last quarter)."""
    return _fold_blocks(clip.meta, clip.root)[2]


def fold_frames(clip: PersonClip, fold: int) -> tuple[int, int]:
    """The clip's frame range ``[start, stop)`` that :func:`held_out_fold` ``fold`` holds out."""
    span, length, folds = _fold_blocks(clip.meta, clip.root)
    if not 0 <= fold < folds:
        raise InputError(f"{clip.root}: fold {fold} does not exist; the clip has {folds} folds (0..{folds - 1})")
    start = span - (folds - fold) * length
    return start, start + length


def held_out_fold(clip: PersonClip, fold: int) -> PersonClip:
    """The clip with another block of frames held out: a cross-validation view, in memory.

    The span ``0 .. test_frames[1]-1`` is cut, from its end, into ``num_folds`` blocks of the
    held-out length ``T`` (frames before the first block, when ``T`` does not divide the span, always
    stay fine-tuning frames). The view's frames are the span with block ``fold`` moved to the end:
    it is the view's held-out range (``test_frames`` = the last ``T`` frames), the other blocks in
    their order are its fine-tuning range. Fold ``num_folds - 1`` is the clip's own split. Every
    per-frame array (coefficients, landmarks, crops, transforms) and the audio are reordered
    together; frames after the span are dropped. The audio is spliced where blocks meet, so the
    audio windows of the few frames next to a seam (280 ms) hear two blocks. For evaluating
    Stage 1 (the real-person benchmark), not for rendering: ``root`` still names the original clip.
    """
    span, length, _ = _fold_blocks(clip.meta, clip.root)
    start, stop = fold_frames(clip, fold)  # frames before the first block are never held out
    order = np.concatenate([np.arange(start), np.arange(stop, span), np.arange(start, stop)])  # the block moves to the end
    audio = clip.audio
    if audio is not None:
        per_frame = clip.meta.sample_rate / clip.meta.fps
        bounds = np.round(np.arange(span + 1) * per_frame).astype(np.int64)  # frame i: samples bounds[i]..bounds[i+1]
        pieces = np.split(order, np.where(np.diff(order) != 1)[0] + 1)  # runs of consecutive frames
        audio = np.concatenate([audio[bounds[run[0]]:bounds[run[-1] + 1]] for run in pieces])
    meta = ClipMeta(**{**asdict(clip.meta), "name": f"{clip.name}_fold{fold}", "num_frames": span,
                       "train_frames": (0, span - length), "test_frames": (span - length, span)})
    return PersonClip(clip.root, meta, np.asarray(clip.coeffs)[order], np.asarray(clip.landmarks)[order],
                      clip.fixed[order], clip.aligned[order], clip.fixed_transform,
                      np.asarray(clip.aligned_transforms)[order], audio)


# ---------------------------------------------------------------------------------------------
# Corpora: a directory of clips with a corpus.json naming each person's split.


def write_corpus_index(root: str | os.PathLike, persons: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    """Write ``corpus.json`` = {format_version, persons: [{name, split}], **info} atomically."""
    return write_json_atomic(Path(root) / CORPUS_FILE, {"format_version": FORMAT_VERSION, "persons": persons, **info})


def list_clips(root: str | os.PathLike, split: str | None = None) -> list[Path]:
    """Clip directories of a corpus (optionally one split: "train" / "heldout"), in index order.
    A directory that is itself a clip is returned as a one-clip corpus."""
    root = Path(root)
    if (root / "meta.json").is_file():
        return [root]
    index = root / CORPUS_FILE
    if not index.is_file():
        raise InputError(
            f"no corpus at {root} ({CORPUS_FILE} missing); build one with "
            f"python scripts/make_synthetic.py out={root}, or point data.root at a directory of clips"
        )
    persons = json.loads(index.read_text())["persons"]
    clips = [root / p["name"] for p in persons if split is None or p["split"] == split]
    if not clips:
        raise InputError(f"{index}: no persons with split={split!r}")
    return clips
