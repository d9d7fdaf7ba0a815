"""Inference: a person's clip + any audio -> a talking-head mp4 (H.264 + AAC, 25 fps).

    python scripts/infer.py person=DIR audio=FILE out=FILE.mp4 [pose.mode=matched|predicted|still]
    python scripts/infer.py manifest=FILE.csv         # columns person,audio,out; models loaded once per person

The path, per method.md sections 3-8::

    audio --MFCC windows--> Stage 1 (LSTM, whole utterance, state carried across chunks)
          --> expression [N, 64] + pose [N, 6] --pose mode--> pose [N, 6] + reference frame [N]
          --> per chunk of ``chunk_frames`` frames:
                coefficients (frame 0's identity/texture/lighting + expression + pose)
                --render RGBA at the refiner's size--> blend over the reference frames' fixed crops
                --Stage 2 streamed (3-frame windows; 2 frames of context carried between chunks)-->
                uint8 frames [--paste back into the full frame--] --> H.264 encoder (streamed)
          --> mux the audio (AAC); the file appears atomically when complete.

Bounded memory for any audio length: Stage 1 runs over the whole audio once (its outputs are
70 floats per frame: 15,000 frames for 10 minutes is 4 MB) because keyframe pose matching needs
the whole pose sequence; everything image-sized lives only for one chunk, and frames go
straight to the encoder. The audio is muxed from the input file itself, not from a copy.

Every user-fixable problem (missing person, no fine-tuned weights, corrupt/silent/empty audio,
an output path that cannot be written) is detected before any heavy work, raises a one-line
:class:`~talkinghead.errors.TalkingHeadError`, and leaves no partial mp4 behind.

Heavy objects (Stage-1 and Stage-2 models, face model, renderer, the clip's frames as memory
maps) live in a :class:`PersonModels`, loaded once per person by :func:`load_person` and reused
for every audio of that person (the manifest path does exactly that). :func:`generate_video` is
a straight line of named steps: load the audio, Stage 1, the pose mode, then one synthesis
(:func:`write_mouth_video` or :func:`write_refined_video`, whose Stage-2 output goes through a
:class:`RefinedFrameSink`) into a streaming :class:`~talkinghead.video.VideoWriter`.
"""

from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from talkinghead.audio import check_not_silent, load_audio
from talkinghead.cli import cfg_get
from talkinghead.data.clip import PersonClip, read_clip
from talkinghead.data.stage1_dataset import reference_expression
from talkinghead.devices import PRECISIONS, resolve_device
from talkinghead.errors import ConfigError, InputError, TalkingHeadError, require_file
from talkinghead.face.coeffs import SLICES, split_coeffs
from talkinghead.face.factory import make_face_model
from talkinghead.instantiate import config_default, to_plain
from talkinghead.pipeline.frames import SourceFrames
from talkinghead.pipeline.mouth import MouthCompositor, MouthOptions, mouth_options
from talkinghead.pipeline.pose import PoseControls, eyes_open, resolve_pose
from talkinghead.pipeline.stage1 import load_audio2coeff, predict_expression_pose
from talkinghead.pipeline.stage2 import Refiner, RefinerStream, load_refiner
from talkinghead.render.blend import render_blended
from talkinghead.render import Renderer, get_renderer
from talkinghead.stagedir import check_trained
from talkinghead.video import VideoWriter, check_output_path, invert_affine, paste_back

FPS = 25
SAMPLE_RATE = 16000
#: Frames of context carried between chunks: Stage 2 sees frames t-2, t-1, t.
CARRY_FRAMES = 2
#: Identity feature sources for Stage 2 at inference (config key ``identity``).
IDENTITY_MODES = ("memory", "clip", "zero")
SYNTHESIS_MODES = ("auto", "mouth", "refiner")
MANIFEST_COLUMNS = ("person", "audio", "out")


# ----------------------------------------------------------------------------- timing
class StageTimer:
    """Seconds spent per named stage, summed over calls (``with timer("render"): ...``): wall
    clock in ``seconds`` and this process's CPU time (all threads) in ``cpu_seconds`` -- the
    latter is what a stage costs even when other programs share the CPU.

    On CUDA the device is synchronised at the end of each timed block, so the time lands in
    the stage that queued the work.
    """

    def __init__(self, device: torch.device | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self._sync = device is not None and device.type == "cuda"

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - start
            self.cpu_seconds[stage] += time.process_time() - cpu_start

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)


# ----------------------------------------------------------------------------- options / results
@dataclass
class InferenceOptions:
    """How to render (config keys of ``configs/infer.yaml``).

    pose: head-pose mode and controls (``pose.*``).
    chunk_frames: frames rendered + refined + encoded at once (bounds memory).
    batch_size: Stage-2 batch.
    render_batch: frames rasterised at once inside a chunk.
    identity: Stage-2 identity feature: ``memory`` (read from the memory per frame, every 25th
        kept and interpolated: the paper's test-time path), ``clip`` (the person's own feature
        from their clip) or ``zero`` (no identity: the ablation).
    paste_back: paste the face crop into the full original frame (the reference frame's).
    out_size: output side in pixels for the crop video (``None``: the refiner's image size);
        ignored with ``paste_back`` (the full frame's size is used).
    precision: Stage-2 arithmetic: ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where the
        hardware runs it natively; :func:`talkinghead.devices.resolve_precision`).
    progress: show a progress bar over frames.
    synthesis: how the face is made: ``mouth`` (the person's real reference frame with the lower
        face warped from their own frames, :mod:`talkinghead.pipeline.mouth`: sharp, at the
        source's resolution; needs ``pose.mode=matched``), ``refiner`` (the paper's Stage-2 GAN
        on the blended 3DMM render) or ``auto`` (``mouth`` in matched mode, else ``refiner``).
    mouth: :class:`~talkinghead.pipeline.mouth.MouthOptions` of the ``mouth`` synthesis.
    """

    pose: PoseControls = field(default_factory=PoseControls)
    chunk_frames: int = config_default("infer.yaml", "chunk_frames")  # defaults: configs/infer.yaml
    batch_size: int = config_default("infer.yaml", "batch_size")
    render_batch: int = config_default("infer.yaml", "render_batch")
    identity: str = config_default("infer.yaml", "identity")
    paste_back: bool = config_default("infer.yaml", "paste_back")
    out_size: int | None = config_default("infer.yaml", "out_size")
    precision: str = "fp32"  # the CLI's default is auto (infer.yaml); a library call stays bit-stable unless asked
    progress: bool = False
    synthesis: str = config_default("infer.yaml", "synthesis")
    mouth: MouthOptions = field(default_factory=MouthOptions)

    def __post_init__(self) -> None:
        for key, least in (("chunk_frames", CARRY_FRAMES + 1), ("batch_size", 1), ("render_batch", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ConfigError(f"{key}={value!r} must be an integer >= {least}")
        if self.identity not in IDENTITY_MODES:
            raise ConfigError(f"identity={self.identity!r} is not an identity mode; use one of {', '.join(IDENTITY_MODES)}")
        if self.out_size is not None and (isinstance(self.out_size, bool) or not isinstance(self.out_size, (int, np.integer))
                                          or self.out_size < 16):
            raise ConfigError(f"out_size={self.out_size!r} must be null or a side length >= 16 pixels")
        if self.synthesis not in SYNTHESIS_MODES:
            raise ConfigError(f"synthesis={self.synthesis!r}; use one of {', '.join(SYNTHESIS_MODES)}")
        if self.synthesis == "mouth" and self.pose.mode != "matched":
            raise ConfigError(f"synthesis=mouth needs pose.mode=matched (got {self.pose.mode!r}): only a matched reference "
                              "frame has the right head pose; use synthesis=refiner or auto for other pose modes")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; use one of {', '.join(PRECISIONS)}")

    @classmethod
    def from_config(cls, cfg) -> "InferenceOptions":
        """From ``configs/infer.yaml``'s keys (``demo.yaml`` has the same); a key the config does
        not set keeps the default above."""
        values = {f.name: to_plain(cfg[f.name]) for f in fields(cls) if f.name in cfg and cfg[f.name] is not None}
        values["pose"] = PoseControls.from_config(values.get("pose"))
        values["mouth"] = mouth_options(values.get("mouth"))
        return cls(**values)

    @property
    def uses_mouth(self) -> bool:
        """Whether frames are made by the mouth compositor (else by the Stage-2 refiner)."""
        return self.synthesis == "mouth" or (self.synthesis == "auto" and self.pose.mode == "matched")


@dataclass
class InferenceResult:
    """What :func:`generate_video` produced."""

    path: Path
    num_frames: int
    audio_seconds: float
    timings: dict[str, float]  # wall seconds per stage
    ref_index: np.ndarray  # [N] clip frame used as pose/background source per output frame
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage (this process)

    @property
    def seconds(self) -> float:
        return float(sum(self.timings.values()))

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / max(self.seconds, 1e-9)


# ----------------------------------------------------------------------------- loading
def finetuned_dir(person: str | os.PathLike) -> Path:
    """Where a person's fine-tuned models live: ``PERSON/finetuned``."""
    return Path(person) / "finetuned"


@dataclass
class PersonModels:
    """Everything inference needs for one person, loaded once (:func:`load_person`).

    ``base_coeffs`` holds frame 0's identity, texture and lighting (expression and pose are
    overwritten per frame); ``ref_frames`` are the clip frames whose poses and fixed crops
    serve as reference (the fine-tuning frames 0-299).
    """

    clip: PersonClip  # frames as read-only memory maps
    stage1: torch.nn.Module
    refiner: Refiner  # generator + memory, identity feature, sizes
    face_model: torch.nn.Module
    renderer: Renderer
    device: torch.device
    weights: Path
    base_coeffs: torch.Tensor  # [257]
    ref_frames: slice
    ref_pose: np.ndarray  # [M, 6] angles + translation of the reference frames
    expression_reference: np.ndarray  # [64] mean expression of the reference frames (Stage 1 adds it)
    ref_usable: np.ndarray | None = None  # [M] bool: reference frames with open eyes (pose.eyes_open); None: all
    full_frames: SourceFrames | None = field(default=None, repr=False)  # decoded on first use
    compositor: MouthCompositor | None = field(default=None, repr=False)  # over the reference frames, made on first use

    @property
    def name(self) -> str:
        return self.clip.name

    @property
    def image_size(self) -> int:
        return int(self.refiner.image_size)

    def clip_identity(self) -> torch.Tensor:
        """The person's own Stage-2 identity feature ``[D]`` (``identity=clip``)."""
        return self.refiner.identity_of(self.clip)


def load_person(
    person: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    renderer: str | Renderer = "torch",
    with_audio: bool = False,
) -> PersonModels:
    """Load a person's clip, their fine-tuned Stage-1/Stage-2 models, face model and renderer.

    ``weights`` is the directory holding ``audio2coeff/`` and ``refiner/`` (default
    ``PERSON/finetuned``). The face model is the one the clip's coefficients belong to
    (``meta.json: face_model``). ``with_audio`` also loads the clip's own soundtrack (for
    evaluation). Raises a one-line error for a missing clip or missing weights.
    """
    person = Path(person)
    clip = read_clip(person, load_audio=with_audio)
    weights = Path(weights) if weights is not None else finetuned_dir(person)
    own = weights == finetuned_dir(person)
    stage1_dir = check_trained(weights / "audio2coeff", person if own else None)
    stage2_dir = check_trained(weights / "refiner", person if own else None)
    device = resolve_device(device)

    stage1 = load_audio2coeff(stage1_dir, device=device)
    refiner = load_refiner(stage2_dir, device=device)
    face_model = make_face_model(clip.meta.face_model).to(device)
    ref_frames = clip.train_slice
    ref_coeffs = np.asarray(clip.coeffs[ref_frames])  # [M, 257]
    if len(ref_coeffs) == 0:
        raise InputError(f"{person}: the clip has no reference frames in {ref_frames}; re-run preprocessing")
    parts = split_coeffs(ref_coeffs)
    ref_pose = np.concatenate([parts.angles, parts.translation], axis=1).astype(np.float32)  # [M, 6]
    return PersonModels(
        clip=clip,
        stage1=stage1,
        refiner=refiner,
        face_model=face_model,
        renderer=get_renderer(renderer),
        device=device,
        weights=weights,
        base_coeffs=torch.as_tensor(np.asarray(clip.coeffs[0]), dtype=torch.float32, device=device),
        ref_frames=ref_frames,
        ref_pose=ref_pose,
        expression_reference=reference_expression(clip),
        ref_usable=eyes_open(np.asarray(clip.landmarks[ref_frames])),
    )


def load_speech(path: str | os.PathLike) -> np.ndarray:
    """Audio file -> 16 kHz mono float32 ``[S]``; refuses missing/corrupt/empty/silent audio."""
    audio = load_audio(path, SAMPLE_RATE)
    check_not_silent(audio, path)
    return audio


# ----------------------------------------------------------------------------- the pipeline
def resolve_motion(person: PersonModels, pred_pose: np.ndarray, controls: PoseControls) -> tuple[np.ndarray, np.ndarray]:
    """Apply the pose mode to Stage 1's pose ``[N, 6]``: ``(pose [N, 6] float32, ref_index [N])``
    with ``ref_index`` absolute clip frame indices (pose/background source per output frame)."""
    pose, ref_index = resolve_pose(pred_pose, person.ref_pose, controls, usable=person.ref_usable)
    return np.asarray(pose, dtype=np.float32), np.asarray(ref_index) + person.ref_frames.start


def predict_motion(person: PersonModels, audio: np.ndarray, controls: PoseControls,
                   chunk_frames: int = 250) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stage 1 over the whole audio, then the pose mode: ``(expression [N, 64], raw predicted
    pose [N, 6], resolved pose [N, 6], ref_index [N])``."""
    expression, pred_pose = predict_expression_pose(person.stage1, audio, chunk_frames=chunk_frames,
                                                    device=person.device,
                                                    expression_reference=person.expression_reference)
    pose, ref_index = resolve_motion(person, pred_pose, controls)
    return expression, pred_pose, pose, ref_index


def frame_coeffs(person: PersonModels, expression: np.ndarray, pose: np.ndarray) -> torch.Tensor:
    """Rendering coefficients ``[n, 257]``: frame 0's identity/texture/lighting, the predicted
    expression ``[n, 64]`` and the resolved pose ``[n, 6]``."""
    n = len(expression)
    coeffs = person.base_coeffs.expand(n, -1).clone()  # [n, 257]
    pose_t = torch.as_tensor(pose, dtype=coeffs.dtype, device=coeffs.device)
    coeffs[:, SLICES["expression"]] = torch.as_tensor(expression, dtype=coeffs.dtype, device=coeffs.device)
    coeffs[:, SLICES["angles"]] = pose_t[:, :3]
    coeffs[:, SLICES["translation"]] = pose_t[:, 3:]
    return coeffs


def render_inputs(person: PersonModels, coeffs: torch.Tensor, ref_index: np.ndarray,
                  render_batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's inputs for ``coeffs [n, 257]`` over the fixed crops of clip frames ``ref_index
    [n]``, rendered exactly as the refiner was trained on
    (:func:`talkinghead.render.blend.render_blended`): ``(blended [n, 3, S, S], alpha
    [n, 1, S, S])`` in [0, 1]."""
    refiner = person.refiner
    backgrounds = person.clip.fixed[np.asarray(ref_index)]  # uint8 [n, 224, 224, 3] (copied from the memory map)
    rendered = render_blended(person.face_model, person.renderer, coeffs, backgrounds, refiner.image_size,
                              refiner.render_size, batch_size=render_batch, with_alpha=True)  # [n, 4, S, S]
    return rendered[:, :3], rendered[:, 3:]


class _PendingFrames:
    """Per-frame data (face mask for paste-back, reference index) of frames pushed into Stage 2
    and not yet returned by it (the memory path holds up to 25 frames back), in order."""

    def __init__(self):
        self._alpha: list[torch.Tensor] = []  # [n, 1, S, S] each; empty when masks are not kept
        self._ref: list[np.ndarray] = []

    def append(self, alpha: torch.Tensor | None, ref_index: np.ndarray) -> None:
        if alpha is not None:
            self._alpha.append(alpha.clone())  # a copy: not a view pinning the whole render batch
        self._ref.append(np.asarray(ref_index))

    def take(self, n: int) -> tuple[torch.Tensor | None, np.ndarray]:
        ref = np.concatenate(self._ref)
        self._ref = [ref[n:]]
        if not self._alpha:
            return None, ref[:n]
        alpha = torch.cat(self._alpha)
        self._alpha = [alpha[n:]]
        return alpha[:n], ref[:n]


def _to_uint8(frames: torch.Tensor, size: int | None = None) -> np.ndarray:
    """``[n, 3, S, S]`` in [0, 1] -> uint8 ``[n, size, size, 3]`` (antialiased resize if needed)."""
    if size is not None and frames.shape[-1] != size:
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < frames.shape[-1])
    return frames.clamp(0, 1).mul(255).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def source_frames(person: PersonModels) -> SourceFrames:
    """The person's reference frames at full size and their full-resolution fixed crops
    (decoded once, on first use)."""
    if person.full_frames is None:
        person.full_frames = SourceFrames(person.clip, person.ref_frames.stop)
    return person.full_frames


def paste_frames(person: PersonModels, refined: torch.Tensor, alpha: torch.Tensor, ref_index: np.ndarray) -> np.ndarray:
    """Paste refined crops ``[n, 3, S, S]`` into the full frames of ``ref_index`` using the face
    mask ``alpha [n, 1, S, S]`` (Poisson blending): uint8 ``[n, H, W, 3]``."""
    full = source_frames(person)
    crop_size = person.clip.meta.crop_size
    crop_to_frame = invert_affine(full.frame_to_crop)  # the clip's own crop size
    crops = _to_uint8(refined, crop_size)  # [n, 224, 224, 3]
    masks = F.interpolate(alpha, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    masks = (masks[:, 0] > 0.5).cpu().numpy()  # [n, 224, 224]
    return np.stack([  # cv2.seamlessClone works on one image at a time
        paste_back(full[int(index)], crop, crop_to_frame, mask=mask)
        for crop, mask, index in zip(crops, masks, ref_index)
    ])


# ----------------------------------------------------------------------------- mouth synthesis
def mouth_compositor(person: PersonModels, options: MouthOptions) -> MouthCompositor:
    """The person's :class:`MouthCompositor` (donors: the reference frames), made once."""
    if person.compositor is None or person.compositor.options != options:
        source = source_frames(person)
        frames = np.arange(person.ref_frames.start, person.ref_frames.stop)
        person.compositor = MouthCompositor(person.face_model, person.renderer, np.asarray(person.clip.coeffs[frames]),
                                            source.crops(frames), options)
    return person.compositor


def compose_mouth(person: PersonModels, compositor: MouthCompositor, expression: np.ndarray, ref_index: np.ndarray,
                  donors: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[n, 3, S, S]`` and regions ``[n, 1, S, S]`` (full-resolution fixed crops, in
    [0, 1]): the reference frames ``ref_index [n]`` saying ``expression [n, 64]``. The head
    pose is the reference frame's own (a compositor cannot move the head: ``pose.amplitude``
    does not apply)."""
    ref_coeffs = np.asarray(person.clip.coeffs[np.asarray(ref_index)])  # [n, 257]
    parts = split_coeffs(ref_coeffs)
    coeffs = frame_coeffs(person, expression, np.concatenate([parts.angles, parts.translation], 1))
    ref_images = torch.as_tensor(source_frames(person).crops(ref_index)).permute(0, 3, 1, 2).float().div_(255.0)
    return compositor.compose(coeffs, ref_coeffs, ref_images, donors)


def paste_regions(person: PersonModels, frames: torch.Tensor, regions: torch.Tensor, ref_index: np.ndarray) -> np.ndarray:
    """Blend composed crops ``[n, 3, S, S]`` into their reference frames' full frames with their
    soft regions ``[n, 1, S, S]`` as alpha: uint8 ``[n, H, W, 3]``. Outside the region the crop
    is the reference frame itself, so there is no seam to hide."""
    source = source_frames(person)
    crops = _to_uint8(frames)
    alphas = regions[:, 0].cpu().numpy()
    return np.stack([paste_back(source[int(index)], crop, source.crop_to_frame, mask=alpha, seamless=False, feather=0)
                     for crop, alpha, index in zip(crops, alphas, ref_index)])


def write_mouth_video(person: PersonModels, writer, expression: np.ndarray, ref_index: np.ndarray,
                      options: InferenceOptions, timer: "StageTimer", bar) -> int:
    """The ``mouth`` synthesis, chunk by chunk into ``writer``; returns the frames written."""
    with timer("render"):
        compositor = mouth_compositor(person, options.mouth)
        ref_angles = split_coeffs(np.asarray(person.clip.coeffs[np.asarray(ref_index)])).angles
        donors = compositor.select_donors(expression, ref_angles)  # [N] rows of the reference frames
    written = 0
    for start in range(0, len(expression), options.chunk_frames):
        chunk = slice(start, min(start + options.chunk_frames, len(expression)))
        with timer("render"):
            frames, regions = compose_mouth(person, compositor, expression[chunk], ref_index[chunk], donors[chunk])
        if options.paste_back:
            with timer("paste_back"):
                images = paste_regions(person, frames, regions, ref_index[chunk])
        else:
            with timer("encode"):
                images = _to_uint8(frames, options.out_size)
        with timer("encode"):
            writer.write(images)
        written += len(images)
        bar.update(len(images))
    return written


class RefinedFrameSink:
    """Where Stage 2's output goes: frames come back from the stream later than they went in
    (the memory path holds up to 25 frames), so the sink keeps each pushed frame's face mask and
    reference index until its refined frame returns, then pastes or resizes it and encodes it.
    Frames 0 and 1 copy frame 2 (method.md section 8)."""

    def __init__(self, person: PersonModels, writer, options: InferenceOptions, timer: StageTimer):
        self.person, self.writer, self.options, self.timer = person, writer, options, timer
        self.pending = _PendingFrames()
        self.out_size = options.out_size or person.image_size
        self.written = 0

    def expect(self, alpha: torch.Tensor | None, ref_index: np.ndarray) -> None:
        """Frames about to be pushed into Stage 2: masks ``[n, 1, S, S]`` (paste-back only) and
        reference indices ``[n]``."""
        self.pending.append(alpha, ref_index)

    def write(self, refined: torch.Tensor) -> None:
        """Encode frames ``[n, 3, S, S]`` Stage 2 has returned (in order)."""
        if len(refined) == 0:
            return
        if self.written == 0 and len(refined) > CARRY_FRAMES:
            refined = refined.clone()
            refined[:CARRY_FRAMES] = refined[CARRY_FRAMES]
        alpha, refs = self.pending.take(len(refined))
        if self.options.paste_back:
            with self.timer("paste_back"):
                frames = paste_frames(self.person, refined, alpha, refs)
        else:
            with self.timer("encode"):
                frames = _to_uint8(refined, self.out_size)
        with self.timer("encode"):
            self.writer.write(frames)
        self.written += len(refined)


def write_refined_video(person: PersonModels, writer, expression: np.ndarray, pose: np.ndarray, ref_index: np.ndarray,
                        options: InferenceOptions, timer: "StageTimer", bar) -> int:
    """The ``refiner`` synthesis (the paper's Stage 2 on the blended 3DMM renders), chunk by
    chunk into ``writer``; returns the frames written. Frames 0 and 1 copy frame 2."""
    identity = person.clip_identity() if options.identity == "clip" else None
    stream = RefinerStream(person.refiner, identity, use_memory=options.identity == "memory",
                           batch_size=options.batch_size, precision=options.precision)
    sink = RefinedFrameSink(person, writer, options, timer)
    for start in range(0, len(expression), options.chunk_frames):
        chunk = slice(start, min(start + options.chunk_frames, len(expression)))
        with timer("render"):
            coeffs = frame_coeffs(person, expression[chunk], pose[chunk])
            blended, alpha = render_inputs(person, coeffs, ref_index[chunk], options.render_batch)
        sink.expect(alpha if options.paste_back else None, ref_index[chunk])
        with timer("stage2"):
            refined = stream.push(blended)
        sink.write(refined)
        bar.update(chunk.stop - chunk.start)
    with timer("stage2"):
        refined = stream.flush()
    sink.write(refined)
    return sink.written


def generate_video(
    person: PersonModels,
    audio_path: str | os.PathLike,
    out: str | os.PathLike,
    options: InferenceOptions | None = None,
    audio: np.ndarray | None = None,
) -> InferenceResult:
    """Render ``person`` saying the audio of ``audio_path`` into ``out`` (mp4, H.264 + AAC).

    ``audio`` may pass the already-loaded 16 kHz samples (else they are loaded and checked
    here). The video has ``round(seconds * 25)`` frames, so its duration matches the audio's
    within half a frame (20 ms); the muxed audio is the input file's, cut/padded to it.
    Returns the frame count and the seconds spent per stage (``audio``, ``stage1``, ``pose``,
    ``render``, ``stage2``, ``encode``, ``paste_back``).
    """
    options = options or InferenceOptions()
    timer = StageTimer(person.device)
    out = check_output_path(out)
    with timer("audio"):
        if audio is None:
            audio = load_speech(audio_path)
    with timer("stage1"):
        expression, pred_pose = predict_expression_pose(person.stage1, audio, chunk_frames=options.chunk_frames,
                                                        device=person.device,
                                                        expression_reference=person.expression_reference)
    with timer("pose"):
        pose, ref_index = resolve_motion(person, pred_pose, options.pose)
    num_frames = len(expression)

    bar = tqdm(total=num_frames, desc=f"infer {person.name}", unit="frame", disable=None if options.progress else True,
               dynamic_ncols=True)
    try:
        with VideoWriter(out, fps=FPS, audio=audio_path, sample_rate=SAMPLE_RATE) as writer:
            if options.uses_mouth:
                written = write_mouth_video(person, writer, expression, ref_index, options, timer, bar)
            else:
                written = write_refined_video(person, writer, expression, pose, ref_index, options, timer, bar)
            with timer("encode"):
                writer.close()
    finally:
        bar.close()
    if written != num_frames:  # a Stage-2 stream that lost frames would desynchronise the audio
        raise RuntimeError(f"wrote {written} frames, expected {num_frames}")
    return InferenceResult(out, num_frames, len(audio) / SAMPLE_RATE, timer.as_dict(), ref_index,
                           dict(timer.cpu_seconds))


# ----------------------------------------------------------------------------- manifest
@dataclass
class ManifestRow:
    line: int
    person: Path
    audio: Path
    out: Path


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a CSV manifest with the header ``person,audio,out`` (extra columns ignored).
    Relative paths are taken relative to the manifest's own directory."""
    path = require_file(path, "manifest", "pass manifest=FILE.csv with columns person,audio,out")
    base = path.parent
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            missing = [c for c in MANIFEST_COLUMNS if c not in header]
            if missing:
                raise InputError(f"manifest {path} lacks column(s) {missing}; its first line must be person,audio,out")
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if not any(row.get(c) for c in MANIFEST_COLUMNS):
                    continue  # blank line
                empty = [c for c in MANIFEST_COLUMNS if not row.get(c)]
                if empty:
                    raise InputError(f"manifest {path} line {line}: empty {empty}; fill in person,audio,out")
                rows.append(ManifestRow(line, *(base / Path(row[c]).expanduser() for c in MANIFEST_COLUMNS)))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"manifest {path} is not a readable CSV ({err}); write it as UTF-8 person,audio,out") from None
    if not rows:
        raise InputError(f"manifest {path} has no rows; add lines person,audio,out after the header")
    return rows


def run_manifest(manifest: str | os.PathLike, options: InferenceOptions, weights=None, device="auto",
                 renderer: str | Renderer = "torch") -> list[InferenceResult]:
    """Batch inference in one process: rows grouped by person (first-appearance order), each
    person's models loaded once. A failing row is reported and skipped; if any failed, an
    :class:`InputError` listing them is raised after the others are done."""
    rows = read_manifest(manifest)
    by_person: dict[Path, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_person[row.person].append(row)
    results, failures = [], []
    for person_dir, person_rows in by_person.items():
        try:
            person = load_person(person_dir, weights, device=device, renderer=renderer)
        except TalkingHeadError as err:
            failures += [(row, err) for row in person_rows]
            print(f"error: manifest line(s) {','.join(str(r.line) for r in person_rows)}: {err}")
            continue
        for row in person_rows:
            try:
                result = generate_video(person, row.audio, row.out, options)
            except TalkingHeadError as err:
                failures.append((row, err))
                print(f"error: manifest line {row.line}: {err}")
                continue
            results.append(result)
            print(f"wrote {result.path} ({result.num_frames} frames, {result.frames_per_second:.1f} frames/s)")
    if failures:
        first_row, first_err = failures[0]
        raise InputError(f"{len(failures)} of {len(rows)} manifest rows failed (first: line {first_row.line}: {first_err})")
    return results


# ----------------------------------------------------------------------------- entry point
def _describe(result: InferenceResult) -> str:
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(result.timings.items(), key=lambda kv: -kv[1]))
    return (f"wrote {result.path}: {result.num_frames} frames ({result.audio_seconds:.2f} s of audio), "
            f"{result.frames_per_second:.1f} frames/s end to end [{parts}]")


def infer_from_config(cfg) -> list[InferenceResult]:
    """``scripts/infer.py``: one person/audio/out, or a ``manifest`` of them."""
    options = InferenceOptions.from_config(cfg)
    device = cfg_get(cfg, "device", "auto")
    renderer = get_renderer(cfg_get(cfg, "renderer", "torch"))
    weights = cfg_get(cfg, "weights", None)
    manifest = cfg_get(cfg, "manifest", None)
    if manifest:
        return run_manifest(manifest, options, weights, device=device, renderer=renderer)

    values = {key: cfg_get(cfg, key, None) for key in MANIFEST_COLUMNS}
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise ConfigError(f"missing {', '.join(k + '=' for k in missing)}; usage: python scripts/infer.py "
                          "person=DIR audio=FILE out=FILE.mp4 (or manifest=FILE.csv)")
    out = check_output_path(values["out"])  # cheap checks first: no model loading for a bad path
    audio = load_speech(values["audio"])
    person = load_person(values["person"], weights, device=device, renderer=renderer)
    result = generate_video(person, values["audio"], out, options, audio=audio)
    print(_describe(result))
    return [result]
