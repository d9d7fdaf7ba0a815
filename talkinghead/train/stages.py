"""``scripts/train.py``: general training of one stage over a corpus of person clips.

    python scripts/train.py stage=audio2coeff|refiner data.root=DIR out=DIR [experiment=...] [debug=tiny]

The corpus at ``data.root`` is a directory of clips with a ``corpus.json`` naming each
person's split: the ``train`` persons are trained on; the ``heldout`` persons' fine-tuning
frames are the validation set (Stage 1: frames 0-299; Stage 2: ``refiner.train.val_frames``,
250-299); their frames 300-399 stay unseen. Runs the same
under ``torchrun --nproc_per_node=N`` (data parallel; ``trainer.batch_size`` stays global).
"""

from __future__ import annotations

from pathlib import Path

from talkinghead.cli import cfg_get
from talkinghead.data.clip import list_clips
from talkinghead.errors import ConfigError, InputError
from talkinghead.train.audio2coeff import train_audio2coeff
from talkinghead.train.distributed import cleanup, is_main
from talkinghead.train.refiner import train_refiner

__all__ = ["STAGES", "train_from_config"]

STAGES = ("audio2coeff", "refiner")


def _heldout_clips(root) -> list[Path]:
    """The corpus's held-out persons, or none (a single clip or a corpus without them)."""
    if (Path(root) / "meta.json").is_file():
        return []
    try:
        return list_clips(root, "heldout")
    except InputError:
        return []


def train_from_config(cfg) -> Path:
    """Dispatch on ``cfg.stage``; returns the output directory. Unknown stage -> ConfigError."""
    stage = cfg_get(cfg, "stage")
    if stage not in STAGES:
        raise ConfigError(f"unknown stage={stage!r}; use stage=audio2coeff or stage=refiner")
    root = cfg_get(cfg, "data.root")
    if root is None:
        raise ConfigError("data.root is not set; point it at a corpus of person clips (data.root=DIR)")
    out = Path(cfg_get(cfg, "out", f"checkpoints/general/{stage}"))
    clips = list_clips(root, "train")
    try:
        if stage == "audio2coeff":
            written = train_audio2coeff(clips, out, cfg, mode="general", val_clips=_heldout_clips(root))
        else:
            written = train_refiner(clips, out, cfg, mode="general", val_clips=_heldout_clips(root))
        if is_main():
            print(f"wrote {written}: the general {stage} model (weights.safetensors, model.json, done.json; "
                  f"checkpoints in {Path(written) / 'checkpoints'})", flush=True)
        return written
    finally:
        cleanup()
