"""Stage-1 evaluation on a person's held-out frames, and the two baselines it is compared to.

:func:`evaluate_audio2coeff` runs the model on the audio of the held-out frames (300-399 by
default) as a new utterance of its own (held-out audio: 0.12 s of zero padding at both ends,
LSTM from a zero state) and compares with the clip's fitted coefficients of those frames:

``lmd``             mouth LMD (points 48-67, pixels at 224 x 224) between the landmarks of the
                    true coefficients and the same with the expression replaced by the
                    prediction: true identity, pose and camera on both sides
                    (:func:`talkinghead.metrics.stage1_mouth_lmd`), so it measures mouth shape.
``lipsync_corr``    Pearson correlation of predicted vs true mouth opening at offset 0;
``lipsync_offset``  the offset (frames, + = prediction lags) with the best correlation
                    (:func:`talkinghead.metrics.lip_sync_score`, +-5 frames).
``hs``              head-pose similarity (our definition, :mod:`talkinghead.metrics.pose`) of
                    the predicted angles smoothed with a Hanning window of 7 frames (the
                    ``pose=predicted`` mode) vs the real angles of the same frames.
``lmd_mean_expression``  baseline: every frame gets the mean expression of the clip's training
                    frames (0-299; "this person's average face"; it knows the person's habitual
                    expression, which a general model cannot).
``lmd_corpus_mean`` baseline (when a :class:`LoudnessBaseline` is given): every frame gets the
                    mean expression of the training persons (what a general model that
                    ignores the audio would predict).
``lmd_loudness``    baseline (when a :class:`LoudnessBaseline` is given): ridge regression
                    from the loudness envelope around each frame to the expression, fitted
                    on the training persons (:func:`fit_loudness_baseline`; fit it with
                    ``center_expression=model.expression_centered`` so that it gets the
                    person's reference expression exactly when the model does). It tells
                    whether the model learned more than "louder = more open".
``ridge_lmd``, ``ridge_lipsync_corr``, ``ridge_lipsync_offset``  baseline (default on): the
                    per-person ridge regression of :func:`fit_ridge_baseline`, fitted on the
                    clip's own training frames (0-299) and run on the same held-out audio as the
                    model; mouth LMD and lip sync as above. It is what "learning this person's
                    audio-to-mouth mapping from 300 frames" achieves with a linear map, so a
                    fine-tuned model must beat it.
``hs_real_train``   reference: HS of the clip's real training-frame angles vs the held-out ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from talkinghead.audio.features import frame_windows
from talkinghead.data.clip import PersonClip, read_clip
from talkinghead.data.stage1_dataset import reference_expression
from talkinghead.errors import InputError
from talkinghead.face.camera import Camera
from talkinghead.face.coeffs import EXP_DIM, SLICES, with_parts
from talkinghead.metrics.landmarks import landmarks_from_coeffs, mouth_landmark_distance
from talkinghead.metrics.lipsync import lip_sync_score, mouth_opening
from talkinghead.metrics.pose import head_pose_similarity
from talkinghead.models.audio2coeff import ExpressionPoseLSTM
from talkinghead.models.linear import ridge_fit
from talkinghead.pipeline.pose import smooth_pose
from talkinghead.pipeline.stage1 import predict_expression_pose

__all__ = [
    "RidgeBaseline",
    "fit_ridge_baseline",
    "LoudnessBaseline",
    "fit_loudness_baseline",
    "loudness_features",
    "evaluate_audio2coeff",
]

#: Loudness features per frame: the 28 MFCC-row log energies of the frame's window, averaged
#: in groups of this many rows (7 values spanning -120 ms .. +160 ms around the frame).
LOUDNESS_GROUP = 4
_PAD_SECONDS = 0.12
_ROW_SECONDS, _STEP_SECONDS = 0.025, 0.010
_WINDOW_ROWS = 28


def loudness_features(audio: np.ndarray, num_frames: int | None = None, sample_rate: int = 16000, fps: int = 25) -> np.ndarray:
    """Loudness envelope around each video frame: float64 ``[N, 7]``.

    The audio is padded and framed exactly like the MFCC windows (0.12 s of zeros at both
    ends; 25 ms rows every 10 ms; frame ``t`` gets rows ``[4t, 4t + 28)``); each row's value is
    its log mean-square energy; groups of 4 rows are averaged.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise InputError(f"audio must be mono [S], got shape {audio.shape}")
    pad = int(round(_PAD_SECONDS * sample_rate))
    row_len, step = int(round(_ROW_SECONDS * sample_rate)), int(round(_STEP_SECONDS * sample_rate))
    padded = np.pad(audio, (pad, pad + row_len))
    squares = np.concatenate([[0.0], np.cumsum(padded**2)])  # prefix sums: row energy in O(1)
    num_rows = 1 + max(len(audio) + 2 * pad - row_len, 0) // step
    starts = np.arange(num_rows) * step
    energy = np.log((squares[starts + row_len] - squares[starts]) / row_len + 1e-8)  # [R]
    if num_frames is None:
        num_frames = int(round(len(audio) * fps / sample_rate))
    rows_per_frame = sample_rate / (fps * step)
    first = np.floor(np.arange(num_frames) * rows_per_frame + 0.5).astype(np.int64)  # [N]
    rows = np.clip(first[:, None] + np.arange(_WINDOW_ROWS), 0, num_rows - 1)  # [N, 28]
    return energy[rows].reshape(num_frames, -1, LOUDNESS_GROUP).mean(axis=-1)  # [N, 7]


@dataclass
class LoudnessBaseline:
    """Ridge regression ``expression = [standardised loudness, 1] @ weights`` (+ the person's
    reference expression when ``centered``: then it was fitted on targets relative to each
    training person's reference expression, the information a centred Stage-1 model gets)."""

    mean: np.ndarray  # [F]
    std: np.ndarray  # [F]
    weights: np.ndarray  # [F + 1, 64]
    mean_expression: np.ndarray  # [64] the training persons' mean (absolute) expression
    centered: bool = False

    def predict(self, audio: np.ndarray, num_frames: int | None = None,
                expression_reference: np.ndarray | None = None) -> np.ndarray:
        """Expression ``[N, 64]`` (float32) from mono 16 kHz ``audio`` (a centred baseline needs
        the person's ``expression_reference [64]``)."""
        x = (loudness_features(audio, num_frames) - self.mean) / self.std
        pred = np.concatenate([x, np.ones((len(x), 1))], axis=1) @ self.weights
        if self.centered:
            if expression_reference is None:
                raise InputError("this loudness baseline is centred; pass the person's expression_reference")
            pred = pred + np.asarray(expression_reference, np.float64)
        return pred.astype(np.float32)


def fit_loudness_baseline(clips: Sequence[PersonClip | str | os.PathLike], ridge: float = 1.0,
                          center_expression: bool = False) -> LoudnessBaseline:
    """Fit the loudness-only baseline on all frames of ``clips`` (the training persons);
    ``center_expression``: targets relative to each clip's reference expression (compare it
    with a Stage-1 model trained the same way, ``model.expression_centered``)."""
    features, targets, absolute = [], [], []
    for clip in clips:
        clip = clip if isinstance(clip, PersonClip) else read_clip(clip)
        if clip.audio is None:
            continue
        features.append(loudness_features(clip.audio, clip.num_frames, clip.meta.sample_rate, clip.meta.fps))
        expression = np.asarray(clip.coeffs[:, SLICES["expression"]], np.float64)  # [F, 64]
        absolute.append(expression)
        targets.append(expression - reference_expression(clip) if center_expression else expression)
    if not features:
        raise InputError("fit_loudness_baseline needs at least one clip with audio")
    x, y = np.concatenate(features), np.concatenate(targets)  # [M, F], [M, 64]
    mean, std, weights = ridge_fit(x, y, ridge)  # [F], [F], [F+1, 64]
    corpus_mean = np.concatenate(absolute).mean(axis=0).astype(np.float32)
    return LoudnessBaseline(mean, std, weights, corpus_mean, bool(center_expression))


@dataclass
class RidgeBaseline:
    """Per-person linear map ``expression [N, 64] = [standardised window, 1] @ weights``.

    The input is the flattened 28 x 12 MFCC window of each frame (336 values, the model's own
    input); each of the 336 columns is standardised with the mean and deviation over the
    frames it was fitted on (``mean``/``std`` ``[336]``); ``weights [337, 64]`` include the
    (unshrunk) intercept, so absolute expressions come out.
    """

    mean: np.ndarray  # [336]
    std: np.ndarray  # [336]
    weights: np.ndarray  # [337, 64]

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """``windows [N, 28, 12]`` -> expression float32 ``[N, 64]``."""
        x = (np.asarray(windows, np.float64).reshape(len(windows), -1) - self.mean) / self.std  # [N, 336]
        return (np.concatenate([x, np.ones((len(x), 1))], axis=1) @ self.weights).astype(np.float32)

    def predict(self, audio: np.ndarray, num_frames: int | None = None, sample_rate: int = 16000,
                fps: int = 25) -> np.ndarray:
        """Expression ``[N, 64]`` for every video frame of mono ``audio [S]`` (an utterance of its own)."""
        return self.predict_windows(frame_windows(audio, num_frames, fps=fps, sample_rate=sample_rate))


def fit_ridge_baseline(clip: PersonClip | str | os.PathLike, train_frames: slice | None = None,
                       lam: float = 100.0) -> RidgeBaseline:
    """Fit the per-person ridge baseline on ``train_frames`` of ``clip`` (default its training
    frames 0-299): MFCC windows of the clip's whole audio (as fine-tuning sees them) -> the
    fitted 64 expression coefficients, ``lam`` the ridge penalty on standardised columns."""
    clip = clip if isinstance(clip, PersonClip) else read_clip(clip)
    if clip.audio is None:
        raise InputError(f"{clip.root}: this clip has no audio track; the ridge baseline needs speech")
    start, stop, _ = (clip.train_slice if train_frames is None else train_frames).indices(clip.num_frames)
    if stop - start < 2:
        raise InputError(f"{clip.root}: frames {start}-{stop - 1} are too few to fit the ridge baseline (need >= 2)")
    windows = frame_windows(clip.audio, clip.num_frames, fps=clip.meta.fps, sample_rate=clip.meta.sample_rate)
    x = windows[start:stop].reshape(stop - start, -1)  # [M, 336]
    y = np.asarray(clip.coeffs[start:stop, SLICES["expression"]], np.float64)  # [M, 64]
    return RidgeBaseline(*ridge_fit(x, y, lam))


@torch.no_grad()
def evaluate_audio2coeff(
    model: ExpressionPoseLSTM,
    clip: PersonClip | str | os.PathLike,
    face_model,
    frames: slice | None = None,
    loudness_baseline: LoudnessBaseline | None = None,
    smoothing: int = 7,
    ridge_lam: float | None = 100.0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Stage-1 metrics of ``model`` on ``frames`` of ``clip`` (default its held-out frames
    300-399) and the baselines; see the module docstring for each key (``ridge_lam=None``
    skips the ridge baseline)."""
    clip = clip if isinstance(clip, PersonClip) else read_clip(clip)
    frames = clip.test_slice if frames is None else frames
    start, stop, _ = frames.indices(clip.num_frames)
    count = stop - start
    if count < 8:
        raise InputError(f"{clip.root}: frames {start}-{stop - 1} are too few to evaluate Stage 1 (need >= 8)")
    audio = clip.audio_for_frames(slice(start, stop))
    expression, pose = predict_expression_pose(model, audio, num_frames=count, device=device,
                                               expression_reference=reference_expression(clip))

    camera = Camera()  # LMD in pixels of the 224 crop
    true_coeffs = torch.as_tensor(np.asarray(clip.coeffs[start:stop]), dtype=torch.float32)  # [N, 257]
    true_lm = landmarks_from_coeffs(face_model, true_coeffs, camera)  # [N, 68, 2]

    def mouth(expr: np.ndarray):
        lm = landmarks_from_coeffs(face_model, with_parts(true_coeffs, expression=torch.as_tensor(expr)), camera)
        return mouth_landmark_distance(lm, true_lm), lm

    lmd, pred_lm = mouth(expression)
    sync = lip_sync_score(mouth_opening(pred_lm), mouth_opening(true_lm), max_offset=min(5, count - 3))
    true_angles = true_coeffs[:, SLICES["angles"]].numpy()
    results = {
        "lmd": lmd,
        "lipsync_corr": sync.corr_at_zero,
        "lipsync_offset": float(sync.best_offset),
        "hs": head_pose_similarity(smooth_pose(pose, smoothing)[:, :3], true_angles),
    }
    train_start, train_stop, _ = clip.train_slice.indices(clip.num_frames)
    train_coeffs = np.asarray(clip.coeffs[train_start:train_stop], np.float32)
    if len(train_coeffs):
        mean_expression = train_coeffs[:, SLICES["expression"]].mean(axis=0)
        results["lmd_mean_expression"] = mouth(np.broadcast_to(mean_expression, (count, EXP_DIM)).copy())[0]
        if len(train_coeffs) >= 2:
            results["hs_real_train"] = head_pose_similarity(train_coeffs[:, SLICES["angles"]], true_angles)
        if len(train_coeffs) >= 2 and ridge_lam is not None:
            ridge = fit_ridge_baseline(clip, clip.train_slice, ridge_lam)
            ridge_lmd, ridge_lm = mouth(ridge.predict(audio, count, clip.meta.sample_rate, clip.meta.fps))
            ridge_sync = lip_sync_score(mouth_opening(ridge_lm), mouth_opening(true_lm), max_offset=min(5, count - 3))
            results.update(ridge_lmd=ridge_lmd, ridge_lipsync_corr=ridge_sync.corr_at_zero,
                           ridge_lipsync_offset=float(ridge_sync.best_offset))
    if loudness_baseline is not None:
        results["lmd_corpus_mean"] = mouth(np.broadcast_to(loudness_baseline.mean_expression, (count, EXP_DIM)).copy())[0]
        results["lmd_loudness"] = mouth(loudness_baseline.predict(audio, count, reference_expression(clip)))[0]
    return results
