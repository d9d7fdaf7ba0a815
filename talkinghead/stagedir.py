"""What a trained stage's folder holds: the one home of its file names, its done marker and the
atomic JSON writes (both stages, general and fine-tuned runs; ``checkpoints/README.md``).

    DIR/weights.safetensors   inference weights (train/checkpoint.py: export_weights)
    DIR/model.json            everything that rebuilds the model (stage, architecture, features)
    DIR/run.json              Stage 1, written first: the fingerprint of the run its checkpoints belong to
    DIR/done.json             written last: the run finished (its metrics, steps, fingerprint)
    DIR/checkpoints/, DIR/tb/ training state for resume, TensorBoard logs

A fine-tuned Stage 1 (``PERSON/finetuned/audio2coeff``) also holds, when its config asks for them,
``general_weights.safetensors`` (the general model its expression is blended with) and
``person_ridge.npz`` (the person's ridge, its blend and voice; names in
``talkinghead/models/audio2coeff.py``), ``person_ridge_selection/`` (a whole second run: the
fine-tuning on the first five sixths of the frames that judged the ridge's blend) and
``soup/member_1``, ... (whole runs: the other fine-tunings whose weights the soup averages) with
``pose_weights.safetensors`` (the run's own weights before the average, for the head pose).

Training writes these (``talkinghead/train``); fine-tuning, inference and evaluation read them
through :func:`is_done`, :func:`check_trained` and :func:`read_model_json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from talkinghead.errors import InputError, TrainingError

WEIGHTS_FILE = "weights.safetensors"
MODEL_FILE = "model.json"
DONE_FILE = "done.json"
RUN_FILE = "run.json"
AUDIO2COEFF, REFINER = "audio2coeff", "refiner"  # the two stages' folder names


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` through a temporary sibling and ``os.replace``: a
    reader never sees half a file. An unwritable place is a one-line :class:`InputError`."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except OSError as err:
        raise InputError(f"cannot write {path} ({err.strerror}); choose a writable folder") from None
    return path


def is_done(stage_dir: str | os.PathLike) -> bool:
    """Whether ``stage_dir`` holds a finished run (``done.json`` and the exported weights)."""
    stage_dir = Path(stage_dir)
    return (stage_dir / DONE_FILE).is_file() and (stage_dir / WEIGHTS_FILE).is_file()


def check_trained(stage_dir: str | os.PathLike, person: str | os.PathLike | None = None) -> Path:
    """``stage_dir`` if it holds a finished run, else a one-line :class:`TrainingError` naming
    the directory and the command that makes it (fine-tuning for a person's own folder)."""
    stage_dir = Path(stage_dir)
    if is_done(stage_dir):
        return stage_dir
    if person is not None:
        fix = f"fine-tune first: python scripts/finetune.py person={person}"
    else:
        fix = f"train it first: python scripts/train.py stage={stage_dir.name} out={stage_dir}"
    raise TrainingError(f"no trained model in {stage_dir} ({WEIGHTS_FILE}/{DONE_FILE} missing); {fix}")


def read_model_json(stage_dir: str | os.PathLike, stage: str, command: str) -> dict[str, Any]:
    """``DIR/model.json`` of a run of ``stage``, checked: a missing, unreadable or foreign file
    is a one-line :class:`TrainingError` naming the directory and ``command`` (what creates it)."""
    stage_dir = Path(stage_dir).expanduser()
    path = stage_dir / MODEL_FILE
    if not path.is_file():
        raise TrainingError(f"no trained {stage} model in {stage_dir} ({MODEL_FILE} missing); create it with `{command}`")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path} is not valid JSON ({err.msg}); re-create it with `{command}`") from None
    if not isinstance(info, dict) or info.get("stage") != stage:
        found = info.get("stage") if isinstance(info, dict) else None
        raise TrainingError(f"{path} describes stage {found!r}, not {stage!r}; point at a {stage} directory")
    if not (stage_dir / WEIGHTS_FILE).is_file():
        raise TrainingError(f"no trained {stage} model in {stage_dir} ({WEIGHTS_FILE} missing); create it with `{command}`")
    return info
