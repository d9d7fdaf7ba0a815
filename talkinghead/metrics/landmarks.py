"""Landmark distance (LMD) between predicted and true 68-point landmarks (iBUG 68 scheme).

``landmark_distance``: the mean over frames and points of the Euclidean distance between
corresponding 2-D points, in pixels of the image the landmarks live in (224 x 224 crops
unless stated otherwise). ``mouth_landmark_distance``: the same over the 20 mouth points
48-67 only (outer lip 48-59, inner lip 60-67).

For Stage 1 the landmarks of both sides are obtained by projecting the face model with the
TRUE identity, pose and camera of the held-out frame; only the expression differs (predicted
vs. true, see :func:`stage1_mouth_lmd`). The Stage-1 LMD therefore measures the mouth shape
alone, not pose errors.
"""

from __future__ import annotations

import numpy as np
import torch

from talkinghead.errors import InputError
from talkinghead.face.coeffs import COEFF_DIM, EXP_DIM, with_parts

#: 0-based indices of the mouth points in the 68-point scheme.
MOUTH = slice(48, 68)


def _landmarks(x, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim < 2 or arr.shape[-2:] != (68, 2):
        raise InputError(f"{name} must be 2-D landmarks [N, 68, 2], got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _mean_distance(pred, true, points: slice) -> float:
    p, t = _landmarks(pred, "pred_landmarks"), _landmarks(true, "true_landmarks")
    if p.shape != t.shape:
        raise InputError(f"pred_landmarks {p.shape} and true_landmarks {t.shape} must have the same shape")
    return float(np.linalg.norm(p[..., points, :] - t[..., points, :], axis=-1).mean())


def landmark_distance(pred_landmarks, true_landmarks) -> float:
    """Mean Euclidean distance over frames and all 68 points (pixels): ``[N,68,2] x2 -> float``."""
    return _mean_distance(pred_landmarks, true_landmarks, slice(0, 68))


def mouth_landmark_distance(pred_landmarks, true_landmarks) -> float:
    """Mean Euclidean distance over frames and the mouth points 48-67 (pixels)."""
    return _mean_distance(pred_landmarks, true_landmarks, MOUTH)


@torch.no_grad()
def landmarks_from_coeffs(face_model, coeffs, camera, batch: int = 256) -> torch.Tensor:
    """Project the face model's 68 landmarks for every frame: ``coeffs [N, 257]`` ->
    ``[N, 68, 2]`` pixels, via ``face_model.landmarks_2d(coeffs, camera)`` in batches of
    ``batch`` frames (bounds memory; the model itself is batched)."""
    coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
    if coeffs.ndim != 2 or coeffs.shape[1] != COEFF_DIM:
        raise InputError(f"coeffs must be [N, {COEFF_DIM}] coefficient vectors, got {tuple(coeffs.shape)}")
    chunks = [face_model.landmarks_2d(coeffs[i:i + batch], camera) for i in range(0, coeffs.shape[0], max(1, batch))]
    return torch.cat(chunks, 0) if chunks else coeffs.new_zeros(0, 68, 2)


def stage1_mouth_lmd(face_model, pred_expression, true_coeffs, camera, batch: int = 256) -> float:
    """Stage-1 mouth LMD: the true coefficients vs. the same with the expression replaced by
    the prediction (``pred_expression [N, 64]``, ``true_coeffs [N, 257]``), both projected
    with the true identity, pose and ``camera``. Pixels."""
    true_coeffs = torch.as_tensor(true_coeffs, dtype=torch.float32)
    pred_expression = torch.as_tensor(pred_expression, dtype=torch.float32)
    if pred_expression.ndim != 2 or pred_expression.shape[1] != EXP_DIM or pred_expression.shape[0] != true_coeffs.shape[0]:
        raise InputError(
            f"pred_expression must be [N, {EXP_DIM}] with N = {true_coeffs.shape[0]} frames of true_coeffs, "
            f"got {tuple(pred_expression.shape)}"
        )
    pred_coeffs = with_parts(true_coeffs, expression=pred_expression)
    pred_lm = landmarks_from_coeffs(face_model, pred_coeffs, camera, batch)
    true_lm = landmarks_from_coeffs(face_model, true_coeffs, camera, batch)
    return mouth_landmark_distance(pred_lm, true_lm)
