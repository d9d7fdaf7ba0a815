"""Stage-1 inference: load a trained audio -> expression + pose model and run it on audio.

    model = load_audio2coeff("PERSON/finetuned/audio2coeff")
    expression, pose = predict_expression_pose(model, audio, expression_reference=reference_expression(clip))
    # [N, 64], [N, 6]

A model trained with centred expression targets (``model.expression_centered``; the CPU
preset's default) predicts the deviation from the person's reference expression
(:func:`talkinghead.data.stage1_dataset.reference_expression`: the mean of their frames 0-299);
``expression_reference`` adds it back and is required for such a model.

The whole utterance is one sequence (method.md section 4): MFCC windows are computed in
blocks of ``chunk_frames`` video frames (:func:`talkinghead.audio.features.iter_frame_windows`)
and each block runs through the network with the LSTM state carried over from the previous
one, so memory is bounded for any audio length and the result equals a single pass
(:func:`talkinghead.models.audio2coeff.predict_audio`). A model with a speed ensemble
(``model.json`` ``speed_ensemble``, the CPU preset's default) also runs on the audio played at
the other rates and averages the expression; the head pose and the person ridge come from the
audio as it is.
"""

from __future__ import annotations

import logging

import os
from pathlib import Path

import numpy as np
import torch

from talkinghead.errors import InputError, TrainingError
from talkinghead.face.coeffs import EXP_DIM, from_stage1_output
from talkinghead.models.audio2coeff import (
    GENERAL_COMMAND,
    GENERAL_WEIGHTS_FILE,
    POSE_WEIGHTS_FILE,
    RESIDUAL_FILE,
    ExpressionPoseLSTM,
    load_network,
    predict_audio,
    read_model_json,
)
from talkinghead.stagedir import WEIGHTS_FILE
from talkinghead.devices import resolve_device
from talkinghead.models.linear import WindowRidge, predict_ridge

__all__ = ["load_audio2coeff", "predict_expression_pose", "creating_command"]

log = logging.getLogger(__name__)


def creating_command(model_dir: str | os.PathLike) -> str:
    """The command that creates a Stage-1 model directory: fine-tuning for
    ``PERSON/finetuned/audio2coeff``, general training otherwise."""
    model_dir = Path(model_dir)
    if model_dir.parent.name == "finetuned":
        return f"python scripts/finetune.py person={model_dir.parent.parent} stage=audio2coeff"
    return GENERAL_COMMAND.format(out=model_dir)


def load_audio2coeff(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> ExpressionPoseLSTM:
    """Rebuild a trained :class:`ExpressionPoseLSTM` (the input-standardising subclass
    :class:`~talkinghead.models.audio2coeff.NormalizedExpressionPoseLSTM`) from
    ``DIR/model.json`` and ``DIR/weights.safetensors``, in eval mode on ``device``.

    A missing directory/file is a one-line :class:`TrainingError` naming ``DIR`` and the
    command that creates it.
    """
    model_dir = Path(model_dir).expanduser()
    info = read_model_json(model_dir, creating_command(model_dir))
    speeds = info.get("speed_ensemble", [1.0])  # files before session 26: none
    model = load_network(info["model"], model_dir / WEIGHTS_FILE, cmvn=info.get("cmvn", False), speed_ensemble=speeds)
    residual = model_dir / RESIDUAL_FILE
    model.residual = WindowRidge.load(residual) if residual.is_file() else None  # per-person ridge + blend
    pose_path = model_dir / POSE_WEIGHTS_FILE  # a soup's head pose: one run's weights (predict_audio)
    model.pose_network = load_network(info["model"], pose_path, cmvn=model.cmvn) if pose_path.is_file() else None
    model.general, model.general_weight = None, float(info.get("general_weight", 0.0))
    model.general_weight_other_voices = float(info.get("general_weight_other_voices", model.general_weight))
    if max(model.general_weight, model.general_weight_other_voices) > 0.0:  # fine-tuned: blended with the general model
        general_path = model_dir / GENERAL_WEIGHTS_FILE
        if not general_path.is_file():
            raise TrainingError(f"{general_path} is missing (model.json general_weight={model.general_weight}); "
                                f"fine-tune this model again, or set general_weight to 0 in {model_dir / 'model.json'}")
        model.general = load_network(info["model"], general_path, cmvn=model.cmvn).to(resolve_device(device))  # its rates: the model's
    if model.pose_network is not None:
        model.pose_network.to(resolve_device(device))
    return model.to(resolve_device(device)).eval()


@torch.no_grad()
def predict_expression_pose(
    model: ExpressionPoseLSTM,
    audio: np.ndarray,
    num_frames: int | None = None,
    chunk_frames: int = 250,
    device: str | torch.device = "cpu",
    expression_reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Expression and head pose for every 25 fps video frame of mono 16 kHz ``audio [S]``.

    Args:
        model: a Stage-1 network (its train/eval mode is restored afterwards; it runs in eval).
        audio: float32 ``[S]`` at 16 kHz.
        num_frames: frames to produce (default: the audio's length in frames).
        chunk_frames: frames per block (bounds memory; the result does not depend on it).
        device: where the network runs (the model is moved there).
        expression_reference: float32 ``[64]``, the person's reference expression
            (:func:`~talkinghead.data.stage1_dataset.reference_expression`); added to the output
            of a centred model (required there), ignored by a model with absolute outputs.

    Returns:
        ``expression`` float32 ``[N, 64]`` and ``pose`` float32 ``[N, 6]`` (angles x, y, z in
        radians, translation x, y, z; the Stage-1 translation shift undone, no smoothing).
    """
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        shape = getattr(audio, "shape", type(audio).__name__)
        raise InputError(f"Stage-1 audio must be a mono numpy array [S] at 16 kHz, got {shape}; load it with load_audio")
    if chunk_frames < 1:
        raise InputError(f"chunk_frames must be >= 1, got {chunk_frames}")
    centered = bool(getattr(model, "expression_centered", False))
    if centered:
        if expression_reference is None:
            raise InputError("this Stage-1 model predicts expression relative to the person's reference expression; "
                             "pass expression_reference=reference_expression(clip)")
        expression_reference = np.asarray(expression_reference, dtype=np.float32)
        if expression_reference.shape != (EXP_DIM,):
            raise InputError(f"expression_reference must have shape ({EXP_DIM},), got {expression_reference.shape}")
    device = resolve_device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        residual = getattr(model, "residual", None)  # fine-tuned: the person's ridge, blended
        general = getattr(model, "general", None)  # fine-tuned: the general model, blended
        if general is not None:
            general.to(device).eval()
        ridge_share, voice = 0.0, 1.0  # the person ridge's share of the expression; 1: the person's own voice
        if residual is not None:
            voice, distance = residual.voice_weight(audio)  # the ridge only for the voice it was fitted on
            ridge_share = (1.0 - residual.blend) * voice
        general_weight = 0.0  # the general model's share of the network's expression, for this voice
        if general is not None:
            own = float(getattr(model, "general_weight", 0.0))
            general_weight = voice * own + (1.0 - voice) * float(getattr(model, "general_weight_other_voices", own))
        if residual is not None and distance is not None:
            log.info("person ridge: voice distance %.2f (gate %.2f-%.2f) -> ridge weight %.2f, general model's %.2f",
                     distance, *residual.voice_gate, ridge_share, general_weight)
        network = predict_audio(model, audio, num_frames, chunk_frames, device, general, general_weight)  # [N, 70]
        ridge = None
        if ridge_share > 0.0 and len(network):  # one pass: the speed ensemble is the network's alone
            ridge = predict_ridge(residual, audio, len(network), default_cmvn=bool(getattr(model, "cmvn", False)),
                                  chunk_frames=chunk_frames)  # [N, 64]
    finally:
        model.train(was_training)
    if network.shape[0] == 0:
        return np.zeros((0, EXP_DIM), np.float32), np.zeros((0, 6), np.float32)
    expression, pose = from_stage1_output(network)
    if centered:
        expression = expression + expression_reference
    if ridge is not None:  # (1 - ridge_share) * network + ridge_share * ridge
        expression = (1.0 - ridge_share) * expression + ridge_share * ridge
    return np.ascontiguousarray(expression, np.float32), np.ascontiguousarray(pose, np.float32)
