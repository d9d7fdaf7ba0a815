"""Stage-1 training: the audio -> expression + pose LSTM, general and personal.

:class:`Audio2CoeffTask` is the :class:`~talkinghead.train.loop.TrainTask` of the shared loop:
one model (``"audio2coeff"``), Adam with betas (0.5, 0.999), the loss of
:func:`talkinghead.models.audio2coeff.stage1_loss` (method.md section 4).

:func:`train_audio2coeff` is the whole job for one output directory::

    OUT/weights.safetensors   inference weights (export_weights)
    OUT/model.json            constructor kwargs + stage + mode + what the run was trained on
    OUT/checkpoints/          resumable state (the loop's)
    OUT/tb/                   TensorBoard
    OUT/run.json              written first: the fingerprint of the run the checkpoints belong to
    OUT/done.json             written last, atomically: final metrics + the run's fingerprint

Modes (config ``audio2coeff.train`` vs ``audio2coeff.finetune``):

``general``
    All frames of the training persons (``frames: null``), windows every ``stride`` frames
    with a random offset; validation on held-out persons' frames ``val_frames`` (0-299: their
    300-399 stay unseen for evaluation). The architecture comes from ``audio2coeff.model``.
``finetune``
    One person's frames 0-299 as 16-frame windows with stride 1 (285 windows), starting from
    the general run in ``init_dir`` whose ``model.json`` fixes the architecture (the config's
    ``audio2coeff.model`` is ignored). The recipe's levers (``audio2coeff.finetune``):
    ``train_layers`` (the parts that learn; the others keep their weights and BatchNorm
    statistics), ``anchor_weight`` (L2-SP: ``w * sum (p - p_general)^2`` added to the loss, a
    pull toward the general weights), ``early_stop: {holdout, patience, every, metric}``
    (``holdout`` [250, 300] or a fraction of the person's training frames, 0.167 = the last
    sixth: 250-299 of 300, 125-149 of a 150-frame clip; training on the rest, validation every
    ``every`` steps on the holdout, never on 300-399; stop after ``patience`` validations without
    a lower ``metric`` loss and export the best validated weights; a resumed run restarts this
    bookkeeping), ``general_weight`` (the exported model's expression is ``(1 - w) * fine-tuned
    + w * general``, its pose the fine-tuned one: an output-space ensemble with the starting
    model, whose weights are copied to ``general_weights.safetensors`` and recorded in
    ``model.json``; see :func:`talkinghead.pipeline.stage1.predict_expression_pose`),
    ``general_weight_other_voices`` (``w`` for driving audio the voice gate judges to be another
    voice's, moving from ``general_weight`` as the gate closes; null: ``general_weight``),
    ``person_ridge`` (a per-person ridge blended with the network, fitted after
    training, :func:`fit_person_ridge`, saved as ``person_ridge.npz`` and applied by inference;
    without early stopping its blend is judged by a second fine-tuning on the first five sixths
    of the frames, in ``person_ridge_selection/``), ``voice_gate`` (the ridge applies only to
    driving audio in the person's own voice, :mod:`talkinghead.models.linear`), ``soup`` (N:
    the exported network is the weight average of N fine-tunings from the general weights with
    other seeds; the other N - 1 are whole runs in ``soup/member_k``, :func:`_soup_members`; the
    head pose comes from the run's own weights, kept as ``pose_weights.safetensors``: averaged
    weights move the head less).
    Without early stopping the held-out frames 300-399 are validated and logged only (nothing
    is selected by them). CMVN and centring are the general model's, and so is the speed ensemble
    of inference (``speed_ensemble``, written to ``model.json``; see
    :func:`talkinghead.models.audio2coeff.predict_audio`) unless ``audio2coeff.finetune`` sets one.

Rerunning the same call resumes from the newest checkpoint; a run whose ``done.json``
fingerprint (architecture, schedule, seed, data, the starting model's content) matches is not
repeated. Checkpoints whose ``run.json`` fingerprint differs (a killed or finished run of other
settings) are deleted first instead of resumed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from talkinghead.audio.features import frame_windows, voice_statistics
from talkinghead.cli import cfg_get, to_plain
from talkinghead.data.clip import PersonClip, read_clip
from talkinghead.data.stage1_dataset import Stage1WindowDataset, reference_expression
from talkinghead.errors import ConfigError
from talkinghead.face.coeffs import EXP_DIM, ID_DIM, SLICES
from talkinghead.face.factory import make_face_model
from talkinghead.models.audio2coeff import (
    GENERAL_COMMAND,
    GENERAL_WEIGHTS_FILE,
    MODEL_KEYS,
    MODEL_NAME,
    RESIDUAL_FILE,
    ExpressionPoseLSTM,
    POSE_WEIGHTS_FILE,
    NormalizedExpressionPoseLSTM,
    check_speed_ensemble,
    load_network,
    make_optimizer,
    predict_audio,
    read_model_json,
    stage1_loss,
)
from talkinghead.models.linear import select_person_blend
from talkinghead.train import checkpoint as ckpt
from talkinghead.stagedir import AUDIO2COEFF, DONE_FILE, MODEL_FILE, RUN_FILE, WEIGHTS_FILE, write_json_atomic
from talkinghead.weights import average_weights
from talkinghead.train.distributed import barrier, is_main, unwrap
from talkinghead.train.loop import Trainer, TrainerConfig, mix_seed, seed_everything

__all__ = [
    "STAGE",
    "MODEL_NAME",
    "GENERAL_COMMAND",
    "NormalizedExpressionPoseLSTM",
    "Audio2CoeffTask",
    "train_audio2coeff",
    "is_trained",
    "general_digest",
    "read_model_json",
    "write_json_atomic",
]

log = logging.getLogger(__name__)

STAGE = AUDIO2COEFF
#: Name of the weight average inside checkpoints (exported under MODEL_NAME).
EMA_NAME = "ema"
LOSS_KEYS = ("pose_weight", "pose_smooth_weight", "expression_smooth_weight")
MODES = ("general", "finetune")
#: Inside a fine-tuned run: the blend judge of the person ridge (:func:`_selection_network`).
SELECTION_DIR = "person_ridge_selection"
#: Inside a fine-tuned run with ``soup`` > 1: the other fine-tunings whose weights are averaged
#: with the run's own (``soup/member_1``, ...; :func:`_soup_members`).
SOUP_DIR = "soup"


# ----------------------------------------------------------------------------------------------
# The network with its input standardisation
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------


class Audio2CoeffTask:
    """TrainTask for :class:`ExpressionPoseLSTM` (see the module docstring).

    Args:
        model: the network (already initialised or loaded, input statistics set).
        lr: Adam learning rate.
        lr_schedule: ``"constant"`` or ``"cosine"`` (decay to ``min_lr_ratio * lr`` over the
            run; computed from the step number, so resuming needs no extra state).
        min_lr_ratio: floor of the cosine schedule, as a fraction of ``lr``.
        loss_weights: keyword arguments of :func:`stage1_loss` (pose / smoothness weights).
        ema_decay: keep an exponential moving average of the weights and BatchNorm statistics
            (``models["ema"]``, checkpointed like the network; ``None``: off). Validation and
            the exported weights use it. Why: with Adam (beta1 0.5) the network's output
            offsets move from step to step, and the eval-mode BatchNorm statistics follow the
            last few batches; on the synthetic corpus the held-out mouth LMD of checkpoints
            200 steps apart differed by up to 30 %. The decay ramps up as
            ``min(ema_decay, (1 + step) / (10 + step))`` (a function of the step: resumable).
    """

    def __init__(
        self,
        model: ExpressionPoseLSTM,
        lr: float = 2e-4,
        lr_schedule: str = "constant",
        min_lr_ratio: float = 0.05,
        loss_weights: Mapping[str, float] | None = None,
        ema_decay: float | None = None,
        anchor_weight: float = 0.0,
        frozen: Sequence[str] = (),
        patience: int | None = None,
        monitor: str = "total",
    ):
        if lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"audio2coeff lr_schedule={lr_schedule!r}; use constant or cosine")
        if not lr > 0:
            raise ConfigError(f"audio2coeff lr={lr!r} must be > 0")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ConfigError(f"audio2coeff ema_decay={ema_decay!r} must be in (0, 1) or null")
        self.models: dict[str, torch.nn.Module] = {MODEL_NAME: model}
        self.ema_decay = ema_decay
        if ema_decay is not None:
            ema = copy.deepcopy(model)
            ema.requires_grad_(False)  # buffer-like: never DDP-wrapped, never optimised
            self.models[EMA_NAME] = ema
        self.lr = float(lr)
        self.lr_schedule = lr_schedule
        self.min_lr_ratio = float(min_lr_ratio)
        self.loss_weights = dict(loss_weights or {})
        self.total_steps = 1
        self.grad_clip: float | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        # Fine-tuning recipe: frozen parts, a pull toward the starting weights, early stopping.
        unknown = sorted(set(frozen) - {name for name, _ in model.named_children()})
        if unknown:
            raise ConfigError(f"audio2coeff.finetune.train_layers leaves unknown part {unknown[0]!r} frozen; "
                              f"parts: {', '.join(name for name, _ in model.named_children())}")
        self.frozen = [getattr(model, name) for name in frozen]
        for module in self.frozen:
            module.requires_grad_(False)
        self.anchor_weight = float(anchor_weight)
        self.anchor = ([p.detach().clone() for p in model.parameters() if p.requires_grad]
                       if self.anchor_weight > 0 else None)  # the starting (general) weights
        self.patience = patience
        self.monitor = monitor  # the validation loss early stopping watches
        self.best: tuple[float, int] | None = None  # (validation expression loss, step)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_validations = 0
        self.should_stop = False

    @property
    def inference_model(self) -> ExpressionPoseLSTM:
        """The weights to validate and export: the moving average if kept, else the network."""
        return unwrap(self.models[EMA_NAME if self.ema_decay is not None else MODEL_NAME])

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = make_optimizer(self.models[MODEL_NAME], lr=self.lr)
        return {MODEL_NAME: self.optimizer}

    def on_train_start(self, trainer: Trainer) -> None:
        self.total_steps = max(trainer.total_steps, 1)
        self.grad_clip = trainer.cfg.grad_clip

    def learning_rate(self, step: int) -> float:
        """The learning rate of the step that follows ``step`` finished steps."""
        if self.lr_schedule == "constant":
            return self.lr
        progress = min(step / self.total_steps, 1.0)
        floor = self.min_lr_ratio * self.lr
        return floor + 0.5 * (self.lr - floor) * (1.0 + math.cos(math.pi * progress))

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """Move the average toward the network after optimisation step ``step`` (0-based)."""
        decay = min(self.ema_decay, (1.0 + step) / (10.0 + step))
        ema, model = self.models[EMA_NAME], unwrap(self.models[MODEL_NAME])
        ema_params, params = list(ema.parameters()), list(model.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
            if ema_buffer.is_floating_point():  # BatchNorm running statistics (input stats are constant)
                ema_buffer.lerp_(buffer, 1.0 - decay)
            else:  # counters
                ema_buffer.copy_(buffer)

    def training_step(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        model = self.models[MODEL_NAME]
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        for module in self.frozen:  # frozen parts keep their BatchNorm statistics
            module.eval()
        pred, _ = model(batch["windows"])  # [B, T, 70]
        losses = stage1_loss(pred, batch["target"], **self.loss_weights)
        total = losses["total"]
        if self.anchor is not None:  # L2-SP: squared distance to the starting weights
            params = [p for p in unwrap(model).parameters() if p.requires_grad]
            losses["anchor"] = sum((p - p0).square().sum() for p, p0 in zip(params, self.anchor))
            total = total + self.anchor_weight * losses["anchor"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.ema_decay is not None:
            self.update_ema(step)
        return {name: value.detach() for name, value in losses.items()}

    def validation_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred, _ = self.inference_model(batch["windows"])  # [B, T, 70]
        return stage1_loss(pred, batch["target"], **self.loss_weights)

    def on_validation_end(self, step: int, metrics: Mapping[str, float]) -> None:
        """Early stopping (``patience`` set): remember the inference weights with the lowest
        validation loss ``monitor``; stop after ``patience`` validations without improvement."""
        if self.patience is None or self.monitor not in metrics:
            return
        value = float(metrics[self.monitor])
        if self.best is None or value < self.best[0]:
            self.best = (value, step)
            self.best_state = {k: v.detach().clone() for k, v in self.inference_model.state_dict().items()}
            self.bad_validations = 0
        else:
            self.bad_validations += 1
            self.should_stop = self.bad_validations >= self.patience

    def restore_best(self) -> int | None:
        """Load the best weights seen by early stopping into the inference model; their step."""
        if self.best_state is None:
            return None
        self.inference_model.load_state_dict(self.best_state)
        return self.best[1]


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


#: Keys of ``audio2coeff.train`` and ``audio2coeff.finetune``; their values live in
#: configs/audio2coeff/default.yaml (and its presets) only.
SCHEDULE_KEYS = ("lr", "lr_schedule", "min_lr_ratio", "batch_size", "val_batch_size", "window", "stride",
                 "random_offset", "frames", "val_frames", "max_steps", "grad_clip", "input_norm", "ema_decay",
                 "center_expression", "cmvn", "augment", "extra_speakers", "train_layers", "anchor_weight",
                 "early_stop", "general_weight", "general_weight_other_voices", "person_ridge", "voice_gate",
                 "speed_ensemble", "soup")
#: The keys one mode's section does not state, with what their absence means in that mode.
_UNUSED_IN_MODE = {
    "general": {"train_layers": None, "anchor_weight": 0.0, "early_stop": None, "general_weight": 0.0,
                "general_weight_other_voices": None, "person_ridge": False, "voice_gate": None, "soup": 1},
    "finetune": {"center_expression": None, "cmvn": None, "speed_ensemble": None,  # None: the general model's
                 "augment": None, "extra_speakers": None},
}


def _schedule(cfg, mode: str) -> dict[str, Any]:
    """The mode's training settings (``audio2coeff.train`` or ``.finetune``): every key of
    :data:`SCHEDULE_KEYS` must be set there, except those the mode does not use."""
    section = "train" if mode == "general" else "finetune"
    values = to_plain(cfg_get(cfg, f"{STAGE}.{section}", {})) or {}
    unknown = sorted(set(values) - set(SCHEDULE_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {STAGE}.{section}.{unknown[0]}; valid keys: {', '.join(sorted(SCHEDULE_KEYS))}")
    sched = {**_UNUSED_IN_MODE[mode], **values}
    missing = [k for k in SCHEDULE_KEYS if k not in sched]
    if missing:
        raise ConfigError(f"{STAGE}.{section}.{missing[0]} is not set; see configs/{STAGE}/default.yaml")
    return sched


def _frame_slice(value, key: str) -> slice | None:
    if value is None:
        return None
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ConfigError(f"{STAGE}.{key}={value!r} must be null or [start, stop] frame indices (e.g. [0, 300])")
    return slice(int(value[0]), int(value[1]))


def _model_kwargs_from_config(cfg) -> dict[str, Any]:
    values = to_plain(cfg_get(cfg, f"{STAGE}.model", {})) or {}
    unknown = sorted(set(values) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {STAGE}.model.{unknown[0]}; valid keys: {', '.join(MODEL_KEYS)}")
    return dict(values)


def _clip_name(clip: PersonClip | str | os.PathLike) -> str:
    return clip.name if isinstance(clip, PersonClip) else Path(clip).name


def _fingerprint(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def general_digest(general_dir: str | os.PathLike) -> str:
    """A digest of a general Stage-1 folder's ``weights.safetensors`` and ``model.json`` bytes,
    recorded by a fine-tuning (``model.json`` ``init_digest``): a fine-tuning whose general model
    was retrained in the same folder is not "already done" (the path alone said it was, and
    session 26's tables at first reused fine-tunings of the previous general model)."""
    digest = hashlib.sha256()
    for name in (WEIGHTS_FILE, MODEL_FILE):
        digest.update((Path(general_dir) / name).read_bytes())
    return digest.hexdigest()[:16]


def person_ridge_split(frames: slice) -> int:
    """The first frame of the last sixth of ``frames`` (250 of 0-299): the person ridge's blend is
    chosen there."""
    return frames.stop - max((frames.stop - frames.start) // 6, 1)


@torch.no_grad()
def mouth_projection(face_model) -> np.ndarray:
    """``[64, 60]``: the model-space 3-D positions of the 20 mouth landmarks (48-67) per unit of
    each expression coefficient (the face model is linear in them)."""
    identity = torch.zeros(EXP_DIM + 1, ID_DIM)
    expression = torch.cat([torch.zeros(1, EXP_DIM), torch.eye(EXP_DIM)])  # [65, 64]: none, then each alone
    mouth = face_model.landmark_vertices(identity, expression)[:, 48:68].reshape(EXP_DIM + 1, -1).double()  # [65, 60]
    return (mouth[1:] - mouth[:1]).numpy()


def fit_person_ridge(judge: ExpressionPoseLSTM, clip: PersonClip | str | os.PathLike, frames: slice, path: Path,
                     general: ExpressionPoseLSTM | None = None, general_weight: float = 0.0,
                     voice_gate: tuple[float, float] | None = None):
    """Fit the fine-tuned model's per-person ridge and blend (see
    :mod:`talkinghead.models.linear`): ridge regression from the plain MFCC windows of the
    person's fine-tuning ``frames`` (no per-utterance CMVN: the ridge standardises each column
    over the person's own frames, and the voice gate keeps other voices and channels away) to
    the expression; its penalty and the blend weight of the network are chosen on the last
    sixth of the frames (:func:`person_ridge_split`: 250-299) after fitting on the rest, then
    the ridge is refitted on all of them and written to ``path``.

    The network's prediction there comes from ``judge``, which must not have trained on that
    sixth (with the fixed-step recipe: a second fine-tuning on the first five sixths), and is
    computed as inference computes it for driving audio: the sixth's audio as an utterance of
    its own (its own CMVN, the LSTM from a zero state, ``judge.speed_ensemble``) and, with
    ``general``, the blend ``(1 - general_weight) * network + general_weight * general``.
    Session 26 (README): predicting the sixth inside the whole clip, as before, judged the
    network by a longer utterance than it ever gets and gave it too much weight (cross-validated
    on the real videos 0.701 -> 0.707 on 31.mp4, 0.134 -> 0.168 on the 8 s clip when changed).
    ``voice_gate`` stores the person's voice with the ridge
    (:meth:`~talkinghead.models.linear.WindowRidge.voice_weight`). Returns the ridge."""
    clip = clip if isinstance(clip, PersonClip) else read_clip(clip)
    start, stop, _ = frames.indices(clip.num_frames)
    split = person_ridge_split(slice(start, stop))
    kwargs = dict(fps=clip.meta.fps, sample_rate=clip.meta.sample_rate)
    holdout_audio = clip.audio_for_frames(slice(split, stop))
    device = next(judge.parameters()).device
    if general is not None:
        general.to(device)
    pred = predict_audio(judge, holdout_audio, stop - split, device=device, general=general, general_weight=general_weight)
    pred = pred[:, :EXP_DIM]  # [stop - split, 64]
    if bool(judge.expression_centered):
        pred = pred + reference_expression(clip)
    windows = frame_windows(clip.audio, clip.num_frames, cmvn=False, **kwargs)  # the ridge's: no per-utterance CMVN
    x = windows[start:stop]  # [M, 28, 12]: columns standardised over these frames by the ridge itself
    y = np.asarray(clip.coeffs[start:stop, SLICES["expression"]], np.float64)  # [M, 64]
    ridge = select_person_blend(x, y, pred, split=split - start,
                                projection=mouth_projection(make_face_model(clip.meta.face_model)))
    if voice_gate is not None:
        ridge.voice_mean, ridge.voice_std = voice_statistics(clip.audio_for_frames(slice(start, stop)), clip.meta.sample_rate)
        ridge.voice_gate = (float(voice_gate[0]), float(voice_gate[1]))
    ridge.cmvn = False
    ridge.save(path)
    return ridge


def _variant_config(cfg, updates: Mapping[str, Any]):
    """A copy of ``cfg`` with the dotted keys of ``updates`` replaced."""
    from omegaconf import OmegaConf  # local: only the fine-tuning's extra runs need it

    variant = OmegaConf.create(to_plain(cfg))
    for key, value in updates.items():
        OmegaConf.update(variant, key, value, merge=False)
    return variant


def _selection_network(clip: PersonClip, frames: slice, out_dir: Path, cfg, init_dir: Path, model_kwargs, cmvn: bool):
    """The person ridge's blend judge under the fixed-step recipe: the same fine-tuning on the
    first five sixths of ``frames`` only (``out_dir``, resumable like any run), one run even when
    the model is a soup. A soup judge scored better than one run on those frames and won the
    network more weight (the 8 s clip, three seeds: 0.7 / 0.8 / 1.0 instead of 0.5 / 0.5 / 0.7),
    which the held-out frames did not bear out (0.641 / 0.649 / 0.393 -> 0.406 / 0.492 / -0.027);
    one run judges the soup conservatively (README, session 27)."""
    split = person_ridge_split(frames)
    selection_cfg = _variant_config(cfg, {
        f"{STAGE}.finetune.frames": [frames.start, split],
        f"{STAGE}.finetune.val_frames": [split, frames.stop],
        f"{STAGE}.finetune.person_ridge": False,
        f"{STAGE}.finetune.general_weight_other_voices": None,  # judged on the own voice
        f"{STAGE}.finetune.soup": 1,
    })
    train_audio2coeff([clip], out_dir, selection_cfg, mode="finetune", init_dir=init_dir,
                      desc=f"{STAGE} (finetune on {frames.start}-{split - 1}: the person ridge's blend judge)")
    return load_network(model_kwargs, out_dir / WEIGHTS_FILE, cmvn)


def _soup_members(clips, out_dir: Path, cfg, init_dir: Path, soup: int, seed: int, desc: str) -> list[Path]:
    """The other ``soup - 1`` fine-tunings of a soup: the same recipe from the same general
    weights with seeds ``mix_seed(seed, k)`` (batch order, augmentation), each a resumable run in
    ``out_dir/soup/member_k``; returns their weight files. Only their networks are used: no
    person ridge, no blend with the general model (the soup's own run does both)."""
    member_cfg = _variant_config(cfg, {
        f"{STAGE}.finetune.soup": 1,
        f"{STAGE}.finetune.person_ridge": False,
        f"{STAGE}.finetune.general_weight": 0.0,
        f"{STAGE}.finetune.general_weight_other_voices": None,
    })
    paths = []
    for k in range(1, soup):
        member_cfg.seed = mix_seed(seed, k)
        member_dir = out_dir / SOUP_DIR / f"member_{k}"
        train_audio2coeff(clips, member_dir, member_cfg, mode="finetune", init_dir=init_dir,
                          desc=f"{desc}: soup member {k + 1} of {soup}")
        paths.append(member_dir / WEIGHTS_FILE)
    return paths


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------


def _run_identity(clips, cfg, mode: str, init_dir) -> dict[str, Any]:
    """What identifies a Stage-1 run, checked: the mode's schedule, seed, loss weights, the
    architecture (fine-tuning: the general model's), the starting model's folder, ``model.json``
    and content digest (:func:`general_digest`), and the ``fingerprint`` of the schedule, seed,
    loss, architecture, digest and the clips' names (written to ``run.json`` and ``done.json``;
    a finished run with the same fingerprint is not repeated). The folder's path is not part of
    it: the same general model found through another path is the same start."""
    if mode not in MODES:
        raise ConfigError(f"audio2coeff mode={mode!r}; use general or finetune")
    sched = _schedule(cfg, mode)
    seed = int(cfg_get(cfg, "seed", 0))
    loss_weights = to_plain(cfg_get(cfg, f"{STAGE}.loss", {})) or {}
    unknown = sorted(set(loss_weights) - set(LOSS_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key {STAGE}.loss.{unknown[0]}; valid keys: {', '.join(LOSS_KEYS)}")
    init_info = None
    if init_dir is not None:
        init_dir = Path(init_dir).expanduser()
        init_info = read_model_json(init_dir, GENERAL_COMMAND.format(out=init_dir))
    if mode == "finetune":  # the architecture is the general model's
        if init_dir is None:
            raise ConfigError("audio2coeff fine-tuning needs init_dir (the general model directory); set general=DIR")
        model_kwargs = dict(init_info["model"])
    else:
        model_kwargs = _model_kwargs_from_config(cfg)
        if init_dir is not None and init_info["model"] != model_kwargs:
            raise ConfigError(f"audio2coeff.model {model_kwargs} differs from {init_dir / MODEL_FILE}; use the same architecture")
    init_content = general_digest(init_dir) if init_dir is not None else None  # retrained in place counts
    fingerprint = _fingerprint({
        "mode": mode, "model": model_kwargs, "sched": sched, "loss": loss_weights, "seed": seed,
        "clips": [_clip_name(c) for c in clips], "init_content": init_content,
    })
    return {"sched": sched, "seed": seed, "loss": loss_weights, "model": model_kwargs, "init_dir": init_dir,
            "init_info": init_info, "init_content": init_content, "fingerprint": fingerprint}


def is_trained(out_dir: str | os.PathLike, clips, cfg, mode: str = "general", init_dir=None) -> bool:
    """Whether ``train_audio2coeff(clips, out_dir, cfg, mode, init_dir)`` would find its work
    done: ``out_dir`` holds weights and a ``done.json`` written by a run of the same settings
    from the same starting model (``pipeline/finetune.py`` asks this before skipping a person's
    Stage 1)."""
    return _finished_as(Path(out_dir).expanduser(), _run_identity(clips, cfg, mode, init_dir)["fingerprint"])


def _finished_as(out_dir: Path, fingerprint: str) -> bool:
    """``out_dir`` holds weights and a ``done.json`` with ``fingerprint``."""
    try:
        done = json.loads((out_dir / DONE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (out_dir / WEIGHTS_FILE).is_file() and done.get("fingerprint") == fingerprint


def train_audio2coeff(
    clips: Sequence[PersonClip | str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg,
    mode: str = "general",
    init_dir: str | os.PathLike | None = None,
    val_clips: Sequence[PersonClip | str | os.PathLike] | None = None,
    desc: str | None = None,
) -> Path:
    """Train Stage 1 into ``out_dir`` (see the module docstring); returns ``out_dir``.

    Args:
        clips: training clips (general: the training persons; finetune: the person's clip).
        out_dir: the run directory (weights, model.json, checkpoints, tb, done.json).
        cfg: the composed config (``audio2coeff.model/.train/.finetune/.loss``, ``trainer``,
            ``seed``).
        mode: ``"general"`` or ``"finetune"``.
        init_dir: finetune: the general run to start from (its model.json + weights).
            general: optional warm start.
        val_clips: validation clips; default: none for general training, the training clips'
            ``val_frames`` (held-out frames) for fine-tuning.
        desc: the progress line's label (default ``"audio2coeff (MODE)"``).
    """
    if not clips:
        raise ConfigError("no training clips for audio2coeff; check data.root (it needs persons with split 'train')")
    out_dir = Path(out_dir).expanduser()
    run = _run_identity(clips, cfg, mode, init_dir)
    sched, seed, loss_weights, model_kwargs = run["sched"], run["seed"], run["loss"], run["model"]
    init_dir, init_info, init_digest = run["init_dir"], run["init_info"], run["init_content"]
    init_weights = init_dir / WEIGHTS_FILE if init_dir is not None else None

    general_weight = float(sched["general_weight"] or 0.0) if mode == "finetune" else 0.0
    if not 0.0 <= general_weight <= 1.0:
        raise ConfigError(f"{STAGE}.finetune.general_weight={sched['general_weight']!r} must be in [0, 1] "
                          "(0: the fine-tuned expression alone, 1: the general model's)")
    other_voices = sched["general_weight_other_voices"] if mode == "finetune" else None
    other_voices = general_weight if other_voices is None else float(other_voices)
    if not 0.0 <= other_voices <= 1.0:
        raise ConfigError(f"{STAGE}.finetune.general_weight_other_voices={sched['general_weight_other_voices']!r} must "
                          "be null (= general_weight) or in [0, 1]")
    voice_gate = to_plain(sched["voice_gate"])
    if voice_gate is not None and not (isinstance(voice_gate, (list, tuple)) and len(voice_gate) == 2
                                       and 0.0 <= float(voice_gate[0]) < float(voice_gate[1])):
        raise ConfigError(f"{STAGE}.finetune.voice_gate={voice_gate!r} must be null or [low, high] voice distances "
                          "with 0 <= low < high (e.g. [0.35, 0.5])")
    if other_voices != general_weight and not (sched["person_ridge"] and voice_gate is not None):
        raise ConfigError(f"{STAGE}.finetune.general_weight_other_voices={other_voices} needs person_ridge=true and a "
                          "voice_gate (the gate tells the person's voice from others); or set it to null")
    soup = sched["soup"]
    if isinstance(soup, bool) or not isinstance(soup, int) or soup < 1:
        raise ConfigError(f"{STAGE}.finetune.soup={soup!r} must be an integer >= 1 (1: one fine-tuning; "
                          "N: N fine-tunings from the general weights with other seeds, weights averaged)")
    if mode == "general" and soup != 1:
        raise ConfigError(f"{STAGE}.train.soup={soup}: a soup averages fine-tunings of one general model; "
                          f"set {STAGE}.finetune.soup instead")
    if mode == "finetune" and sched["person_ridge"] and len(clips) != 1:
        raise ConfigError(f"{STAGE}.finetune.person_ridge fits one person's ridge; fine-tune one clip at a time")
    if val_clips is None:
        val_clips = clips if mode == "finetune" else []
    frames, val_frames = _frame_slice(sched["frames"], "frames"), _frame_slice(sched["val_frames"], "val_frames")
    if mode == "finetune" and (frames is None or val_frames is None):  # the person's own split (meta.json)
        person = clips[0] if isinstance(clips[0], PersonClip) else read_clip(clips[0], load_audio=False)
        frames = frames if frames is not None else person.train_slice
        val_frames = val_frames if val_frames is not None else person.test_slice
    trained_frames = None if frames is None else [frames.start, frames.stop]  # recorded in model.json
    fingerprint = run["fingerprint"]
    done_path = out_dir / DONE_FILE
    if _finished_as(out_dir, fingerprint):
        log.info("%s: already trained (done.json matches); skipping", out_dir)
        return out_dir
    if is_main():
        if done_path.exists():
            done_path.unlink()  # the directory is being (re)trained: no longer marked finished
        # Checkpoints resume only the run they belong to (run.json, written before the first
        # step): those of other settings or another general model, finished or killed, go.
        try:
            recorded = json.loads((out_dir / RUN_FILE).read_text()).get("fingerprint")
        except (OSError, ValueError):
            recorded = None
        if recorded != fingerprint and (out_dir / "checkpoints").is_dir():
            log.info("%s: its checkpoints are of other settings or another general model; training afresh", out_dir)
            shutil.rmtree(out_dir / "checkpoints")
        write_json_atomic(out_dir / RUN_FILE, {"fingerprint": fingerprint})
    barrier()

    desc = desc or f"{STAGE} ({mode})"
    soup_paths = _soup_members(clips, out_dir, cfg, init_dir, soup, seed, desc) if soup > 1 else []

    seed_everything(seed)
    model = NormalizedExpressionPoseLSTM(**model_kwargs)
    if init_weights is not None:  # weights and input statistics (resuming overwrites both)
        ckpt.load_weights({MODEL_NAME: model}, init_weights)
    if mode == "general":
        model.expression_centered.fill_(bool(sched["center_expression"]))
    elif sched["center_expression"] is not None and bool(sched["center_expression"]) != bool(model.expression_centered):
        raise ConfigError(
            f"audio2coeff.finetune.center_expression={sched['center_expression']} but the general model in {init_dir} "
            f"was trained with center_expression={bool(model.expression_centered)}; remove the override"
        )
    center = bool(model.expression_centered)
    # Per-utterance CMVN of the input: chosen by general training, inherited by fine-tuning.
    if mode == "general":
        model.cmvn = bool(sched["cmvn"])
    else:
        model.cmvn = bool(init_info.get("cmvn", False))
        if sched["cmvn"] is not None and bool(sched["cmvn"]) != model.cmvn:
            raise ConfigError(f"audio2coeff.finetune.cmvn={sched['cmvn']} but the general model in {init_dir} was trained "
                              f"with cmvn={model.cmvn}; remove the override")
    # The speed ensemble of inference (model.json; predict_audio): general training's, unless fine-tuning sets its own.
    speeds = sched["speed_ensemble"]
    if speeds is None and mode == "finetune":
        speeds = init_info.get("speed_ensemble", [1.0])  # general models before session 26: none
    speeds = check_speed_ensemble(speeds, f"{STAGE}.{'train' if mode == 'general' else 'finetune'}.speed_ensemble")

    person_frames = frames  # the person's fine-tuning frames (the person ridge fits all of them)
    # Early stopping validates on a slice of the training frames (never on the held-out 300-399).
    early = dict(to_plain(sched["early_stop"]) or {})
    if early:
        unknown = sorted(set(early) - {"holdout", "patience", "every", "metric"})
        if unknown:
            raise ConfigError(f"unknown config key {STAGE}.early_stop.{unknown[0]}; valid keys: every, holdout, metric, patience")
        if early.get("metric", "total") not in ("total", "expression", "pose"):
            raise ConfigError(f"{STAGE}.early_stop.metric={early['metric']!r}; use total, expression or pose")
        holdout = early.get("holdout", [250, 300])
        if isinstance(holdout, (int, float)) and not isinstance(holdout, bool):  # a fraction of the person's frames
            if not 0.0 < float(holdout) < 1.0:
                raise ConfigError(f"{STAGE}.early_stop.holdout={holdout} must be a fraction in (0, 1) or [start, stop]")
            first = read_clip(clips[0], load_audio=False) if not isinstance(clips[0], PersonClip) else clips[0]
            lo, hi, _ = (frames or slice(0, first.num_frames)).indices(first.num_frames)
            cut = hi - max(1, int(round((hi - lo) * float(holdout))))
            holdout = [cut, frames.stop if frames is not None else hi]
        holdout = _frame_slice(list(holdout), "early_stop.holdout")
        if frames is None or not (frames.start <= holdout.start < holdout.stop == frames.stop):
            raise ConfigError(f"{STAGE}.early_stop.holdout={early.get('holdout')} must be the last frames of "
                              f"frames={sched['frames']} (e.g. [250, 300] of [0, 300], or a fraction such as 0.167)")
        frames, val_frames = slice(frames.start, holdout.start), holdout
        val_clips = clips
    corpus_names = {_clip_name(c) for c in clips}
    extra = dict(to_plain(sched["extra_speakers"]) or {})
    if extra and mode == "general" and int(extra.get("count", 0)) > 0:
        unknown = sorted(set(extra) - {"count", "speech", "seed", "frames", "articulation"})
        if unknown:
            raise ConfigError(f"unknown config key {STAGE}.train.extra_speakers.{unknown[0]}; "
                              "valid keys: articulation, count, frames, seed, speech")
        # local: the synthetic world (scipy.signal, eSpeak) costs 1 s to import; only general training with extra speakers needs it
        from talkinghead.data.synthetic.espeak import available
        from talkinghead.data.synthetic.world import speech_clips

        speech = str(extra.get("speech", "espeak"))
        if speech != "source_filter":
            problem = available()
            if problem is not None:  # degrade: the world's own voices instead of eSpeak's
                log.warning("audio2coeff.train.extra_speakers: %s; using speech=source_filter instead", problem)
                speech = "source_filter"
        try:
            clips = list(clips) + speech_clips(int(extra["count"]), int(extra.get("frames", 400)), int(extra.get("seed", 1)),
                                               speech, articulation=extra.get("articulation"))
        except ValueError as err:
            raise ConfigError(f"{STAGE}.train.extra_speakers.articulation: {err}") from None
    window, stride = int(sched["window"]), int(sched["stride"])
    train_set = Stage1WindowDataset(clips, window, stride, frames, random_offset=bool(sched["random_offset"]),
                                    center_expression=center, cmvn=model.cmvn, augment=sched["augment"], seed=seed,
                                    features=model.features)
    if len(train_set) == 0:
        raise ConfigError(
            f"no {window}-frame windows in the training clips' frames "
            f"{'all' if frames is None else f'{frames.start}-{frames.stop - 1}'}; "
            "check data.root, use a longer clip, or lower audio2coeff window"
        )
    val_set = (Stage1WindowDataset(val_clips, window, window, val_frames, center_expression=center, cmvn=model.cmvn,
                                   features=model.features)
               if val_clips else None)
    if early and (val_set is None or len(val_set) == 0):
        log.warning("%s: early stopping has no %d-frame window in frames %s; training without it", out_dir, window, val_frames)
        early, val_set = {}, None
    if init_weights is None and sched["input_norm"]:
        model.set_input_stats(train_set.windows)
    layers = sched["train_layers"]
    frozen = [] if layers is None else [name for name, _ in model.named_children() if name not in list(layers)]
    task = Audio2CoeffTask(model, sched["lr"], sched["lr_schedule"], sched["min_lr_ratio"], loss_weights,
                           ema_decay=sched["ema_decay"], anchor_weight=float(sched["anchor_weight"] or 0.0),
                           frozen=frozen, patience=int(early.get("patience", 5)) if early else None,
                           monitor=str(early.get("metric", "total")))

    trainer_overrides = dict(
        out_dir=str(out_dir),
        max_steps=int(sched["max_steps"]),
        batch_size=int(sched["batch_size"]),
        seed=seed,
        desc=desc,
    )
    if sched["val_batch_size"]:
        trainer_overrides["val_batch_size"] = int(sched["val_batch_size"])
    if sched["grad_clip"]:
        trainer_overrides["grad_clip"] = float(sched["grad_clip"])
    if early:
        trainer_overrides["val_every"] = int(early.get("every", 10))
    trainer_cfg = TrainerConfig.coerce(to_plain(cfg_get(cfg, "trainer", {})) or {}, **trainer_overrides)
    trainer = Trainer(task, train_set, val_set, trainer_cfg)
    log.info("training %s: %s; validation: %s", STAGE, train_set, val_set)
    metrics = trainer.fit()
    best_step = task.restore_best()  # early stopping: export the best validated weights
    if best_step is not None:
        metrics = {**metrics, "best_step": best_step, f"best_val_{task.monitor}": task.best[0]}
        log.info("early stopping: best validation at step %d of %d", best_step, trainer.step)
    if soup_paths:  # the soup: this run's weights averaged with its members' (the head pose keeps this run's)
        if trainer.is_main:
            ckpt.export_weights({MODEL_NAME: task.inference_model}, out_dir / POSE_WEIGHTS_FILE,
                                metadata={"stage": STAGE, "mode": mode, "role": "pose"})
        average_weights(MODEL_NAME, task.inference_model, soup_paths)
        log.info("%s: weights averaged over %d fine-tunings (soup)", out_dir, soup)

    # The person ridge's blend judge (every rank runs it, as any training): a network that has
    # not trained on the holdout of the blend, 250-299; with early stopping the model itself.
    selection, person = None, None
    if mode == "finetune" and sched["person_ridge"]:
        person = clips[0] if isinstance(clips[0], PersonClip) else read_clip(clips[0])
        judge_frames = person_ridge_split(person_frames) - person_frames.start
        if not early and judge_frames < int(sched["window"]):  # too short for a second fine-tuning
            log.warning("%s: %d frames before the person ridge's holdout are fewer than one %d-frame window; "
                        "the blend is judged by the network trained on all frames", _clip_name(person),
                        judge_frames, int(sched["window"]))
        elif not early:
            selection = _selection_network(person, person_frames, out_dir / SELECTION_DIR, cfg, init_dir,
                                           model_kwargs, model.cmvn)

    if trainer.is_main:
        info = {
            "stage": STAGE,
            "mode": mode,
            "model": model_kwargs,
            "window": window,
            "input_norm": bool(model.input_std.ne(1).any() or model.input_mean.ne(0).any()),
            "ema_decay": sched["ema_decay"],
            "center_expression": center,
            "cmvn": model.cmvn,
            "speed_ensemble": list(speeds),
            "trained_on": [name for name in train_set.clip_names if name in corpus_names],
            "extra_speakers": len(train_set.clip_names) - len(corpus_names & set(train_set.clip_names)),
            "frames": trained_frames,
            "init": str(init_weights) if init_weights else None,
            "init_digest": init_digest,
            "soup": soup,
            "format_version": 1,
        }
        ckpt.export_weights({MODEL_NAME: task.inference_model}, out_dir / WEIGHTS_FILE, metadata={"stage": STAGE, "mode": mode})
        if max(general_weight, other_voices) > 0.0:  # the output-space ensemble with the starting (general) model
            tmp = out_dir / f".tmp_{os.getpid()}_{GENERAL_WEIGHTS_FILE}"
            shutil.copyfile(init_weights, tmp)
            os.replace(tmp, out_dir / GENERAL_WEIGHTS_FILE)
            info["general_weight"] = general_weight
            if other_voices != general_weight:
                info["general_weight_other_voices"] = other_voices
        elif (out_dir / GENERAL_WEIGHTS_FILE).exists():
            (out_dir / GENERAL_WEIGHTS_FILE).unlink()
        if mode == "finetune" and sched["person_ridge"]:
            general = load_network(model_kwargs, init_weights, model.cmvn) if general_weight > 0.0 else None  # as inference blends
            judge = task.inference_model if selection is None else selection
            judge.cmvn, judge.speed_ensemble = model.cmvn, speeds  # judged as inference runs it
            ridge = fit_person_ridge(judge, person, person_frames, out_dir / RESIDUAL_FILE, general=general,
                                     general_weight=general_weight, voice_gate=voice_gate)
            info["person_ridge"] = {"lam": ridge.lam, "blend": ridge.blend, "voice_gate": ridge.voice_gate}
        elif (out_dir / RESIDUAL_FILE).exists():
            (out_dir / RESIDUAL_FILE).unlink()
        if not (mode == "finetune" and sched["person_ridge"] and selection is not None) and (out_dir / SELECTION_DIR).exists():
            shutil.rmtree(out_dir / SELECTION_DIR)  # left by an earlier configuration
        if soup == 1 and (out_dir / SOUP_DIR).exists():
            shutil.rmtree(out_dir / SOUP_DIR)  # ditto
        if soup == 1 and (out_dir / POSE_WEIGHTS_FILE).exists():
            (out_dir / POSE_WEIGHTS_FILE).unlink()
        write_json_atomic(out_dir / MODEL_FILE, info)
        write_json_atomic(done_path, {"fingerprint": fingerprint, "metrics": metrics, "steps": trainer.step})
    barrier()
    return out_dir
