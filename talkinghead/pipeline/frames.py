"""A person's original frames: the full frames of the source video, and their fixed crops at the
source's own resolution.

A clip stores its fixed crops at 224 px (``fixed.npy``). The face in a 720p or 1080p video covers
many more pixels than that; :class:`SourceFrames` decodes the clip's ``source.mp4`` once and cuts
the same fixed crop at up to ``max_size`` px (:func:`high_res_size`), so that outputs can be as
sharp as the video. A synthetic clip has no larger frame: its full frame *is* the 224 fixed crop
(``transforms.fixed`` = identity).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from talkinghead.errors import InputError
from talkinghead.video import invert_affine, iter_video, probe_media

FPS = 25


def scaled_transform(frame_to_crop: np.ndarray, factor: float) -> np.ndarray:
    """The ``[2, 3]`` frame -> crop affine of the same crop sampled ``factor`` times finer
    (OpenCV pixel centres at integers: crop pixel ``x`` covers ``[x - 0.5, x + 0.5]``)."""
    matrix = np.asarray(frame_to_crop, dtype=np.float64) * factor
    matrix[:, 2] += (factor - 1) / 2
    return matrix


def high_res_size(frame_to_crop: np.ndarray, crop_size: int = 224, max_size: int = 512, multiple: int = 32) -> int:
    """Side of the fixed crop at the source's resolution (source pixels per crop pixel times
    ``crop_size``), rounded to ``multiple`` and kept within ``[crop_size, max_size]``."""
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(frame_to_crop, dtype=np.float64)[:, :2]))))  # crop px / frame px
    size = int(round(crop_size / max(scale, 1e-6) / multiple)) * multiple
    return int(min(max(size, crop_size), max(max_size, crop_size)))


class SourceFrames:
    """The first ``stop`` full frames of a clip (decoded once into a disk-backed memory map:
    bounded RAM at any resolution) and their fixed crops at :attr:`crop_size` px.

    ``max_size`` caps the crop side (``None``: the clip's own 224).
    """

    def __init__(self, clip, stop: int, max_size: int | None = 512):
        self.clip = clip
        self.frame_to_crop = np.asarray(clip.fixed_transform, dtype=np.float64)  # [2, 3] at the clip's crop size
        base = int(clip.meta.crop_size)
        self._tmp = None
        video = clip.source_video
        if video is None:
            if clip.meta.source != "synthetic":
                raise InputError(f"{clip.root}: no source.mp4 (needed for paste_back=true and full-resolution faces); "
                                 "re-run preprocessing with keep_source=true, or set paste_back=false synthesis=refiner")
            self._frames = clip.fixed
            self.crop_size = base
        else:
            info = probe_media(video)
            self._tmp = tempfile.TemporaryDirectory(prefix="talkinghead_frames_")
            shape = (stop, int(info.height), int(info.width), 3)
            frames = np.lib.format.open_memmap(Path(self._tmp.name) / "frames.npy", mode="w+", dtype=np.uint8, shape=shape)
            count = 0
            for count, frame in enumerate(iter_video(video, fps=FPS, max_frames=stop), start=1):
                frames[count - 1] = frame
            if count < stop:
                raise InputError(f"{video} has {count} frames, fewer than the clip's {stop} reference frames; re-run preprocessing")
            self._frames = frames
            self.crop_size = base if max_size is None else high_res_size(self.frame_to_crop, base, max_size)
        self.crop_transform = scaled_transform(self.frame_to_crop, self.crop_size / base)  # frame -> crop at crop_size
        self.crop_to_frame = invert_affine(self.crop_transform)  # [2, 3] crop px (crop_size) -> frame px
        self._crops: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> np.ndarray:
        """Full frame ``index``: uint8 ``[H, W, 3]``."""
        return np.asarray(self._frames[index])

    def crops(self, indices) -> np.ndarray:
        """Fixed crops of frames ``indices`` at :attr:`crop_size`: uint8 ``[n, S, S, 3]`` (cached)."""
        out = []
        for index in np.asarray(indices, dtype=np.int64).reshape(-1):  # one cv2.warpAffine per frame
            crop = self._crops.get(int(index))
            if crop is None:
                if self.crop_size == self._frames.shape[1] and self._tmp is None:
                    crop = np.asarray(self._frames[index])  # synthetic: the frame is the crop
                else:
                    crop = cv2.warpAffine(self[int(index)], self.crop_transform, (self.crop_size, self.crop_size),
                                          flags=cv2.INTER_AREA if self.crop_size < 224 else cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REPLICATE)
                self._crops[int(index)] = crop
            out.append(crop)
        return np.stack(out) if out else np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
