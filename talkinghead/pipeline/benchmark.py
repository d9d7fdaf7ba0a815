"""The real-person benchmark: the paper's protocol on real videos, one row per video.

    python bench/real.py [videos=DIR_OR_FILES] [general=DIR] [out=DIR] [foreign=WAV] [fresh=true]

For each video (:func:`run_video`): preprocess it into a person clip (cached in ``OUT/<name>``),
fine-tune both stages from the general checkpoints (``GENERAL/audio2coeff``, ``GENERAL/refiner``),
evaluate on the clip's held-out frames (300-399, or the last quarter of a short clip) with the
clip's own audio, render the held-out audio and one foreign speech file to mp4 (the foreign one
also pasted back into the full frame), and write a contact sheet (real held-out frames above the
generated ones). Every step is timed. :func:`cross_speaker_sync` then drives each person's
Stage 1 with the other videos' speech, and :func:`cross_validated_stage1` repeats the Stage-1
protocol with every block of each clip held out in turn (one 100-frame block is a noisy judge). :func:`format_tables` turns the rows into Markdown tables
(per video and the mean) written to ``OUT/real.md`` and ``OUT/real.json``.

The metrics come from :mod:`talkinghead.pipeline.evaluate` (the same functions as
``scripts/evaluate.py``): Stage 1 of the general and the fine-tuned model against the
mean-expression and the per-person ridge baselines (mouth LMD, lip-sync correlation and offset),
HS of the pose modes, and Stage 2 of both syntheses on the true coefficients (the mouth
compositor and the paper's refiner: PSNR/SSIM in the face, sharpness relative to the real
frames).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from talkinghead.audio import save_wav
from talkinghead.data.clip import fold_frames, held_out_fold, num_folds, read_clip
from talkinghead.errors import InputError
from talkinghead.face.factory import make_face_model
from talkinghead.metrics.image import sharpness
from talkinghead.metrics.lipsync import mouth_opening
from talkinghead.pipeline.evaluate import (_bilinear, _plain, evaluate_mouth, evaluate_pose_modes, evaluate_refiner,
                                           evaluate_stage1, held_out_frames, write_json)
from talkinghead.pipeline.finetune import ensure_clip, finetune_person
from talkinghead.pipeline.frames import SourceFrames
from talkinghead.pipeline.infer import InferenceOptions, generate_video, load_person
from talkinghead.pipeline.stage1 import load_audio2coeff
from talkinghead.train.audio2coeff import train_audio2coeff
from talkinghead.render.blend import to_unit
from talkinghead.video import read_video

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def find_videos(videos: str | Path | Sequence[str | Path]) -> list[Path]:
    """Video files from a folder (its videos, sorted), a file, or a list of files/folders."""
    items = [videos] if isinstance(videos, (str, Path)) else list(videos)
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"videos={path}: no such file or folder; give a folder of videos or video files")
    if not found:
        raise InputError(f"videos={videos}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
    return found


class Stopwatch:
    """Wall-clock seconds per named step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start


def _mouth_opening_of_clip(clip, frames: slice) -> np.ndarray:
    return mouth_opening(np.asarray(clip.landmarks[frames]))


def sheet_frames(opening: np.ndarray, count: int = 8) -> np.ndarray:
    """``count`` frame positions for a contact sheet, in time order: the most open and the
    most closed mouth plus evenly spaced frames (so open and closed mouths both show)."""
    n = len(opening)
    if n <= count:
        return np.arange(n)
    picks = {int(np.argmax(opening)), int(np.argmin(opening))}
    order = np.argsort(opening)
    picks |= {int(order[len(order) // 4]), int(order[(3 * len(order)) // 4])}
    for position in np.linspace(0, n - 1, count):
        if len(picks) >= count:
            break
        picks.add(int(round(position)))
    return np.array(sorted(picks)[:count])


def contact_sheet(rows: Sequence[np.ndarray], height: int = 224) -> np.ndarray:
    """Stack image rows (each uint8 ``[k, H, W, 3]``, the same ``k``) into one uint8 picture,
    every image resized to ``height`` px high."""
    lines = []
    for row in rows:
        resized = [cv2.resize(np.asarray(im), (int(round(im.shape[1] * height / im.shape[0])), height),
                              interpolation=cv2.INTER_AREA) for im in row]
        lines.append(np.concatenate(resized, axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0))) for line in lines]
    return np.concatenate(lines, axis=0)


def save_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise InputError(f"could not write {path}; check that the folder is writable")
    return path


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def evaluate_video(person: Path, general: Path, weights: Path, device: str = "cpu", source=None) -> dict:
    """All metrics of one fine-tuned person on their held-out frames (see the module docstring);
    ``source``: the clip's decoded :class:`~talkinghead.pipeline.frames.SourceFrames` (made here if None)."""
    models = load_person(person, weights, device=device, with_audio=True)
    clip = models.clip
    frames = held_out_frames(clip)
    general_stage1 = load_audio2coeff(general / "audio2coeff", device=models.device)
    stage2 = evaluate_refiner(models.refiner, clip, models.face_model, models.renderer, frames=frames, return_frames=True)
    real224 = to_unit(np.array(clip.fixed[frames]))
    source = source or SourceFrames(clip, clip.num_frames)
    real_full = to_unit(source.crops(np.arange(frames.start, frames.stop)))  # the source's resolution
    refined_frames = stage2.pop("refined")
    refined = sharpness(refined_frames)
    stage2["size"] = int(models.refiner.image_size)
    stage2["sharpness_ratio"] = float((refined / sharpness(real_full).clamp_min(1e-6)).median())
    stage2["sharpness_ratio_fixed"] = float((sharpness(_bilinear(refined_frames, 224)) / sharpness(real224).clamp_min(1e-6)).median())
    for key in ("input", "real"):
        stage2.pop(key)
    return {
        "frames": [frames.start, frames.stop],
        "train_frames": [clip.train_slice.start, clip.train_slice.stop],
        "stage1_general": evaluate_stage1(general_stage1, clip, models.face_model, frames),
        "stage1": evaluate_stage1(models.stage1, clip, models.face_model, frames),
        "mouth": _plain(evaluate_mouth(clip, models.face_model, models.renderer, frames, source=source)),
        "refiner": _plain(stage2),
        "pose": evaluate_pose_modes(models.stage1, clip, models.ref_frames, frames, device=models.device),
    }


def run_video(video: Path, out: Path, general: Path, cfg, foreign: Path | None = None, fresh: bool = True,
              device: str = "cpu") -> dict:
    """The whole protocol for one video; returns its row (metrics, timings, written files)."""
    name = video.stem
    person = out / name
    weights = person / "finetuned"
    watch = Stopwatch()
    cached = (person / "meta.json").is_file()
    with watch("preprocess"):
        ensure_clip(person, video, cfg)
    if fresh and weights.exists():
        shutil.rmtree(weights)
    for stage in ("audio2coeff", "refiner"):
        with watch(f"finetune_{stage}"):
            finetune_person(person, cfg, stages=(stage,), general=general, out=weights, progress=False)
    clip = read_clip(person)
    with watch("evaluate"):
        source = SourceFrames(clip, clip.num_frames)  # decoded once: evaluation and the contact sheet
        metrics = evaluate_video(person, general, weights, device=device, source=source)

    frames = slice(*metrics["frames"])
    models = load_person(person, weights, device=device)
    files: dict[str, str] = {}
    renders: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="talkinghead_bench_") as tmp:
        heldout_wav = save_wav(Path(tmp) / f"{name}_heldout.wav", clip.audio_for_frames(frames))
        jobs = [("heldout", heldout_wav, InferenceOptions())]
        if foreign is not None:
            jobs += [("foreign", foreign, InferenceOptions()), ("foreign_pasted", foreign, InferenceOptions(paste_back=True))]
        for label, audio, options in jobs:
            path = out / f"{name}_{label}.mp4"
            with watch(f"render_{label}"):
                result = generate_video(models, audio, path, options)
            renders[label] = {"frames": result.num_frames, "fps": result.frames_per_second,
                              "timings": {k: round(v, 3) for k, v in result.timings.items()}}
            files[label] = str(path)

    # Contact sheet: the real held-out frames above the frames generated from their audio.
    generated = read_video(files["heldout"])  # [n, S, S, 3]
    positions = sheet_frames(_mouth_opening_of_clip(clip, frames))
    real = source.crops(np.arange(frames.start, frames.stop)[positions])
    rows = [real, generated[positions]]
    if foreign is not None:
        pasted = read_video(files["foreign_pasted"])
        rows.append(pasted[np.linspace(0, len(pasted) - 1, min(4, len(pasted))).astype(int)])
    files["contact_sheet"] = str(save_png(out / f"{name}_sheet.png", contact_sheet(rows)))
    return {"video": str(video), "name": name, "cached_preprocess": cached, **metrics, "renders": renders,
            "seconds": {k: round(v, 2) for k, v in watch.seconds.items()}, "files": files}


def cross_speaker_sync(rows: Sequence[Mapping[str, Any]], out: Path, general: Path, device: str = "cpu") -> None:
    """Add ``cross_speaker`` to each row (in place): the general and the row's fine-tuned Stage 1
    (``OUT/<name>/finetuned``) driven by every other row's whole audio, scored against that
    clip's own coefficients (see the module docstring): ``{"general": mean corr, "finetuned":
    mean corr, "pairs": {other: {"general": corr, "finetuned": corr}}}``. Nothing with fewer
    than two videos."""
    if len(rows) < 2:
        return
    clips = {row["name"]: read_clip(out / row["name"]) for row in rows}
    face_models = {name: make_face_model(clip.meta.face_model) for name, clip in clips.items()}
    models = {"general": load_audio2coeff(general / "audio2coeff", device=device)}
    for row in rows:
        models["finetuned"] = load_audio2coeff(out / row["name"] / "finetuned" / "audio2coeff", device=device)
        pairs = {other: {tag: evaluate_stage1(model, clip, face_models[other], slice(0, clip.num_frames),
                                              ridge_lam=None, device=device)["lipsync_corr"]
                         for tag, model in models.items()}
                 for other, clip in clips.items() if other != row["name"]}
        row["cross_speaker"] = {tag: float(np.mean([pair[tag] for pair in pairs.values()])) for tag in models}
        row["cross_speaker"]["pairs"] = pairs


#: Stage-1 figures averaged over the folds by :func:`cross_validated_stage1` (key in the fold -> in the row).
CV_KEYS = {"lmd_mean_expression": ("finetuned", "lmd_mean_expression"), "ridge_lmd": ("finetuned", "ridge_lmd"),
           "general_lmd": ("general", "lmd"), "finetuned_lmd": ("finetuned", "lmd"),
           "ridge_corr": ("finetuned", "ridge_lipsync_corr"), "general_corr": ("general", "lipsync_corr"),
           "finetuned_corr": ("finetuned", "lipsync_corr")}


def cross_validated_stage1(rows: Sequence[Mapping[str, Any]], out: Path, general: Path, cfg, fresh: bool = True,
                           device: str = "cpu") -> None:
    """Add ``stage1_cv`` to each row (in place): the Stage-1 protocol repeated with every block of
    the clip held out in turn (:func:`~talkinghead.data.clip.held_out_fold`: 4 blocks of 100
    frames of 0-399, or of 50 of a short clip's 200), each time fine-tuned from ``general`` on
    the other blocks (the fine-tuning config ``cfg``; models in ``OUT/<name>/cv/fold<k>``) and
    evaluated on the held-out block with its own audio, with both baselines refitted on the
    fold's fine-tuning frames.

    Why: one block of 100 frames (4 s) is a noisy judge. The correlation over it moves by about
    0.1 between fine-tuning seeds, and on the real videos the per-person ridge scored 0.63-0.82
    on 31.mp4's four blocks and -0.2 to 0.7 on the 8 s clip's. The protocol's own split is
    the last fold. ``stage1_cv = {"folds": [{"general": metrics, "finetuned": metrics}, ...],
    **means of CV_KEYS, "finetuned_corr_min", "finetuned_corr_max"}``.
    """
    general_model = load_audio2coeff(general / "audio2coeff", device=device)
    for row in rows:
        start = time.perf_counter()
        clip = read_clip(out / row["name"])
        face_model = make_face_model(clip.meta.face_model)
        cv_dir = out / row["name"] / "cv"
        if fresh and cv_dir.exists():
            shutil.rmtree(cv_dir)
        folds = []
        for fold in range(num_folds(clip)):
            view = held_out_fold(clip, fold)
            model_dir = train_audio2coeff([view], cv_dir / f"fold{fold}" / "audio2coeff", cfg, mode="finetune",
                                          init_dir=general / "audio2coeff")
            model = load_audio2coeff(model_dir, device=device)
            folds.append({"held_out": list(fold_frames(clip, fold)),
                          "general": evaluate_stage1(general_model, view, face_model, view.test_slice,
                                                     ridge_lam=None, device=device),
                          "finetuned": evaluate_stage1(model, view, face_model, view.test_slice, device=device)})
        summary = {key: float(np.mean([f[model][metric] for f in folds])) for key, (model, metric) in CV_KEYS.items()}
        corr = [f["finetuned"]["lipsync_corr"] for f in folds]
        row["stage1_cv"] = {"folds": folds, **summary, "finetuned_corr_min": float(min(corr)),
                            "finetuned_corr_max": float(max(corr))}
        row.setdefault("seconds", {})["cross_validation"] = round(time.perf_counter() - start, 2)


# ----------------------------------------------------------------------------- tables
def _get(row: Mapping[str, Any], path: str) -> Any:
    value: Any = row
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


STAGE1_COLUMNS = [  # (header, path in a row)
    ("LMD mean expr.", "stage1.lmd_mean_expression"),
    ("LMD ridge", "stage1.ridge_lmd"),
    ("LMD general", "stage1_general.lmd"),
    ("LMD fine-tuned", "stage1.lmd"),
    ("corr ridge", "stage1.ridge_lipsync_corr"),
    ("corr general", "stage1_general.lipsync_corr"),
    ("corr fine-tuned", "stage1.lipsync_corr"),
    ("offset general", "stage1_general.lipsync_offset"),
    ("offset fine-tuned", "stage1.lipsync_offset"),
    ("HS still", "pose.still"),
    ("HS predicted", "pose.predicted"),
    ("HS matched", "pose.matched"),
]
STAGE2_COLUMNS = [
    ("mouth size px", "mouth.size"),
    ("mouth PSNR region", "mouth.psnr_region"),
    ("mouth SSIM face", "mouth.ssim_face"),
    ("mouth sharpness", "mouth.sharpness_ratio"),
    ("mouth sharpness vs fixed.npy", "mouth.sharpness_ratio_fixed"),
    ("refiner size px", "refiner.size"),
    ("refiner PSNR face", "refiner.psnr_face"),
    ("refiner SSIM face", "refiner.ssim_face"),
    ("refiner sharpness", "refiner.sharpness_ratio"),
    ("refiner sharpness vs fixed.npy", "refiner.sharpness_ratio_fixed"),
    ("input PSNR face", "refiner.psnr_input_face"),
]
CROSS_COLUMNS = [
    ("corr general", "cross_speaker.general"),
    ("corr fine-tuned", "cross_speaker.finetuned"),
]
CV_COLUMNS = [(header, f"stage1_cv.{key}") for header, key in (
    ("LMD mean expr.", "lmd_mean_expression"), ("LMD ridge", "ridge_lmd"), ("LMD general", "general_lmd"),
    ("LMD fine-tuned", "finetuned_lmd"), ("corr ridge", "ridge_corr"), ("corr general", "general_corr"),
    ("corr fine-tuned", "finetuned_corr"), ("corr fine-tuned min", "finetuned_corr_min"),
    ("corr fine-tuned max", "finetuned_corr_max"))]
TIME_COLUMNS = [
    ("preprocess s", "seconds.preprocess"),
    ("fine-tune Stage 1 s", "seconds.finetune_audio2coeff"),
    ("fine-tune Stage 2 s", "seconds.finetune_refiner"),
    ("evaluate s", "seconds.evaluate"),
    ("render held-out s", "seconds.render_heldout"),
    ("render fps", "renders.heldout.fps"),
    ("render foreign s", "seconds.render_foreign"),
    ("paste-back s", "seconds.render_foreign_pasted"),
    ("cross-validation s", "seconds.cross_validation"),
]


def _digits(path: str) -> int:
    """Decimals of a column: offsets are whole frames (1 decimal for their means), the rest 3."""
    return 1 if path.endswith("offset") else 3


def _table(rows: Sequence[Mapping[str, Any]], columns, title: str) -> str:
    header = "| video | " + " | ".join(h for h, _ in columns) + " |"
    lines = [f"#### {title}", "", header, "|" + " --- |" * (len(columns) + 1)]
    for row in rows:
        lines.append(f"| {row['name']} | " + " | ".join(_cell(_get(row, p), _digits(p)) if p else "-" for _, p in columns) + " |")
    if len(rows) > 1:
        means = []
        for _, path in columns:
            values = [_get(r, path) for r in rows] if path else []
            values = [float(v) for v in values if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)]
            means.append(_cell(float(np.mean(values)), _digits(path)) if values else "-")
        lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def format_tables(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: Stage 1, Stage 2 and timing tables, one row per video plus the mean."""
    if not rows:
        raise InputError("no benchmark rows to format")
    return "\n\n".join([
        _table(rows, STAGE1_COLUMNS, "Stage 1 on the held-out frames (own audio): mouth LMD px at 224, lip-sync correlation, HS (ours)"),
        _table(rows, STAGE2_COLUMNS, "Stage 2 on the held-out frames (true coefficients): mouth synthesis vs the paper's refiner"),
        *([_table(rows, CROSS_COLUMNS, "Stage 1 driven by the other videos' speech (whole clips): lip-sync correlation "
                                        "with their real mouths, mean over the other videos")]
          if any(_get(r, "cross_speaker.general") is not None for r in rows) else []),
        *([_table(rows, CV_COLUMNS, "Stage 1 cross-validated: each block of the clip held out in turn (the protocol's "
                                     "split is one of them), mean over the folds")]
          if any(_get(r, "stage1_cv.finetuned_corr") is not None for r in rows) else []),
        _table(rows, TIME_COLUMNS, "Wall clock per step (this machine)"),
    ]) + "\n"


def write_report(rows: Sequence[Mapping[str, Any]], out: Path) -> tuple[Path, Path]:
    """``OUT/real.json`` (every figure) and ``OUT/real.md`` (the tables), written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_json(out / "real.json", list(rows))
    md_path = out / "real.md"
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(format_tables(rows))
    tmp.replace(md_path)
    return json_path, md_path
