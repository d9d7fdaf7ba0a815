"""Stage-2 inference: load a trained refiner and refine blended renders (in one pass or streamed).

The refiner (method.md section 7) turns blended renders -- the 3DMM face rendered from
coefficients and alpha-blended over a background crop -- into photo-real frames. This module is
what inference, evaluation and the Stage-2 dataset share:

* :func:`load_refiner` -- a trained-stage directory (``weights.safetensors`` + ``model.json``,
  see the integration contracts) -> :class:`Refiner` (generator with its identity memory, the
  identity-feature provider, sizes), in eval mode.
* :func:`refine_frames` / :class:`RefinerStream` -- frames ``[N, 3, S, S]`` in [0, 1] -> refined
  frames, one pass or chunk by chunk (identical results). Each output frame ``t`` sees frames
  ``t-2, t-1, t`` (:func:`talkinghead.render.blend.stack_windows`; frames 0 and 1 repeat
  frame 0 for the missing past). The identity feature that drives the generator's AdaIN
  layers is, in order of precedence: the one passed in (e.g. the person's true feature), the
  one recalled from the memory (``use_memory=True``: read with the key of every 25th frame --
  ``identity_every`` -- and of the last frame, linearly interpolated in between, the paper's
  test-time rule), or zeros (``use_memory=False``: the "no memory / no identity" ablation).
  A model trained without identity (``identity_condition: false`` in ``model.json``) always
  gets zeros.

The blended renders themselves come from :func:`talkinghead.render.blend.render_blended`, the
bf16 choice from :func:`talkinghead.devices.resolve_precision`, and the held-out PSNR / SSIM from
:func:`talkinghead.pipeline.evaluate.evaluate_refiner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from talkinghead.stagedir import REFINER, WEIGHTS_FILE, read_model_json
from talkinghead.weights import load_weights
from talkinghead.errors import ConfigError, InputError, TrainingError
from talkinghead.models.features import clip_identity, make_identity_feature
from talkinghead.models.refiner import MemoryAugmentedGenerator, build_generator
from talkinghead.render.blend import render_blended, stack_windows
from talkinghead.devices import autocast, resolve_precision

__all__ = [
    "STAGE_NAME",
    "Refiner",
    "load_refiner",
    "refine_frames",
    "RefinerStream",
]

STAGE_NAME = REFINER
#: How a missing trained refiner is produced (quoted in errors).
TRAIN_COMMANDS = ("python scripts/train.py stage=refiner data.root=DATA out=DIR (general model) or "
                  "python scripts/finetune.py person=PERSON stage=refiner (PERSON/finetuned/refiner)")


# ---------------------------------------------------------------------------------------------
# Rendering the generator's inputs
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The trained refiner
# ---------------------------------------------------------------------------------------------
@dataclass
class Refiner:
    """A trained Stage-2 model ready for inference (eval mode, no gradients needed).

    ``generator`` holds the U-Net, the key network and the identity memory;
    ``identity_feature`` computes a person's identity feature from a clip
    (:meth:`identity_of`); ``image_size`` is the generator's resolution and ``render_size`` the
    resolution its inputs are rendered at before resizing (:func:`render_blended`).
    """

    generator: MemoryAugmentedGenerator
    identity_feature: nn.Module
    image_size: int
    render_size: int
    identity_every: int = 25
    spec: dict = field(default_factory=dict)  # the model.json contents

    @property
    def identity_condition(self) -> bool:
        """False for a model trained with a zero identity feature (ablation): it always gets zeros."""
        return bool(self.spec.get("identity_condition", True))

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def identity_of(self, clip) -> torch.Tensor:
        """The person's true identity feature ``[identity_dim]`` (see :func:`clip_identity`)."""
        return clip_identity(self.identity_feature, clip)

    def render_inputs(self, face_model, renderer, coeffs, backgrounds, batch_size: int = 32) -> torch.Tensor:
        """Blended renders ``[N, 3, S, S]`` in [0, 1] exactly as this model was trained on."""
        return render_blended(face_model, renderer, coeffs, backgrounds, self.image_size, self.render_size, batch_size)


def read_model_spec(directory: str | Path) -> dict:
    """``DIR/model.json`` of a trained refiner, checked; a missing or foreign file raises
    :class:`TrainingError` naming it and the command that creates it."""
    return read_model_json(directory, STAGE_NAME, TRAIN_COMMANDS)


def load_refiner(directory: str | Path, device: str | torch.device = "cpu") -> Refiner:
    """Load ``DIR/weights.safetensors`` + ``DIR/model.json`` (a general or fine-tuned refiner).

    Raises :class:`TrainingError` (one line, naming the directory and the command that creates
    it) when the directory or its files are missing.
    """
    directory = Path(directory).expanduser()
    spec = read_model_spec(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise TrainingError(f"no trained refiner weights at {weights} (training unfinished?); finish it with {TRAIN_COMMANDS}")
    generator = build_generator(spec)
    load_weights({"generator": generator}, weights, strict=True)
    identity_feature = make_identity_feature(spec.get("identity_feature"))
    generator.to(device).eval()
    identity_feature.to(device).eval()
    return Refiner(
        generator=generator,
        identity_feature=identity_feature,
        image_size=int(spec["generator"]["image_size"]),
        render_size=int(spec.get("render_size") or spec["generator"]["image_size"]),
        identity_every=int(spec.get("identity_every", 25)),
        spec=spec,
    )


# ---------------------------------------------------------------------------------------------
# Refining frames (streaming; the one-pass form is a stream with one chunk)
# ---------------------------------------------------------------------------------------------
class RefinerStream:
    """Refine a frame sequence chunk by chunk with bounded memory.

    ``push(frames [n, 3, S, S] in [0, 1])`` returns the refined frames that are ready (in order),
    ``flush()`` the rest once the sequence has ended; concatenated, the outputs equal
    :func:`refine_frames` on the whole sequence. Two input frames of context are carried
    between chunks (the windows of frames t-2, t-1, t). With a fixed identity (given, or zeros
    for the ablation) every pushed frame is returned at once. With the memory, frame ``t``
    needs the recalled features of the keyframes around it (multiples of ``identity_every`` and
    the sequence's last frame), so up to ``identity_every`` frames are held back until the next
    keyframe (or the end) arrives.
    """

    def __init__(self, refiner: Refiner, identity: torch.Tensor | None = None, use_memory: bool = True,
                 batch_size: int = 4, precision: str = "fp32"):
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1 (infer.batch_size)")
        self.refiner = refiner
        self.batch_size = int(batch_size)
        self.precision = resolve_precision(precision, refiner.device)
        self.every = int(refiner.identity_every)
        gen = refiner.generator
        self._device = refiner.device
        self._fixed_identity: torch.Tensor | None = None
        if identity is not None:
            identity = torch.as_tensor(identity, dtype=torch.float32)
            if identity.shape != (gen.generator.identity_dim,):
                raise InputError(f"identity feature must be [{gen.generator.identity_dim}], got {tuple(identity.shape)}; "
                                 "compute it with refiner.identity_of(clip)")
            self._fixed_identity = identity.to(self._device)
        if (identity is None and not use_memory) or not refiner.identity_condition:
            self._fixed_identity = torch.zeros(gen.generator.identity_dim, device=self._device)
        self._buffer = torch.zeros(0, 3, refiner.image_size, refiner.image_size, device=self._device)  # [-1, 1]
        self._buffer_start = 0  # global index of self._buffer[0]
        self._seen = 0  # frames pushed so far
        self._emitted = 0  # frames returned so far
        self._keyframes: dict[int, torch.Tensor] = {}  # global index -> recalled identity [D]
        self._finished = False

    # ----------------------------------------------------------------- public
    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> torch.Tensor:
        """Add frames ``[n, 3, S, S]`` in [0, 1]; return the refined frames now ready ``[m, 3, S, S]``."""
        if self._finished:
            raise InputError("this RefinerStream was flushed; start a new stream for a new sequence")
        size = self.refiner.image_size
        if frames.dim() != 4 or frames.shape[1:] != (3, size, size):
            raise InputError(f"refiner frames must be [N, 3, {size}, {size}] in [0, 1] (resized to the model's "
                             f"image size), got {tuple(frames.shape)}")
        frames = frames.to(self._device, torch.float32) * 2 - 1
        first = self._seen
        self._buffer = torch.cat([self._buffer, frames])
        self._seen += len(frames)
        if self._fixed_identity is None:
            self._read_keyframes(first, self._seen)
            ready = (self._seen - 1) // self.every * self.every  # the last keyframe seen: frames before it are known
        else:
            ready = self._seen
        return self._emit(ready, last=None)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End of the sequence: refine and return every frame still held back."""
        self._finished = True
        if self._seen == 0:
            return self._buffer.new_zeros(0, 3, self.refiner.image_size, self.refiner.image_size)
        last = self._seen - 1
        if self._fixed_identity is None and last not in self._keyframes:
            self._keyframes[last] = self._recall(self._buffer[last - self._buffer_start :][:1])[0]
        return self._emit(self._seen, last=last)

    # ----------------------------------------------------------------- internals
    def _recall(self, frames: torch.Tensor) -> torch.Tensor:
        """Identity features read from the memory for frames ``[b, 3, S, S]`` in [-1, 1]."""
        return self.refiner.generator.read_identity(frames)

    def _read_keyframes(self, first: int, stop: int) -> None:
        """Recall the identity of every keyframe (multiple of ``every``) in global frames [first, stop)."""
        keys = list(range(math.ceil(first / self.every) * self.every, stop, self.every))
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            local = torch.tensor(chunk, device=self._device) - self._buffer_start
            for index, feature in zip(chunk, self._recall(self._buffer[local])):
                self._keyframes[index] = feature

    def _identity_for(self, frames: range, last: int | None) -> torch.Tensor:
        """Per-frame identity ``[len(frames), D]``: fixed, or keyframe features interpolated
        exactly as :func:`talkinghead.models.memory.interpolate_identity`."""
        if self._fixed_identity is not None:
            return self._fixed_identity.expand(len(frames), -1)
        rows = []
        for t in frames:
            left = t // self.every * self.every
            right = left + self.every if last is None else min(left + self.every, last)
            # float32 division, as interpolate_identity does, so both give identical features
            weight = torch.tensor(float(t - left), device=self._device) / float(max(right - left, 1))
            rows.append(torch.lerp(self._keyframes[left], self._keyframes[right], weight))
        return torch.stack(rows)

    def _emit(self, stop: int, last: int | None) -> torch.Tensor:
        """Refine global frames [emitted, stop), then drop what no later window needs."""
        generator = self.refiner.generator
        outputs = []
        for start in range(self._emitted, stop, self.batch_size):
            frames = range(start, min(start + self.batch_size, stop))
            local = torch.arange(frames.start, frames.stop, device=self._device) - self._buffer_start
            # The buffer starts at frame 0 or two frames before the first frame not yet emitted,
            # so clamping inside stack_windows only ever repeats frame 0 (frames 0 and 1).
            windows = stack_windows(self._buffer, local)  # [b, 9, S, S]
            with autocast(self.precision, self._device):
                result = generator.generator(windows, self._identity_for(frames, last))
            outputs.append(((result.image.float() + 1) * 0.5).clamp_(0, 1))
        self._emitted = max(self._emitted, stop)
        keep_from = max(self._emitted - 2, 0)
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        self._keyframes = {k: v for k, v in self._keyframes.items() if k >= self._emitted // self.every * self.every}
        if not outputs:
            return self._buffer.new_zeros(0, 3, self.refiner.image_size, self.refiner.image_size)
        return torch.cat(outputs)


def refine_frames(
    refiner: Refiner,
    blended: torch.Tensor,
    identity: torch.Tensor | None = None,
    batch_size: int = 4,
    use_memory: bool = True,
    precision: str = "fp32",
) -> torch.Tensor:
    """Refine blended renders ``[N, 3, S, S]`` in [0, 1] (already at the model's image size)
    into frames ``[N, 3, S, S]`` in [0, 1] (on the refiner's device).

    ``identity`` ``[D]``: use this feature for every frame. ``None`` with ``use_memory``: recall
    it from the memory (every ``identity_every``-th frame and the last, interpolated); ``None``
    without: zeros (ablation). For long sequences use :class:`RefinerStream` chunk by chunk.
    """
    stream = RefinerStream(refiner, identity=identity, use_memory=use_memory, batch_size=batch_size,
                           precision=precision)
    return torch.cat([stream.push(blended), stream.flush()])
