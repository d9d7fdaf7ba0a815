"""Personal fine-tuning: (preprocess a video into a clip, then) fine-tune Stage 1 and Stage 2
from the general models, as one resumable job.

    python scripts/finetune.py person=DIR [video=FILE] [stage=both|audio2coeff|refiner]

Steps, each skipped when already finished (rerunning the same command resumes the job):

1. ``preprocess``  -- only with ``video=FILE`` and when ``PERSON/meta.json`` does not exist yet:
   :func:`talkinghead.preprocess.pipeline.preprocess_video` writes the person clip.
2. ``audio2coeff`` -- Stage 1 fine-tuned on frames 0-299 from ``GENERAL/audio2coeff`` into
   ``OUT/audio2coeff`` (``OUT`` defaults to ``PERSON/finetuned``).
3. ``refiner``     -- Stage 2 likewise from ``GENERAL/refiner`` into ``OUT/refiner``.

A stage is finished when its directory holds ``done.json`` (written last, atomically, by the
stage's trainer); an interrupted stage resumes from its newest checkpoint. A finished Stage 1 is
done again when its settings (``audio2coeff.finetune``, ``audio2coeff.loss``, ``seed``) or the
general model's content changed since. Delete a stage's directory to fine-tune it again from
scratch. One progress bar follows the job's steps; the
current stage's training bar is shown beneath it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from talkinghead.cli import cfg_get, compose_config
from talkinghead.data.clip import read_clip
from talkinghead.errors import ConfigError, InputError, TrainingError
from talkinghead.preprocess.pipeline import preprocess_from_config
from talkinghead.stagedir import DONE_FILE, MODEL_FILE, is_done
from talkinghead.train.audio2coeff import is_trained, train_audio2coeff
from talkinghead.train.refiner import train_refiner
from talkinghead.video.io import probe_media

log = logging.getLogger(__name__)

STAGES = ("audio2coeff", "refiner")
STAGE_CHOICES = ("both", *STAGES)


def require_general(general: str | os.PathLike, stage: str, data_root: str | None = None) -> Path:
    """``GENERAL/<stage>`` if it is a finished general model, else a one-line
    :class:`TrainingError` with the command that trains it."""
    stage_dir = Path(general) / stage
    if not is_done(stage_dir):
        root = data_root or "data/synthetic"
        raise TrainingError(
            f"no general {stage} model in {stage_dir} (done.json/weights missing); train it first: "
            f"python scripts/train.py stage={stage} data.root={root} out={stage_dir} (or set general=DIR)"
        )
    return stage_dir


def parse_stages(stage: str) -> tuple[str, ...]:
    """``stage`` config value -> the stages to fine-tune."""
    if stage not in STAGE_CHOICES:
        raise ConfigError(f"stage={stage!r} is not a fine-tuning stage; use one of {', '.join(STAGE_CHOICES)}")
    return STAGES if stage == "both" else (stage,)


@dataclass
class FinetuneResult:
    """Where the fine-tuned models are, and which steps ran (vs. were already done)."""

    person: Path
    out: Path
    ran: list[str]
    skipped: list[str]


#: Keys of the fine-tuning config handed to preprocessing (the rest of ``configs/preprocess.yaml``
#: keeps its defaults).
PREPROCESS_KEYS = ("detector", "fitting", "face_model", "renderer", "device", "progress", "seed", "max_frames",
                   "min_frames", "ground_truth_clip", "verbose")


def ensure_clip(person: Path, video: str | os.PathLike | None, cfg) -> Path:
    """The person clip at ``person``; preprocesses ``video`` into it when it does not exist yet
    (:func:`talkinghead.preprocess.pipeline.preprocess_from_config` with ``configs/preprocess.yaml``
    and this job's detector / fitting / face-model / device settings)."""
    if (person / "meta.json").is_file():
        return person
    if video is None:
        raise InputError(f"no person clip at {person} (meta.json missing); pass video=FILE to preprocess a video "
                         f"into it, or point person= at an existing clip")
    pre = compose_config("preprocess", [f"video={video}", f"out={person}"])
    OmegaConf.set_struct(pre, False)
    for key in PREPROCESS_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            pre[key] = value
    OmegaConf.set_struct(pre, True)
    return preprocess_from_config(pre)


def _require_speech(video: str | os.PathLike) -> None:
    """A one-line :class:`InputError` when ``video`` has no audio stream (Stage 1 learns from speech)."""
    if Path(video).is_file() and not probe_media(video).has_audio:
        raise InputError(f"{video} has no audio stream, so Stage 1 cannot be fine-tuned on it; use a video with "
                         "speech, or stage=refiner to fine-tune Stage 2 only")


def _train_stage(stage: str, clip, out_dir: Path, cfg, init_dir: Path) -> Path:
    if stage == "audio2coeff":
        return train_audio2coeff([clip], out_dir, cfg, mode="finetune", init_dir=init_dir)
    return train_refiner([clip], out_dir, cfg, mode="finetune", init_dir=init_dir)


def _stale(stage_dir: Path, clip_dir: Path, cfg, general: str | os.PathLike) -> bool:
    """Whether a finished Stage-1 fine-tuning must be done again: its ``done.json`` was written
    with other settings (``audio2coeff.finetune``, ``audio2coeff.loss``, seed) or from another
    general model than the one in ``general`` now (its content, not its path:
    :func:`~talkinghead.train.audio2coeff.is_trained`). Stage 2 is never stale here."""
    if stage_dir.name != "audio2coeff" or not (Path(general).expanduser() / stage_dir.name / MODEL_FILE).is_file():
        return False  # a missing general model is reported by require_general
    clip = read_clip(clip_dir, load_audio=False)  # its name is part of the run's identity
    return not is_trained(stage_dir, [clip], cfg, mode="finetune", init_dir=Path(general).expanduser() / stage_dir.name)


def finetune_person(
    person: str | os.PathLike,
    cfg,
    video: str | os.PathLike | None = None,
    stages: tuple[str, ...] = STAGES,
    general: str | os.PathLike = "checkpoints/general",
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Run the fine-tuning job for one person (see the module docstring).

    ``cfg`` is the composed config the stage trainers read (``audio2coeff.finetune``,
    ``refiner.finetune``, ``trainer``, ``seed``; ``detector``/``fitting``/``face_model`` for
    preprocessing). Returns where the models went and which steps ran or were skipped.
    """
    person = Path(person).expanduser()
    out = Path(out).expanduser() if out is not None else person / "finetuned"
    needs_clip = not (person / "meta.json").is_file()
    if needs_clip and video is None:
        ensure_clip(person, None, cfg)  # raises: nothing to fine-tune on
    steps = (["preprocess"] if needs_clip else []) + list(stages)
    todo = [s for s in stages if not is_done(out / s) or _stale(out / s, person, cfg, general)]
    # Check what is cheap to check before the long steps: the general models exist.
    data_root = cfg_get(cfg, "data.root")
    general_dirs = {stage: require_general(general, stage, data_root) for stage in todo}
    if needs_clip and "audio2coeff" in todo:
        _require_speech(video)  # before minutes of preprocessing, not after

    ran, skipped = [], []
    bar = tqdm(total=len(steps), desc=f"finetune {person.name}", unit="step", disable=None if progress else True,
               dynamic_ncols=True, position=0, leave=True)
    try:
        if needs_clip:
            bar.set_postfix_str("preprocess")
            ensure_clip(person, video, cfg)
            ran.append("preprocess")
            bar.update(1)
        elif video is not None:
            log.info("%s already holds a clip; not preprocessing %s again (delete it to redo)", person, video)
        clip = read_clip(person)
        try:  # created only now: preprocessing refuses to write into an existing directory
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create {out} ({err.strerror}); choose a writable out= or person=") from None
        for stage in stages:
            bar.set_postfix_str(stage)
            if stage not in todo:
                log.info("%s: already fine-tuned with these settings from this general model (done.json); skipping", out / stage)
                skipped.append(stage)
            else:
                if stage == "audio2coeff" and not clip.meta.has_audio:
                    raise InputError(f"{person}: the clip has no audio, so Stage 1 cannot be fine-tuned; "
                                     "use a video with speech, or stage=refiner")
                _train_stage(stage, clip, out / stage, cfg, general_dirs[stage])
                if not is_done(out / stage):
                    raise TrainingError(f"fine-tuning {stage} finished without writing {out / stage / DONE_FILE}; "
                                        "rerun the same command to resume")
                ran.append(stage)
            bar.update(1)
    finally:
        bar.close()
    return FinetuneResult(person, out, ran, skipped)


def finetune_from_config(cfg) -> FinetuneResult:
    """``scripts/finetune.py``: ``person`` (required), ``video``, ``stage``, ``general``, ``out``."""
    person = cfg_get(cfg, "person")
    if not person:
        raise ConfigError("person= is required: the person clip directory (created from video=FILE if missing)")
    result = finetune_person(
        person,
        cfg,
        video=cfg_get(cfg, "video"),
        stages=parse_stages(str(cfg_get(cfg, "stage", "both"))),
        general=cfg_get(cfg, "general", "checkpoints/general"),
        out=cfg_get(cfg, "out"),
        progress=bool(cfg_get(cfg, "progress", True)),
    )
    done = ", ".join(result.ran) or "nothing (all steps were already done)"
    print(f"next: python scripts/infer.py person={result.person} audio=FILE out=FILE.mp4")
    print(f"fine-tuned {result.person}: ran {done}; models in {result.out}")
    return result
