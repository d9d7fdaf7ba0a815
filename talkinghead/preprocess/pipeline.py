"""A person's video -> a person clip (docs/data-format.md): the whole preprocessing pipeline.

:func:`preprocess_video` (and :func:`preprocess_from_config`, behind
``python scripts/preprocess.py video=FILE out=DIR [detector=...]``):

1. **Checks** (before anything is written; ``out`` is not even created): the file exists
   and ffmpeg reads a video stream from it; at 25 fps it has at least ``min_frames`` frames
   (estimated from the duration first, then counted exactly); ``out`` is free unless
   ``overwrite``. A missing audio track is allowed: the clip can then fine-tune the GAN
   (Stage 2) but not Stage 1 (a warning says so).
2. **Landmarks**: the detector runs over the first ``max_frames`` frames at 25 fps (decoded
   as a stream); :func:`~talkinghead.preprocess.landmarks.clean_track` rejects no face, two
   faces and a face lost for long, interpolates short gaps and smooths the landmarks in time.
3. **Alignment**: per-frame 5-point similarity crops (``aligned``), and the *fixed* crop cut
   with one transform for every frame: the 5-point similarity of the median five points over
   the first ``reference_frames`` frames (a robust "frame 0"), so the head moves inside it.
   Both transforms are kept (``transforms.npz``) for paste-back. Frames are decoded a second
   time for the crops, so memory holds landmarks and crops, never the full-size video.
4. **Fitting** of the 257-d coefficients in the fixed crop (:mod:`talkinghead.preprocess.fit`).
5. **Writing** with :func:`talkinghead.data.clip.write_clip` (atomic), with the 16 kHz audio
   trimmed/padded to the frames and, optionally, the 25-fps source video as ``source.mp4``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from omegaconf import OmegaConf

from talkinghead.cli import cfg_get, to_plain
from talkinghead.data.clip import MIN_FRAMES, ClipMeta, default_split, read_clip, write_clip
from talkinghead.errors import ConfigError, InputError, require_file
from talkinghead.face.factory import DEFAULT_FACE_MODEL, face_model_spec, make_face_model
from talkinghead.face.align import alignment_transforms, apply_transform, fixed_transform, warp_crop
from talkinghead.preprocess.fit import FitResult, FittingConfig, config_dict, fit_clips, fit_coefficients
from talkinghead.preprocess.landmarks import LandmarkDetector, RawTrack, TrackOptions, clean_track, detect_video, make_detector
from talkinghead.progress import progress_bar
from talkinghead.render import Renderer, get_renderer
from talkinghead.video.io import VideoWriter, iter_video, probe_media, read_video_audio

log = logging.getLogger(__name__)

FPS = 25
SAMPLE_RATE = 16000
CROP_SIZE = 224


def check_video(video: str | os.PathLike, min_frames: int = MIN_FRAMES):
    """Check that ``video`` is a readable video long enough for ``min_frames`` frames at 25 fps
    (estimated from its duration); returns its :class:`~talkinghead.video.io.MediaInfo`."""
    path = require_file(video, "video", "check the video= path")
    info = probe_media(path)
    if not info.has_video:
        raise InputError(f"{path} has no video stream (audio only?); give a video file with the person's face")
    if info.duration is not None:
        estimated = int(round(info.duration * FPS))
        if estimated < min_frames:
            raise InputError(
                f"{path} is {info.duration:.1f} s long: {estimated} frames at {FPS} fps, but at least {min_frames} "
                f"frames ({min_frames / FPS:.0f} s) are needed; use a longer video"
            )
    return info


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"out={out} exists and is a file; choose a directory path for the clip")
    if out.exists() and not overwrite:
        raise InputError(f"out={out} already exists; pass overwrite=true or choose another out=")
    blocker = next((p for p in out.parents if p.exists()), None)  # the deepest existing ancestor
    if blocker is not None and not blocker.is_dir():  # out=notes.txt/person
        raise InputError(f"out={out}: {blocker} is a file, not a folder; choose another out=")


def _fit_audio(audio: np.ndarray | None, num_frames: int) -> np.ndarray | None:
    """Trim or zero-pad the soundtrack to exactly ``num_frames`` video frames."""
    if audio is None:
        return None
    samples = num_frames * SAMPLE_RATE // FPS
    audio = np.asarray(audio, np.float32)[:samples]
    return np.pad(audio, (0, samples - len(audio))) if len(audio) < samples else audio


def _cut_crops(video: Path, num_frames: int, fixed: np.ndarray, aligned: np.ndarray, source_out: Path | None,
               audio: np.ndarray | None, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Second decoding pass: fixed and aligned crops ``[N, S, S, 3]`` of every frame, and
    (optionally) the 25-fps source video with its audio written to ``source_out``."""
    fixed_crops = np.empty((num_frames, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    aligned_crops = np.empty_like(fixed_crops)
    writer = VideoWriter(source_out, fps=FPS, audio=audio, sample_rate=SAMPLE_RATE) if source_out else None
    count = 0
    try:
        frames = iter_video(video, FPS, num_frames)
        for i, frame in enumerate(progress_bar(frames, total=num_frames, desc="crops", unit="frame", enabled=progress)):
            fixed_crops[i] = warp_crop(frame, fixed, CROP_SIZE)
            aligned_crops[i] = warp_crop(frame, aligned[i], CROP_SIZE)
            if writer is not None:
                writer.write(frame)
            count += 1
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    if count != num_frames:
        raise InputError(f"{video}: decoded {count} frames the second time but {num_frames} the first; the file may be damaged")
    return fixed_crops, aligned_crops


@dataclass
class PreparedVideo:
    """A video after steps 1-3 (checks, landmarks, crops), ready to be fitted and written."""

    video: Path
    out: Path
    name: str
    info: Any  # MediaInfo of the video
    face_model_spec: dict
    track: Any  # the cleaned landmark track (its report goes into meta.json)
    detector_name: str
    fixed_transform: np.ndarray  # [2, 3]
    aligned_transforms: np.ndarray  # [N, 2, 3]
    fixed_crops: np.ndarray  # [N, 224, 224, 3] uint8
    aligned_crops: np.ndarray  # [N, 224, 224, 3] uint8
    landmarks_fixed: np.ndarray  # [N, 68, 2] fixed-crop pixels
    audio: np.ndarray | None  # [N * 640] float32 at 16 kHz, or None (no audio track)
    source: Path | None  # the 25-fps copy of the video (keep_source), in a temporary folder
    reference_frames: int

    @property
    def num_frames(self) -> int:
        return len(self.fixed_crops)


def _check_frame_limits(min_frames: int, max_frames: int) -> tuple[int, int]:
    min_frames, max_frames = int(min_frames), int(max_frames)
    if min_frames < 1 or max_frames < min_frames:
        raise ConfigError(f"need 1 <= min_frames <= max_frames, got min_frames={min_frames}, max_frames={max_frames}")
    return min_frames, max_frames


def prepare_video(
    video: str | os.PathLike,
    out: str | os.PathLike,
    detect: LandmarkDetector,
    face_model_cfg: Mapping[str, Any] | None = None,
    max_frames: int = 400,
    min_frames: int = MIN_FRAMES,
    progress: bool = True,
    *,
    overwrite: bool = False,
    landmarks_cfg: TrackOptions | Mapping[str, Any] | None = None,
    reference_frames: int = 25,
    source_dir: Path | None = None,
    name: str | None = None,
    info: Any = None,
) -> PreparedVideo:
    """Steps 1-3 for one video with the detector ``detect`` (not closed here): checks (nothing is
    written before they pass), landmarks (first decoding pass), alignment and crops (second pass;
    with ``source_dir`` the 25-fps copy of the video is written there as ``source.mp4``). ``info``:
    the video's :func:`check_video` result when the caller has checked it already (not probed
    again). Bad input raises a one-line :class:`InputError`."""
    min_frames, max_frames = _check_frame_limits(min_frames, max_frames)
    out = Path(out).expanduser()
    info = info if info is not None else check_video(video, min_frames)
    _check_out(out, overwrite)
    video = info.path
    track_options = landmarks_cfg if isinstance(landmarks_cfg, TrackOptions) else TrackOptions.from_mapping(landmarks_cfg)
    spec = face_model_spec(face_model_cfg or DEFAULT_FACE_MODEL)
    if not info.has_audio:
        log.warning("%s has no audio track: the clip can fine-tune Stage 2 (the GAN) but not Stage 1 "
                    "(audio to expression/pose)", video)

    raw = detect_video(iter_video(video, FPS, max_frames), detect, progress=progress, total=max_frames)
    num_frames = raw.num_frames
    if num_frames < min_frames:
        raise InputError(
            f"{video} has {num_frames} frames at {FPS} fps ({num_frames / FPS:.1f} s) but at least {min_frames} "
            f"({min_frames / FPS:.0f} s) are needed; use a longer video"
        )
    track = clean_track(raw, str(video), track_options)

    aligned_t = alignment_transforms(track.landmarks, CROP_SIZE)  # [N, 2, 3]
    fixed_t = fixed_transform(track.landmarks, CROP_SIZE, reference_frames)  # [2, 3]
    audio = _fit_audio(read_video_audio(video, SAMPLE_RATE), num_frames) if info.has_audio else None
    source = Path(source_dir) / "source.mp4" if source_dir is not None else None
    fixed_crops, aligned_crops = _cut_crops(video, num_frames, fixed_t, aligned_t, source, audio, progress)
    return PreparedVideo(
        video=video, out=out, name=name or out.name, info=info, face_model_spec=dict(spec), track=track,
        detector_name=getattr(detect, "name", type(detect).__name__), fixed_transform=fixed_t,
        aligned_transforms=aligned_t, fixed_crops=fixed_crops, aligned_crops=aligned_crops,
        landmarks_fixed=apply_transform(track.landmarks, fixed_t), audio=audio, source=source,
        reference_frames=int(reference_frames),
    )


def write_prepared(prepared: PreparedVideo, result: FitResult, fitting: FittingConfig, overwrite: bool = False) -> Path:
    """Step 5: write the person clip of ``prepared`` with its fit ``result`` (atomic)."""
    train_frames, test_frames = default_split(prepared.num_frames)
    track, info = prepared.track, prepared.info
    meta = ClipMeta(
        name=prepared.name,
        num_frames=prepared.num_frames,
        crop_size=CROP_SIZE,
        sample_rate=SAMPLE_RATE,
        source="video",
        split="person",
        train_frames=train_frames,
        test_frames=test_frames,
        face_model=dict(prepared.face_model_spec),
        extra={
            "video": str(prepared.video),
            "video_fps": info.fps,
            "video_size": [info.width, info.height],
            "detector": prepared.detector_name,
            "landmarks": {**track.report, "missing_frames": track.report["missing_frames"][:50]},
            "reference_frames": prepared.reference_frames,
            "fit": result.summary(),
            "fitting": config_dict(fitting),
            "stage1_usable": prepared.audio is not None,
        },
    )
    path = write_clip(prepared.out, meta, result.coeffs, prepared.landmarks_fixed, prepared.fixed_crops,
                      prepared.aligned_crops, prepared.fixed_transform, prepared.aligned_transforms,
                      audio=prepared.audio, source_video=prepared.source, overwrite=overwrite)
    log.info("wrote %s: %d frames, landmark error %.2f px", path, prepared.num_frames,
             float(result.landmark_error_px.mean()))
    return path


def preprocess_video(
    video: str | os.PathLike,
    out: str | os.PathLike,
    detector: Mapping[str, Any] | LandmarkDetector | None = None,
    face_model_cfg: Mapping[str, Any] | None = None,
    fitting_cfg: FittingConfig | Mapping[str, Any] | None = None,
    max_frames: int = 400,
    min_frames: int = MIN_FRAMES,
    device: str = "auto",
    progress: bool = True,
    *,
    overwrite: bool = False,
    renderer: str | Renderer = "torch",
    landmarks_cfg: TrackOptions | Mapping[str, Any] | None = None,
    reference_frames: int = 25,
    keep_source: bool = True,
    name: str | None = None,
) -> Path:
    """Preprocess a person's ``video`` into the person clip ``out``; returns the clip path.

    ``detector``: a :class:`LandmarkDetector`, a ``configs/detector/*.yaml`` node (``_target_``
    + options) or ``None`` (MediaPipe). ``face_model_cfg``: the face
    model spec (``configs/face_model/*.yaml``; recorded in ``meta.face_model``).
    ``fitting_cfg``: ``configs/fitting/default.yaml`` keys. ``landmarks_cfg``: track
    cleaning/smoothing options (:class:`TrackOptions`). Bad input raises a one-line
    :class:`InputError` and leaves ``out`` untouched.
    """
    _check_frame_limits(min_frames, max_frames)
    info = check_video(video, int(min_frames))  # before a detector is built
    _check_out(Path(out).expanduser(), overwrite)
    fitting = fitting_cfg if isinstance(fitting_cfg, FittingConfig) else FittingConfig.from_mapping(fitting_cfg)
    face_model = make_face_model(face_model_spec(face_model_cfg or DEFAULT_FACE_MODEL))  # a missing file: said first
    owns_detector = not isinstance(detector, LandmarkDetector)
    detect = make_detector(detector) if owns_detector else detector
    with tempfile.TemporaryDirectory(prefix="talkinghead_preprocess_") as tmp:
        try:
            prepared = prepare_video(video, out, detect, face_model_cfg, max_frames, min_frames, progress,
                                     overwrite=overwrite, landmarks_cfg=landmarks_cfg,
                                     reference_frames=reference_frames,
                                     source_dir=Path(tmp) if keep_source else None, name=name, info=info)
        finally:
            if owns_detector:
                detect.close()
        result = fit_coefficients(prepared.fixed_crops, prepared.landmarks_fixed, face_model, fitting,
                                  renderer=renderer, device=device, progress=progress)
        return write_prepared(prepared, result, fitting, overwrite)


def fit_prepared(
    prepared: Sequence[PreparedVideo],
    fitting_cfg: FittingConfig | Mapping[str, Any] | None = None,
    device: str = "auto",
    renderer: str | Renderer = "torch",
    progress: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Steps 4-5 for many prepared videos at once: one batched fit (:func:`fit_clips`,
    ``fitting.batch_clips`` clips per optimisation; a clip's result does not depend on its
    companions), then each clip written. All must share one face model spec."""
    fitting = fitting_cfg if isinstance(fitting_cfg, FittingConfig) else FittingConfig.from_mapping(fitting_cfg)
    if not prepared:
        return []
    specs = {json.dumps(p.face_model_spec, sort_keys=True) for p in prepared}
    if len(specs) > 1:
        raise ConfigError(f"fit_prepared: the videos use {len(specs)} face models; fit them in separate calls")
    face_model = make_face_model(prepared[0].face_model_spec)
    results = fit_clips([p.fixed_crops for p in prepared], [p.landmarks_fixed for p in prepared], face_model,
                        fitting, renderer=renderer, device=device, progress=progress)
    return [write_prepared(p, r, fitting, overwrite) for p, r in zip(prepared, results)]


def fit_image(
    image: np.ndarray,
    detector: Mapping[str, Any] | LandmarkDetector | None = None,
    face_model_cfg: Mapping[str, Any] | None = None,
    fitting_cfg: FittingConfig | Mapping[str, Any] | None = None,
    device: str = "auto",
    renderer: str | Renderer = "torch",
    progress: bool = False,
):
    """One photograph (uint8 RGB ``[H, W, 3]``) through the same steps as a video: detect the
    dominant face, align it to the 224 crop, fit. Returns ``(crop [224, 224, 3], landmarks in
    the crop [68, 2], FitResult)``; a still image needs no smoothing and uses
    ``static_image_mode`` for MediaPipe (``detector=None``)."""
    owns_detector = not isinstance(detector, LandmarkDetector)
    if detector is None:  # MediaPipe, in its mode for unrelated images
        detect = make_detector(static_image_mode=True)
    else:
        detect = make_detector(detector) if owns_detector else detector
    try:
        raw: RawTrack = detect_video([np.asarray(image, np.uint8)], detect)
    finally:
        if owns_detector:
            detect.close()
    track = clean_track(raw, "image", TrackOptions(smooth_window=0))
    transform = fixed_transform(track.landmarks, CROP_SIZE, 1)
    crop = warp_crop(image, transform, CROP_SIZE)
    landmarks = apply_transform(track.landmarks, transform)  # [1, 68, 2]
    face_model = make_face_model(face_model_spec(face_model_cfg or DEFAULT_FACE_MODEL))
    result = fit_coefficients(crop[None], landmarks, face_model, fitting_cfg, renderer=renderer, device=device,
                              progress=progress)
    return crop, landmarks[0], result


def preprocess_options(cfg) -> dict[str, Any]:
    """The keyword arguments of :func:`preprocess_video` that ``configs/preprocess.yaml`` and
    ``configs/preprocess_corpus.yaml`` share (face model, fitting, landmark track, frame limits,
    renderer, reference frames, keep_source), read from a composed config."""
    return dict(
        face_model_cfg=to_plain(cfg.face_model),
        fitting_cfg=to_plain(cfg.fitting),
        landmarks_cfg=to_plain(cfg_get(cfg, "landmarks", {})),
        min_frames=int(cfg.min_frames),
        max_frames=int(cfg.max_frames),
        renderer=get_renderer(cfg_get(cfg, "renderer", "torch")),
        reference_frames=int(cfg_get(cfg, "reference_frames", 25)),
        keep_source=bool(cfg_get(cfg, "keep_source", True)),
    )


def preprocess_from_config(cfg) -> Path:
    """``scripts/preprocess.py``: compose-config entry (keys: ``configs/preprocess.yaml``)."""
    for key in ("video", "out"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key}= is required: python scripts/preprocess.py video=FILE out=DIR")
    path = preprocess_video(
        cfg.video,
        cfg.out,
        detector=to_plain(cfg.detector),
        device=str(cfg_get(cfg, "device", "auto")),
        progress=bool(cfg_get(cfg, "progress", True)),
        overwrite=bool(cfg_get(cfg, "overwrite", False)),
        name=cfg_get(cfg, "name"),
        **preprocess_options(cfg),
    )
    clip = read_clip(path, load_audio=False)
    fit = clip.meta.extra.get("fit", {})
    audio_note = "" if clip.meta.has_audio else " (no audio: usable for Stage 2 fine-tuning only)"
    print(f"wrote {path}: {clip.num_frames} frames, landmark error {fit.get('landmark_error_px_mean', float('nan')):.2f} px"
          f"{audio_note}")
    return path
