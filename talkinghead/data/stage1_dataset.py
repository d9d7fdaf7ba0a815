"""Stage-1 training data: fixed-length windows of (MFCC windows, expression + pose targets).

:class:`Stage1WindowDataset` cuts every clip into sequences of ``window`` consecutive video
frames. Item ``i`` is::

    {"windows": float32 [T, 28, 12],   # one MFCC window per frame (talkinghead.audio.features)
     "target":  float32 [T, 70]}       # stage1_target(coeffs): expression 64, angles 3,
                                       # translation 3 with z shifted by -0.5

The MFCC windows of a clip are computed once, from the clip's whole audio track, when the
dataset is built (``frame_windows(audio, num_frames)``); items are then slices of two
contiguous arrays, so ``__getitem__`` costs a copy of a few kilobytes.

Which frames are used: ``frames`` (a slice of video frames, e.g. ``clip.train_slice`` = 0-299
for personal fine-tuning; ``None`` = all frames). Sequences start every ``stride`` frames
inside that range; a range of ``F`` frames gives ``(F - window) // stride + 1`` sequences
(285 for frames 0-299, window 16, stride 1, as in method.md section 4).

``random_offset=True`` (general training on long clips, like LRW's "random 16-frame windows")
shifts each sequence's start by a random number of frames in ``[0, stride)`` drawn from the
global torch RNG; the training loop seeds that RNG per sample from ``(seed, epoch, index)``,
so the crops are reproducible and independent of worker count and resuming. With
``stride=4`` an epoch is a quarter of the stride-1 windows, each a random one of the 4 that
start in its slot, so every frame is still seen while epochs stay short.

``center_expression=True`` makes the expression targets relative to the person: each clip's
:func:`reference_expression` (its mean expression over its reference frames 0-299) is
subtracted from every frame's expression, whatever ``frames`` selects. Why: a person's
habitual expression (their resting mouth, smile, brows) is part of their fitted coefficients
but cannot be heard; on the synthetic corpus these per-person offsets are 76 % of the
expression variance, and a general model fitted to absolute targets spends its capacity
recognising the training speakers by voice. With centred targets the held-out mouth LMD of
the CPU preset fell from about 2.0 to about 1.1 px (README). The network then predicts the
deviation from the person's reference expression, which inference adds back
(:func:`talkinghead.pipeline.stage1.predict_expression_pose`, ``expression_reference``).

``cmvn=True`` standardises each clip's windows with its own cepstral statistics (per-utterance
CMVN, :func:`talkinghead.audio.features.frame_windows`); a model trained so applies the same
at inference (``model.cmvn``). ``features`` (``mfcc``, ``phones`` or ``mfcc+phones``: the
model's ``features``) picks the window columns (:func:`talkinghead.audio.features.frame_windows`).
``augment`` (an :class:`~talkinghead.audio.augment.AugmentConfig`
with ``copies > 0``) adds ``copies`` channel/room versions of every clip's audio
(:func:`~talkinghead.audio.augment.augment_audio`, generator seeded from ``(seed, clip, copy)``:
the same seed gives the same data); a speed-perturbed copy has its targets time-warped (frame
``t'`` of the copy gets the clip's targets at time ``t' * factor``, linearly interpolated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from talkinghead.audio.augment import AugmentConfig, augment_audio
from talkinghead.audio.features import check_features, frame_windows
from talkinghead.data.clip import PersonClip, read_clip
from talkinghead.errors import ConfigError, InputError
from talkinghead.face.coeffs import EXP_DIM, SLICES, stage1_target

__all__ = ["Stage1WindowDataset", "ClipFrames", "load_clip_frames", "augmented_clip_frames", "reference_expression"]


@dataclass
class ClipFrames:
    """The Stage-1 arrays of one clip over a range of frames."""

    name: str
    windows: np.ndarray  # float32 [F, 28, 12]
    target: np.ndarray  # float32 [F, 70]
    first_frame: int  # clip frame index of row 0


def _frame_range(clip: PersonClip, frames: slice | None) -> tuple[int, int]:
    """``frames`` resolved against the clip's length: ``(start, stop)``, clamped to the clip."""
    if frames is None:
        return 0, clip.num_frames
    if frames.step not in (None, 1):
        raise ConfigError(f"Stage-1 frame ranges must be contiguous (step 1), got {frames}")
    start, stop, _ = frames.indices(clip.num_frames)
    return start, max(start, stop)


def reference_expression(clip: PersonClip | str | os.PathLike) -> np.ndarray:
    """The person's reference expression: float32 ``[64]``, the mean expression of the clip's
    reference frames ``clip.train_slice`` (0-299: the frames fine-tuning and the pose modes use;
    all frames of a shorter clip). What a centred Stage-1 model's output is relative to."""
    if not isinstance(clip, PersonClip):
        clip = read_clip(clip, load_audio=False)
    reference = np.asarray(clip.coeffs[clip.train_slice], dtype=np.float64)[:, SLICES["expression"]]  # [M, 64]
    if len(reference) == 0:
        raise InputError(f"{clip.root}: no reference frames ({clip.train_slice}) to take the person's mean expression from")
    return reference.mean(axis=0).astype(np.float32)


def load_clip_frames(clip: PersonClip | str | os.PathLike, frames: slice | None = None,
                     center_expression: bool = False, cmvn: bool = False, features: str = "mfcc") -> ClipFrames:
    """MFCC windows (from the clip's whole audio; CMVN over it when ``cmvn``) and Stage-1
    targets of ``frames`` of a clip (expression relative to :func:`reference_expression` when
    ``center_expression``).

    The windows are computed over the whole audio and then cut, so frame ``t`` gets the same
    window whether or not the range starts at 0 (its 280 ms context is real audio, not padding).
    """
    if not isinstance(clip, PersonClip):
        clip = read_clip(clip)
    if clip.audio is None:
        raise InputError(f"{clip.root}: this clip has no audio track; Stage 1 trains on clips with speech")
    start, stop = _frame_range(clip, frames)
    windows = frame_windows(clip.audio, clip.num_frames, fps=clip.meta.fps, sample_rate=clip.meta.sample_rate,
                            cmvn=cmvn, features=features)
    target = stage1_target(np.asarray(clip.coeffs[start:stop], dtype=np.float32))  # [F, 70]
    if center_expression:
        target[:, :EXP_DIM] -= reference_expression(clip)
    return ClipFrames(clip.name, windows[start:stop], np.ascontiguousarray(target, dtype=np.float32), start)


def augmented_clip_frames(clip: PersonClip | str | os.PathLike, rng: np.random.Generator, augment: AugmentConfig,
                          frames: slice | None = None, center_expression: bool = False,
                          cmvn: bool = False, features: str = "mfcc") -> ClipFrames:
    """Like :func:`load_clip_frames` for one random channel/room version of the clip's audio
    (:func:`~talkinghead.audio.augment.augment_audio`); a speed change time-warps the targets."""
    if not isinstance(clip, PersonClip):
        clip = read_clip(clip)
    if clip.audio is None:
        raise InputError(f"{clip.root}: this clip has no audio track; Stage 1 trains on clips with speech")
    start, stop = _frame_range(clip, frames)
    audio, factor = augment_audio(clip.audio, rng, augment, clip.meta.sample_rate)
    num_frames = int(round(clip.num_frames / factor))
    windows = frame_windows(audio, num_frames, fps=clip.meta.fps, sample_rate=clip.meta.sample_rate, cmvn=cmvn,
                            features=features)
    target = stage1_target(np.asarray(clip.coeffs, dtype=np.float32))  # [N, 70]
    if center_expression:
        target[:, :EXP_DIM] -= reference_expression(clip)
    new_start, new_stop = int(np.ceil(start / factor)), min(int(np.floor((stop - 1) / factor)) + 1, num_frames)
    source_time = np.arange(new_start, new_stop) * factor  # [F'] frame times of the original
    frame = np.clip(np.floor(source_time).astype(np.int64), 0, clip.num_frames - 1)
    upper = np.minimum(frame + 1, clip.num_frames - 1)
    w = (source_time - frame)[:, None].astype(np.float32)
    warped = (1.0 - w) * target[frame] + w * target[upper]  # [F', 70]
    return ClipFrames(clip.name, windows[new_start:new_stop], np.ascontiguousarray(warped, np.float32), new_start)


class Stage1WindowDataset(Dataset):
    """Sequences of ``window`` frames from one or more person clips (see the module docstring).

    Args:
        clips: :class:`PersonClip` objects or clip directories.
        window: frames per sequence (16 in the paper).
        stride: frames between the starts of consecutive sequences of a clip.
        frames: the frame range used in every clip (``None``: all frames); a clip shorter than
            the range contributes what it has.
        random_offset: shift each start by a random ``[0, stride)`` frames (see the module
            docstring); the shifted sequence never runs past the clip's range.
        center_expression: expression targets relative to each clip's reference expression
            (see the module docstring).
        cmvn: per-utterance cepstral mean/variance normalisation of each clip's windows.
        features: the window columns, ``mfcc``, ``phones`` or ``mfcc+phones`` (the model's).
        augment: channel/room augmentation (``AugmentConfig`` or its mapping; ``copies``
            versions per clip, 0 = off), seeded from ``seed``.
    """

    def __init__(
        self,
        clips: Sequence[PersonClip | str | os.PathLike],
        window: int = 16,
        stride: int = 1,
        frames: slice | None = None,
        random_offset: bool = False,
        center_expression: bool = False,
        cmvn: bool = False,
        augment: AugmentConfig | dict | None = None,
        seed: int = 0,
        features: str = "mfcc",
    ):
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"audio2coeff window={window!r} must be a positive number of frames (e.g. 16)")
        if not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"audio2coeff stride={stride!r} must be a positive number of frames (e.g. 1)")
        self.window = window
        self.stride = stride
        self.random_offset = bool(random_offset)
        self.center_expression = bool(center_expression)

        self.cmvn = bool(cmvn)
        self.features = check_features(features)
        augment = AugmentConfig.coerce(augment)
        self.copies = augment.copies
        parts = []
        for index, clip in enumerate(clips):
            clip = clip if isinstance(clip, PersonClip) else read_clip(clip)
            parts.append(load_clip_frames(clip, frames, self.center_expression, self.cmvn, self.features))
            for copy in range(1, augment.copies + 1):
                rng = np.random.default_rng([int(seed), index, copy])
                parts.append(augmented_clip_frames(clip, rng, augment, frames, self.center_expression, self.cmvn,
                                                   self.features))
        usable = [p for p in parts if len(p.target) >= window]
        self.clip_names = list(dict.fromkeys(p.name for p in usable))  # augmented copies share a name
        self.skipped = [p.name for p in parts if len(p.target) < window]
        # All clips' frames end to end; sequence starts index into these arrays.
        if usable:
            self.windows = torch.from_numpy(np.concatenate([p.windows for p in usable]))  # [sum F, 28, 12]
            self.target = torch.from_numpy(np.concatenate([p.target for p in usable]))  # [sum F, 70]
        else:
            self.windows = torch.zeros(0, 28, 12)
            self.target = torch.zeros(0, 70)
        starts, limits, clip_index = [], [], []
        offset = 0
        for i, part in enumerate(usable):
            count = len(part.target)
            local = np.arange(0, count - window + 1, stride)  # [S_i]
            starts.append(offset + local)
            limits.append(np.full(len(local), offset + count - window))  # last valid start
            clip_index.append(np.full(len(local), i))
            offset += count
        cat = lambda xs: torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0, dtype=torch.int64)  # noqa: E731
        self.starts = cat(starts)  # [num_sequences] first frame (global row)
        self.last_start = cat(limits)  # [num_sequences] largest start that still fits the clip
        self.clip_index = cat(clip_index)  # [num_sequences]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[index])
        if self.random_offset and self.stride > 1:
            shift = int(torch.randint(self.stride, ()))
            start = min(start + shift, int(self.last_start[index]))
        stop = start + self.window
        return {"windows": self.windows[start:stop].clone(), "target": self.target[start:stop].clone()}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.clip_names)} clips, {len(self)} sequences of {self.window} frames, "
            f"stride {self.stride}{', random offset' if self.random_offset else ''}"
            f"{', centred expression' if self.center_expression else ''}{', CMVN' if self.cmvn else ''}"
            f"{f', {self.features} windows' if self.features != 'mfcc' else ''}"
            f"{f', {self.copies} augmented copies per clip' if self.copies else ''})"
        )

