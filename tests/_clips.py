"""Builders of the small stand-in clips and corpora several test modules write (imported by the
tests and by tests/conftest.py; the tests folder is on ``sys.path`` under pytest).

A stand-in clip is written with the clip format's own writer (``write_clip``) so it is a valid
person clip; its content is whatever the test needs (random frames, a rendered face, audio whose
loudness drives the jaw), chosen by the module that calls these helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from talkinghead.data.clip import ClipMeta, write_clip, write_corpus_index

EYE = np.eye(2, 3, dtype=np.float32)  # identity 2x3 affine: the crops are the frames


def write_stand_in_clip(path: Path, meta: ClipMeta, coeffs: np.ndarray, frames: np.ndarray,
                        audio: np.ndarray | None = None, landmarks: np.ndarray | None = None) -> Path:
    """A valid clip whose fixed and aligned crops are both ``frames`` [N, S, S, 3] (identity
    transforms), with ``coeffs`` [N, 257], ``landmarks`` [N, 68, 2] (zeros by default) and
    optional 16 kHz ``audio`` [N * 640]."""
    n = len(frames)
    if landmarks is None:
        landmarks = np.zeros((n, 68, 2), np.float32)
    return write_clip(path, meta, coeffs, landmarks, frames, frames, EYE, np.repeat(EYE[None], n, 0), audio)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A loud, amplitude-modulated 16 kHz tone [S] (not silent; speech content is irrelevant)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def random_frame_clip(root: Path, n: int = 12, with_audio: bool = True, seed: int = 0) -> Path:
    """``n`` frames of 224 px uniform noise, zero coefficients, noise audio; train 0-9, test 9-n."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)
    audio = rng.uniform(-0.5, 0.5, n * 640).astype(np.float32) if with_audio else None
    meta = ClipMeta(name=root.name, num_frames=n, source="synthetic", train_frames=(0, 9), test_frames=(9, n))
    return write_stand_in_clip(root, meta, np.zeros((n, 257), np.float32), frames, audio)


def write_tiny_corpus(root: Path, make_clip: Callable[..., Path], train_persons: int, train_frames: int,
                      heldout_frames: int) -> Path:
    """A corpus of ``train_persons`` training persons ``train_{i}`` (seed i) and one held-out
    person ``heldout_0`` (seed 10), each written by ``make_clip(root, name, frames, seed=, split=)``,
    with its index."""
    persons = []
    for i in range(train_persons):
        make_clip(root, f"train_{i}", train_frames, seed=i, split="train")
        persons.append({"name": f"train_{i}", "split": "train"})
    make_clip(root, "heldout_0", heldout_frames, seed=10, split="heldout")
    persons.append({"name": "heldout_0", "split": "heldout"})
    write_corpus_index(root, persons, {"source": "test"})
    return root
