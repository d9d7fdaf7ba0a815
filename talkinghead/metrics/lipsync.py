"""A lip-sync measure from mouth landmarks: correlation of mouth opening over time.

:func:`mouth_opening` turns 68-point landmarks into one number per frame; :func:`lip_sync_score`
compares the predicted and the true opening curves by Pearson correlation at integer time
offsets. A well-synchronised prediction correlates best at offset 0; a prediction that lags
the truth by ``k`` frames (``pred[t + k]`` resembles ``true[t]``) correlates best at ``+k``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from talkinghead.errors import InputError

#: 0-based 68-point indices: inner-lip middle top/bottom, and the outer mouth corners.
INNER_LIP_TOP, INNER_LIP_BOTTOM = 62, 66
MOUTH_LEFT, MOUTH_RIGHT = 48, 54


class LipSync(NamedTuple):
    """Pearson correlation at offset 0, the offset (frames, positive = prediction lags) with
    the highest correlation, and that correlation."""

    corr_at_zero: float
    best_offset: int
    corr_at_best: float


def _numpy(x) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr.astype(np.float64, copy=False)


def mouth_opening(landmarks, normalize: bool = True) -> np.ndarray:
    """Mouth opening per frame: ``landmarks [N, 68, 2]`` -> ``[N]``.

    The Euclidean distance between the inner-lip middle points 62 (top) and 66 (bottom),
    divided by the mouth width (distance between the corners 48 and 54) when ``normalize``
    (unitless, insensitive to face size and distance), else in pixels.
    """
    lm = _numpy(landmarks)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise InputError(f"landmarks must be [N, 68, 2], got shape {lm.shape}")
    opening = np.linalg.norm(lm[:, INNER_LIP_TOP] - lm[:, INNER_LIP_BOTTOM], axis=-1)
    if normalize:
        width = np.linalg.norm(lm[:, MOUTH_LEFT] - lm[:, MOUTH_RIGHT], axis=-1)
        opening = opening / np.maximum(width, 1e-8)
    return opening


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either signal is constant (no linear relation measurable)."""
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def lip_sync_score(pred_opening, true_opening, max_offset: int = 5) -> LipSync:
    """Correlate predicted and true mouth opening (``[N]`` each) at offsets ``-max_offset ..
    +max_offset`` frames.

    At offset ``k >= 0`` the pairs are ``(pred[t + k], true[t])`` for ``t = 0 .. N-1-k`` (the
    prediction lags by ``k``); at ``k < 0`` they are ``(pred[t], true[t - k])``. The
    correlation at each offset is Pearson's r over the overlapping frames (0 for a constant
    signal); ties go to the smallest ``|k|``.
    """
    pred, true = _numpy(pred_opening), _numpy(true_opening)
    if pred.ndim != 1 or pred.shape != true.shape:
        raise InputError(f"pred_opening and true_opening must be 1-D of equal length, got {pred.shape} and {true.shape}")
    if max_offset < 0 or pred.shape[0] < max_offset + 3:
        raise InputError(f"lip_sync_score needs max_offset >= 0 and at least max_offset + 3 frames, got {pred.shape[0]} frames")
    n = pred.shape[0]
    offsets = sorted(range(-max_offset, max_offset + 1), key=lambda k: (abs(k), k))
    corr = {k: _pearson(pred[k:], true[:n - k]) if k >= 0 else _pearson(pred[:n + k], true[-k:]) for k in offsets}
    best = max(offsets, key=lambda k: corr[k])  # first maximum in |k| order
    return LipSync(corr_at_zero=corr[0], best_offset=int(best), corr_at_best=corr[best])
