"""Evaluation of a person's models on their held-out frames (300-399 by default).

    python scripts/evaluate.py person=DIR [weights=DIR] [out=metrics.json]

Three groups of numbers, all on frames the person's fine-tuning never saw:

``stage1``  (:func:`talkinghead.pipeline.stage1` evaluator) Stage 1 driven by the clip's own
            held-out audio: mouth landmark distance ``lmd`` (px at 224, true pose and identity,
            so only the mouth shape differs), lip-sync correlation ``lipsync_corr`` and best
            offset ``lipsync_offset`` (frames), head-pose similarity ``hs`` (our definition,
            :mod:`talkinghead.metrics.pose`) of the smoothed predicted pose, and the baselines
            it reports (``lmd_mean_expression``, ``lmd_loudness`` when available).
``stage2``  (:func:`evaluate_refiner`) the refiner on the clip's own coefficients rendered over the same frames' crops
            (a perfect Stage 1): ``psnr``/``ssim`` of refined frames and ``psnr_input``/
            ``ssim_input`` of the blended render, against the real crops, with the identity
            feature read from the memory (``identity=memory``, the test-time path).
``pose``    HS between the real head motion of the held-out frames and the pose each pose mode
            (``still``, ``predicted``, ``matched``) produces from the held-out audio.

The building blocks (:func:`evaluate_stage1`, :func:`evaluate_stage2`,
:func:`evaluate_pose_modes`) are shared with :mod:`talkinghead.pipeline.tables`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from talkinghead.cli import cfg_get
from talkinghead.data.stage1_dataset import reference_expression
from talkinghead.errors import ConfigError, InputError
from talkinghead.face.coeffs import SLICES, split_coeffs
from talkinghead.metrics.image import masked_psnr, psnr, sharpness, ssim
from talkinghead.metrics.pose import head_pose_similarity
from talkinghead.pipeline.evaluate_stage1 import evaluate_audio2coeff
from talkinghead.pipeline.frames import SourceFrames
from talkinghead.pipeline.infer import load_person
from talkinghead.pipeline.mouth import MouthCompositor
from talkinghead.pipeline.pose import POSE_MODES, PoseControls, eyes_open, resolve_pose
from talkinghead.pipeline.stage1 import predict_expression_pose
from talkinghead.pipeline.stage2 import Refiner, refine_frames
from talkinghead.render import get_renderer
from talkinghead.render.blend import render_blended, to_unit
from talkinghead.stagedir import write_json_atomic

#: Stage-2 identity sources evaluated (see :data:`talkinghead.pipeline.infer.IDENTITY_MODES`).
STAGE2_IDENTITIES = ("memory", "clip", "zero")


def _plain(value: Any) -> Any:
    """Metrics as JSON-friendly Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def held_out_frames(clip, frames: slice | None = None) -> slice:
    """The evaluated frames (default the clip's test frames), checked against the clip length."""
    frames = frames if frames is not None else clip.test_slice
    start, stop, _ = frames.indices(clip.num_frames)
    if stop - start < 8:
        raise InputError(f"{clip.root}: only {max(stop - start, 0)} frames in {frames} to evaluate "
                         f"(the clip has {clip.num_frames}); evaluation needs at least 8 held-out frames")
    return slice(start, stop)


def evaluate_stage1(model, clip, face_model, frames: slice | None = None, **kwargs) -> dict:
    """Stage-1 metrics of ``model`` on ``clip``'s held-out frames (see the module docstring)."""
    return _plain(evaluate_audio2coeff(model, clip, face_model, frames=held_out_frames(clip, frames), **kwargs))


@torch.no_grad()
def evaluate_refiner(
    refiner: Refiner,
    clip,
    face_model: torch.nn.Module,
    renderer,
    frames: slice | None = None,
    use_memory: bool = True,
    identity: torch.Tensor | None = None,
    batch_size: int = 8,
    return_frames: bool = False,
    precision: str = "fp32",
) -> dict:
    """PSNR / SSIM against a clip's real fixed crops (at the model's image size, in [0, 1]).

    The inputs are the clip's own coefficients rendered over the same frames' fixed crops (the
    training condition: a perfect Stage 1); frames ``t-2, t-1`` of the first evaluated frames are
    rendered too, so every window is complete. The identity follows :func:`refine_frames`
    (``identity`` given > memory > zeros). Returns ``psnr``, ``ssim`` (refined vs real),
    ``psnr_input``, ``ssim_input`` (blended render vs real), their ``*_face`` versions restricted
    to the rendered face's bounding box, and ``frames``; with ``return_frames`` also the tensors
    ``input``, ``refined``, ``real`` ``[n, 3, S, S]``.
    """
    frames = frames if frames is not None else clip.test_slice
    start, stop, _ = frames.indices(clip.num_frames)
    if stop - start < 1:
        raise InputError(f"{clip.root}: no frames to evaluate in {frames} (the clip has {clip.num_frames}); "
                         "pass frames inside the clip")
    first = max(start - 2, 0)
    size = refiner.image_size
    rendered = render_blended(face_model, renderer, clip.coeffs[first:stop], clip.fixed[first:stop], size,
                              refiner.render_size, with_alpha=True)  # [m, 4, S, S]
    blended, alpha = rendered[:, :3], rendered[:, 3:]
    refined = refine_frames(refiner, blended, identity=identity, batch_size=batch_size, use_memory=use_memory,
                            precision=precision).cpu()
    skip = start - first
    blended, alpha, refined = blended[skip:], alpha[skip:], refined[skip:]
    real = to_unit(np.array(clip.fixed[start:stop]), size)
    # The face box: rows/columns the rendered face covers in any evaluated frame (+2 px).
    covered = alpha.amax(dim=(0, 1)) > 0.5  # [S, S]
    rows, cols = covered.any(dim=1).nonzero().flatten(), covered.any(dim=0).nonzero().flatten()
    if len(rows) and len(cols):
        r0, r1 = max(int(rows[0]) - 2, 0), min(int(rows[-1]) + 3, size)
        c0, c1 = max(int(cols[0]) - 2, 0), min(int(cols[-1]) + 3, size)
    else:
        r0, r1, c0, c1 = 0, size, 0, size
    box = (slice(None), slice(None), slice(r0, r1), slice(c0, c1))
    result = {
        "psnr": float(psnr(refined, real).mean()),
        "ssim": float(ssim(refined, real).mean()),
        "psnr_input": float(psnr(blended, real).mean()),
        "ssim_input": float(ssim(blended, real).mean()),
        "psnr_face": float(psnr(refined[box], real[box]).mean()),
        "psnr_input_face": float(psnr(blended[box], real[box]).mean()),
        "frames": stop - start,
    }
    if min(r1 - r0, c1 - c0) >= 11:
        result["ssim_face"] = float(ssim(refined[box], real[box]).mean())
        result["ssim_input_face"] = float(ssim(blended[box], real[box]).mean())
    if return_frames:
        result.update(input=blended, refined=refined, real=real)
    return result


def evaluate_stage2(refiner, clip, face_model, renderer, frames: slice | None = None,
                    identity: str = "memory", batch_size: int = 8) -> dict:
    """PSNR/SSIM of ``refiner`` on ``clip``'s held-out frames with the identity feature from
    the memory (``memory``), the person's own feature (``clip``) or zeros (``zero``)."""
    if identity not in STAGE2_IDENTITIES:
        raise ConfigError(f"identity={identity!r}; use one of {', '.join(STAGE2_IDENTITIES)}")
    feature = refiner.identity_of(clip) if identity == "clip" else None
    result = evaluate_refiner(refiner, clip, face_model, renderer, frames=held_out_frames(clip, frames),
                              use_memory=identity == "memory", identity=feature, batch_size=batch_size)
    return _plain(result)


def _bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images resized like the clip's crops are cut (bilinear sampling, no antialiasing)."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def evaluate_mouth(clip, face_model, renderer, frames: slice | None = None, options=None, batch_size: int = 16,
                   return_frames: bool = False, source=None) -> dict:
    """The mouth synthesis (:mod:`talkinghead.pipeline.mouth`) on held-out frames with their true
    coefficients (a perfect Stage 1): every held-out frame is its own reference frame, its lower
    face is made from the donors (the fine-tuning frames only) and composited at the source's
    resolution. Against the real crops at that resolution:

    ``psnr_region``   PSNR inside the synthesised region (weighted by its soft mask);
    ``ssim_face``     SSIM over the box the region covers in any evaluated frame;
    ``sharpness_ratio``  median over frames of :func:`~talkinghead.metrics.image.sharpness` (the
                      Laplacian variance of the central 112 x 112 after an area resize to 224 px) of
                      the output over that of the real crop at the same resolution, resized the same
                      way (1 = as detailed as the video);
    ``sharpness_ratio_fixed``  against the clip's stored 224 crops (``fixed.npy``), the output
                      brought to 224 px the way those crops were cut (bilinear sampling, no
                      antialiasing, which keeps aliased detail);
    ``size``          the output crop side in pixels; ``frames``.
    With ``return_frames`` also ``output``, ``real`` ``[n, 3, S, S]`` and ``region`` ``[n, 1, S, S]``.
    ``source``: the clip's :class:`~talkinghead.pipeline.frames.SourceFrames` if already decoded.
    """
    frames = held_out_frames(clip, frames)
    source = source or SourceFrames(clip, max(frames.stop, clip.train_slice.stop))
    donors = np.arange(clip.train_slice.start, clip.train_slice.stop)
    compositor = MouthCompositor(face_model, renderer, np.asarray(clip.coeffs[donors]), source.crops(donors), options)
    index = np.arange(frames.start, frames.stop)
    coeffs = np.asarray(clip.coeffs[index])  # [n, 257]
    donor_index = compositor.select_donors(coeffs[:, SLICES["expression"]], coeffs[:, SLICES["angles"]])
    outputs, regions, reals = [], [], []
    for start in range(0, len(index), batch_size):
        part = slice(start, start + batch_size)
        real = to_unit(source.crops(index[part]))  # [b, 3, S, S]
        output, region = compositor.compose(coeffs[part], coeffs[part], real, donor_index[part])
        outputs.append(output.cpu()), regions.append(region.cpu()), reals.append(real.cpu())
    output, region, real = torch.cat(outputs), torch.cat(regions), torch.cat(reals)
    covered = region.amax(dim=(0, 1)) > 0.05  # [S, S]
    rows, cols = covered.any(dim=1).nonzero().flatten(), covered.any(dim=0).nonzero().flatten()
    box = (slice(None), slice(None), slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    real224 = to_unit(np.array(clip.fixed[frames]))
    result = {
        "psnr_region": float(masked_psnr(output, real, region).mean()),
        "ssim_face": float(ssim(output[box], real[box]).mean()),
        "sharpness_ratio": float((sharpness(output) / sharpness(real).clamp_min(1e-6)).median()),
        "sharpness_ratio_fixed": float((sharpness(_bilinear(output, 224)) / sharpness(real224).clamp_min(1e-6)).median()),
        "size": int(output.shape[-1]),
        "frames": len(index),
    }
    if return_frames:
        result.update(output=output, real=real, region=region)
    return result


def evaluate_pose_modes(model, clip, ref_frames: slice | None = None, frames: slice | None = None,
                        modes: Sequence[str] = POSE_MODES, controls: PoseControls | None = None,
                        device="cpu") -> dict[str, float]:
    """HS (ours) between the real angles of the held-out frames and each pose mode's angles
    driven by the same frames' audio: ``{mode: hs}`` (``controls``' other settings, default
    configs/pose/default.yaml). Reference frames default to the clip's training frames,
    restricted to those with open eyes (what inference uses)."""
    controls = controls or PoseControls()
    frames = held_out_frames(clip, frames)
    ref_frames = ref_frames if ref_frames is not None else clip.train_slice
    n = frames.stop - frames.start
    _, pred_pose = predict_expression_pose(model, clip.audio_for_frames(frames), num_frames=n, device=device,
                                           expression_reference=reference_expression(clip))
    ref = split_coeffs(np.asarray(clip.coeffs[ref_frames]))
    ref_pose = np.concatenate([ref.angles, ref.translation], axis=1)  # [M, 6]
    real_angles = split_coeffs(np.asarray(clip.coeffs[frames])).angles  # [n, 3]
    usable = eyes_open(np.asarray(clip.landmarks[ref_frames]))
    result = {}
    for mode in modes:
        pose, _ = resolve_pose(pred_pose, ref_pose, dataclasses.replace(controls, mode=mode), usable=usable)
        result[mode] = head_pose_similarity(np.asarray(pose)[:, :3], real_angles)
    return result


def evaluate_person(
    person: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    renderer: str = "torch",
    controls: PoseControls | None = None,
    frames: slice | None = None,
) -> dict:
    """All metrics of a person's (fine-tuned) models on their held-out frames:
    ``{"person", "weights", "frames", "stage1": {...}, "stage2": {...}, "pose": {mode: hs}}``."""
    controls = controls or PoseControls()
    models = load_person(person, weights, device=device, renderer=renderer, with_audio=True)
    clip = models.clip
    frames = held_out_frames(clip, frames)
    return {
        "person": clip.name,
        "weights": str(models.weights),
        "frames": [frames.start, frames.stop],
        "stage1": evaluate_stage1(models.stage1, clip, models.face_model, frames),
        "stage2": evaluate_stage2(models.refiner, clip, models.face_model, models.renderer, frames, "memory"),
        "pose": evaluate_pose_modes(models.stage1, clip, models.ref_frames, frames, controls=controls,
                                    device=models.device),
    }


def format_number(value: Any, digits: int = 3) -> str:
    """A metric for a table cell (``-`` when absent)."""
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def format_person_metrics(result: Mapping[str, Any]) -> str:
    """Markdown summary of :func:`evaluate_person`'s result."""
    s1, s2, pose = result["stage1"], result["stage2"], result["pose"]
    start, stop = result["frames"]
    lines = [
        f"### {result['person']} (frames {start}-{stop - 1}, models {result['weights']})",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| mouth LMD, px at 224 (lower is better) | {format_number(s1.get('lmd'))} |",
        f"| mouth LMD of the mean-expression baseline | {format_number(s1.get('lmd_mean_expression'))} |",
        f"| lip-sync correlation (higher is better) | {format_number(s1.get('lipsync_corr'))} |",
        f"| lip-sync best offset, frames | {format_number(s1.get('lipsync_offset'), 0)} |",
        f"| HS of the predicted pose, ours (higher is better) | {format_number(s1.get('hs'))} |",
        f"| PSNR refined / blended input, dB | {format_number(s2.get('psnr'), 2)} / {format_number(s2.get('psnr_input'), 2)} |",
        f"| SSIM refined / blended input | {format_number(s2.get('ssim'))} / {format_number(s2.get('ssim_input'))} |",
    ]
    for mode, value in pose.items():
        lines.append(f"| HS, pose mode {mode} | {format_number(value)} |")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write metrics ``data`` as JSON atomically (:func:`talkinghead.stagedir.write_json_atomic`)."""
    return write_json_atomic(path, _plain(data))


def evaluate_from_config(cfg) -> dict:
    """``scripts/evaluate.py``: ``person`` (required), ``weights``, ``out``, ``pose.*``."""
    person = cfg_get(cfg, "person")
    if not person:
        raise ConfigError("person= is required: a person clip with fine-tuned models (PERSON/finetuned)")
    controls = PoseControls.from_config(cfg_get(cfg, "pose"))
    result = evaluate_person(person, cfg_get(cfg, "weights"), device=cfg_get(cfg, "device", "auto"),
                             renderer=get_renderer(cfg_get(cfg, "renderer", "torch")), controls=controls)
    print(format_person_metrics(result))
    out = cfg_get(cfg, "out")
    if out:
        print(f"wrote {write_json(out, result)}")
    else:
        print("wrote nothing: the metrics are above (out=FILE.json saves them)")
    return result
