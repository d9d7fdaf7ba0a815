"""Stage-2 training data: 3-frame windows of blended renders and the real frame they should become.

For frame ``t`` of a person clip an item is (method.md section 7)::

    inputs    float32 [9, S, S] in [-1, 1]  blended renders of frames t-2, t-1, t (channels stacked)
    target    float32 [3, S, S] in [-1, 1]  the real fixed crop of frame t
    identity  float32 [D]                   the clip's identity feature (D = 512)
    coeffs    float32 [257]                 frame t's coefficients

A blended render is the clip's own 3DMM coefficients rendered and alpha-blended over the fixed
crop of the same frame, so render and target are pixel-aligned and differ only inside the face
(:func:`talkinghead.render.blend.render_blended`, the function inference uses too). Renders
are computed once per clip when the dataset is built, in batches, and kept as uint8 at the
model's size; with ``cache_dir`` they are also saved there (keyed by a digest of the clip's
coefficients and crops, the face model, the renderer and the sizes), so a resumed or repeated
run does not render again. Windows at the start of the clip repeat the first rendered frame (frames 0 and 1;
:func:`talkinghead.render.blend.stack_windows`); a frame range starting at 2 or later has
real frames t-2 and t-1 (they are rendered too).

With ``augment=True`` every item is resized to ``round(S * 286 / 256)``, randomly cropped back
to ``S`` and flipped horizontally with probability 0.5 (pix2pix's jitter); the inputs and the
target get the same transform. The randomness comes from torch's global RNG, which the
training loop seeds per sample.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from talkinghead.data.clip import PersonClip, read_clip
from talkinghead.errors import InputError
from talkinghead.face.factory import make_face_model
from talkinghead.models.features import clip_identity, make_identity_feature
from talkinghead.render import get_renderer
from talkinghead.render.blend import render_blended, to_unit

log = logging.getLogger(__name__)

__all__ = ["RefinerDataset", "JITTER_SCALE", "jitter"]

#: pix2pix loads 286 and crops 256: the resize factor of the training jitter.
JITTER_SCALE = 286 / 256


def jitter(images: torch.Tensor) -> torch.Tensor:
    """pix2pix augmentation of one stacked item ``[C, S, S]``: resize to ``round(S * 286/256)``
    (bilinear), crop a random ``S x S`` window, flip left-right with probability 0.5.
    Uses torch's global RNG."""
    size = images.shape[-1]
    load = int(round(size * JITTER_SCALE))
    grown = F.interpolate(images[None], size=(load, load), mode="bilinear", align_corners=False)[0]
    top, left = (int(v) for v in torch.randint(0, load - size + 1, (2,)))
    crop = grown[:, top : top + size, left : left + size]
    if bool(torch.rand(()) < 0.5):
        crop = crop.flip(-1)
    return crop.contiguous()


def _frame_range(frames: slice | None, clip: PersonClip) -> tuple[int, int]:
    """``frames`` (None = all) resolved against the clip: ``(start, stop)`` with ``start < stop``."""
    start, stop, step = (frames or slice(None)).indices(clip.num_frames)
    if step != 1 or start >= stop:
        raise InputError(f"{clip.root}: frame range {frames} selects no frames of this {clip.num_frames}-frame clip "
                         "(or has a step); use a contiguous range such as frames 2-299")
    return start, stop


class RefinerDataset(Dataset):
    """3-frame windows of blended renders with their real frames, over several person clips.

    Args:
        clips: person clips (loaded :class:`PersonClip` or their directories).
        image_size: the model's resolution ``S`` (power of two, e.g. 64 or 256).
        frames: the frames ``t`` to serve from every clip (e.g. ``slice(2, 300)`` for
            fine-tuning); ``None`` = all frames.
        face_model: the morphable model the coefficients belong to; ``None`` builds the one each
            clip's ``meta.face_model`` names.
        renderer: a :class:`talkinghead.render.Renderer`; ``None`` = ``get_renderer("auto")``.
        augment: pix2pix jitter (resize 286/256, random crop, random flip).
        identity_feature: identity provider (``talkinghead.models.features``); ``None`` = the
            offline coefficient feature with its default seed.
        render_size: resolution the faces are rendered at before resizing to ``image_size``
            (``None`` = ``image_size``); use the trained model's value at inference.
        render_batch: frames rendered per call.
        cache_dir: where rendered clips are saved and looked up (``None``: no cache).
    """

    def __init__(
        self,
        clips: Sequence[PersonClip | str | Path],
        image_size: int,
        frames: slice | None = None,
        face_model: nn.Module | None = None,
        renderer=None,
        augment: bool = False,
        identity_feature: nn.Module | None = None,
        render_size: int | None = None,
        render_batch: int = 32,
        cache_dir: str | Path | None = None,
    ):
        if not clips:
            raise InputError("RefinerDataset got no person clips; check data.root (make one with scripts/make_synthetic.py)")
        self.image_size = int(image_size)
        self.augment = bool(augment)
        renderer = renderer if renderer is not None else get_renderer("auto")
        identity_feature = identity_feature if identity_feature is not None else make_identity_feature(None)

        self.names: list[str] = []
        self.inputs: list[torch.Tensor] = []  # per clip uint8 [n_k, 3, S, S]: renders of frames [first_k, stop_k)
        self.targets: list[torch.Tensor] = []  # per clip uint8 [n_k, 3, S, S]: real fixed crops, same frames
        self.coeffs: list[torch.Tensor] = []  # per clip float32 [n_k, 257]
        self.identities: list[torch.Tensor] = []  # per clip float32 [D]
        self.first_rendered: list[int] = []  # global frame index of inputs[k][0]
        self.frame_ranges: list[tuple[int, int]] = []  # served frames [start, stop) per clip
        self._offsets = [0]  # cumulative item counts
        for item in clips:
            clip = item if isinstance(item, PersonClip) else read_clip(item, load_audio=False)
            start, stop = _frame_range(frames, clip)
            first = max(start - 2, 0)
            model = face_model if face_model is not None else make_face_model(clip.meta.face_model)
            render_size = int(render_size or self.image_size)
            render = partial(_render_clip, clip, first, stop, model, renderer, self.image_size, render_size, render_batch)
            if cache_dir is None:
                inputs, targets = render()
            else:
                key = _render_key(clip, first, stop, model, renderer, self.image_size, render_size)
                inputs, targets = _cached(Path(cache_dir) / f"{clip.name}-{key}.npz", render)
            self.names.append(clip.name)
            self.inputs.append(inputs)
            self.targets.append(targets)
            self.coeffs.append(torch.as_tensor(np.asarray(clip.coeffs[first:stop]), dtype=torch.float32))
            self.identities.append(clip_identity(identity_feature, clip).float())
            self.first_rendered.append(first)
            self.frame_ranges.append((start, stop))
            self._offsets.append(self._offsets[-1] + stop - start)

    def __len__(self) -> int:
        return self._offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """Item ``index`` -> ``(clip number, frame t)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"RefinerDataset index {index} out of range [0, {len(self)})")
        clip = bisect.bisect_right(self._offsets, index) - 1
        return clip, self.frame_ranges[clip][0] + index - self._offsets[clip]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip, t = self.locate(index)
        local = t - self.first_rendered[clip]
        window = [max(local - 2, 0), max(local - 1, 0), local]  # frames t-2, t-1, t (repeat the first)
        renders = self.inputs[clip][window].reshape(9, self.image_size, self.image_size)
        stacked = torch.cat([renders, self.targets[clip][local]]).float().div_(127.5).sub_(1.0)  # [12, S, S]
        if self.augment:
            stacked = jitter(stacked)
        return {
            "inputs": stacked[:9],
            "target": stacked[9:],
            "identity": self.identities[clip],
            "coeffs": self.coeffs[clip][local],
        }


def _render_clip(clip: PersonClip, first: int, stop: int, face_model: nn.Module, renderer, image_size: int,
                 render_size: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [first, stop) of a clip: blended renders and real fixed crops, uint8 ``[n, 3, S, S]``."""
    log.info("rendering %d frames of %s at %d px", stop - first, clip.name, image_size)
    blended = render_blended(face_model, renderer, clip.coeffs[first:stop], clip.fixed[first:stop], image_size,
                             render_size, batch_size=batch_size)  # [n, 3, S, S]
    real = to_unit(np.array(clip.fixed[first:stop]), image_size)  # [n, 3, S, S]
    return _to_uint8(blended), _to_uint8(real)


#: Bump when the rendering of the inputs changes (invalidates every render cache).
_RENDER_CACHE_VERSION = 1


def _render_key(clip: PersonClip, first: int, stop: int, face_model: nn.Module, renderer, image_size: int,
                render_size: int) -> str:
    """Digest of everything a clip's cached renders depend on."""
    digest = hashlib.sha1()
    settings = [_RENDER_CACHE_VERSION, first, stop, image_size, render_size, clip.meta.face_model, repr(face_model),
                type(renderer).__name__]
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(clip.coeffs[first:stop], dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(clip.fixed[first:stop]).tobytes())
    return digest.hexdigest()[:16]


def _cached(path: Path, render) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``(inputs, targets)`` from ``path`` or compute them with ``render()`` and save them
    (atomically: a killed run never leaves a partial file)."""
    if path.is_file():
        try:
            with np.load(path) as data:
                return torch.from_numpy(data["inputs"]), torch.from_numpy(data["targets"])
        except (OSError, ValueError, KeyError):
            log.warning("unreadable render cache %s; rendering again", path)
    inputs, targets = render()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, inputs=inputs.numpy(), targets=targets.numpy())
    os.replace(tmp, path)
    return inputs, targets


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [N, 3, S, S] in [0, 1] -> uint8 (rounded)."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
