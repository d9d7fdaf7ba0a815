"""Ridge regression on MFCC windows: the per-person baseline and the fine-tuned model's
per-person linear correction.

:func:`ridge_fit` solves a ridge regression on standardised columns with an unshrunk intercept.
:class:`WindowRidge` applies one to flattened 28 x 12 MFCC windows (336 columns, each
standardised with the mean and deviation of the frames it was fitted on) and saves/loads it as
``.npz``.

Why a per-person ridge next to the fine-tuned network (``audio2coeff.finetune.person_ridge``,
on in the CPU preset): 285 windows of one person are few for a network and many for a linear
map of the same windows. Cross-validated over four blocks of each real video (README), a ridge
fitted on the person's other frames followed the held-out mouth with correlation 0.72 (31.mp4)
and 0.44 (the 8 s clip); the fine-tuned network reached 0.44 and 0.10, and the general model's
features added nothing to the ridge. The fine-tuned model's expression is
``blend * network + (1 - blend) * ridge``. The ridge's penalty and ``blend`` are chosen together
on the last sixth of the person's fine-tuning frames (250-299, with the ridge fitted on 0-249;
never on the held-out 300-399), by the error of the mouth landmarks' 3-D positions (``projection``;
the whole expression vector let blinks and brows pick the ridge on the synthetic persons), then
the ridge is refitted on all of 0-299 (:func:`select_person_blend`). The network judged there must
not have trained on 250-299: with early stopping it has not; with the fixed-step recipe a second
fine-tuning on 0-249 stands in for it (``train/audio2coeff.py``).

A ridge fitted on one voice does not carry to other voices (driven by another video's speech it
followed that video's mouth with correlation -0.2 to 0.2, the general model 0.5). So it keeps the
voice it was fitted on (:func:`~talkinghead.audio.features.voice_statistics`) and applies only to
driving audio whose :func:`~talkinghead.audio.features.voice_distance` is below ``voice_gate``
(:meth:`WindowRidge.voice_weight`; default [0.35, 0.5]: other stretches of the same recording
measured 0.15-0.34, other speakers and recordings 0.58-1.26). Foreign speech gets the network alone.

The person's ridge reads plain MFCC windows (``cmvn=False``), each column standardised with the
person's own fine-tuning frames, not the network's per-utterance CMVN windows: it only ever reads
the person's own voice (the gate), so their recording's statistics are the right reference, while
the mean and spread of a short driving utterance move with what is said in it. Cross-validated on
the two real videos (session 24, same penalties and blends) the fine-tuned correlation rose
0.714 -> 0.718 and 0.341 -> 0.349, on 31.mp4's protocol block 0.654 -> 0.685. The cepstra leave
out c0, so a gain change moves neither kind of window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talkinghead.audio.features import iter_frame_windows, voice_distance, voice_statistics

__all__ = ["ridge_fit", "WindowRidge", "fit_window_ridge", "predict_ridge", "select_ridge_penalty", "select_person_blend"]


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression of ``y [M, D]`` on the columns of ``x [M, F]``, each standardised over
    the ``M`` rows, with an unshrunk intercept: ``(mean [F], std [F], weights [F + 1, D])``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    design = np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)  # [M, F+1]
    penalty = float(lam) * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(design.T @ design + penalty, design.T @ y)  # [F+1, D]
    return mean, std, weights


@dataclass
class WindowRidge:
    """``y [N, D] = [standardised flattened window, 1] @ weights`` for MFCC windows ``[N, 28, 12]``."""

    mean: np.ndarray  # [336]
    std: np.ndarray  # [336]
    weights: np.ndarray  # [337, D]
    lam: float = 100.0
    blend: float = 0.0  # weight of the network's prediction next to this ridge (fine-tuned models)
    voice_mean: np.ndarray | None = None  # [12] voice_statistics of the audio it was fitted on
    voice_std: np.ndarray | None = None  # [12]
    voice_gate: tuple[float, float] | None = None  # voice distances where its weight starts to fall, and reaches 0
    cmvn: bool | None = None  # its windows: per-utterance CMVN or not; None (files before session 24): the network's

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """``windows [N, 28, 12]`` -> float32 ``[N, D]``."""
        x = (np.asarray(windows, np.float64).reshape(len(windows), -1) - self.mean) / self.std  # [N, 336]
        return (np.concatenate([x, np.ones((len(x), 1))], axis=1) @ self.weights).astype(np.float32)

    def voice_weight(self, audio: np.ndarray, sample_rate: int = 16000) -> tuple[float, float | None]:
        """``(weight, distance)``: how much of the ridge to use for driving ``audio``: 1 for the
        voice it was fitted on (:func:`~talkinghead.audio.features.voice_distance` up to
        ``voice_gate[0]``), falling linearly to 0 at ``voice_gate[1]`` and beyond (another
        speaker or recording: a ridge fitted on one voice does not carry to others). Always 1
        (distance None) for a ridge saved without its voice."""
        if self.voice_gate is None or self.voice_mean is None or self.voice_std is None:
            return 1.0, None
        distance = voice_distance((self.voice_mean, self.voice_std), voice_statistics(audio, sample_rate))
        low, high = self.voice_gate
        return float(np.clip((high - distance) / max(high - low, 1e-6), 0.0, 1.0)), distance

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.npz``) atomically."""
        path = Path(path)
        tmp = path.with_name(f".tmp_{os.getpid()}_{path.name}")
        extra = {} if self.voice_gate is None else {"voice_mean": self.voice_mean, "voice_std": self.voice_std,
                                                    "voice_gate": np.asarray(self.voice_gate, np.float64)}
        if self.cmvn is not None:
            extra["cmvn"] = np.bool_(self.cmvn)
        with open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, std=self.std, weights=self.weights, lam=np.float64(self.lam),
                     blend=np.float64(self.blend), **extra)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WindowRidge":
        with np.load(path) as data:
            voice = {}
            if "voice_gate" in data:
                voice = {"voice_mean": data["voice_mean"], "voice_std": data["voice_std"],
                         "voice_gate": tuple(float(v) for v in data["voice_gate"])}
            cmvn = bool(data["cmvn"]) if "cmvn" in data else None
            return cls(data["mean"], data["std"], data["weights"], float(data["lam"]), float(data["blend"]), **voice,
                       cmvn=cmvn)


def fit_window_ridge(windows: np.ndarray, targets: np.ndarray, lam: float) -> WindowRidge:
    """Fit :class:`WindowRidge` on ``windows [M, 28, 12]`` -> ``targets [M, D]``."""
    return WindowRidge(*ridge_fit(np.asarray(windows).reshape(len(windows), -1), targets, lam), lam=float(lam))


def predict_ridge(ridge: WindowRidge, audio: np.ndarray, num_frames: int, default_cmvn: bool = False,
                  chunk_frames: int = 250) -> np.ndarray:
    """``ridge`` run on mono 16 kHz ``audio [S]`` as an utterance of its own: float32
    ``[num_frames, D]``. Its windows are plain MFCC or CMVN as ``ridge.cmvn`` says
    (``default_cmvn``, the network's, for files saved without it), computed in blocks of
    ``chunk_frames`` frames (bounded memory for any length).

    The network's speed ensemble is not applied to the ridge: averaged over the same rates it
    followed the held-out mouth better alone (cross-validated, 31.mp4 0.741 -> 0.751), but blended
    as fine-tuning chooses, the 8 s clip fell (0.126 -> 0.079) and 31.mp4 moved by 0.003 (session
    26, README)."""
    cmvn = default_cmvn if ridge.cmvn is None else ridge.cmvn
    blocks = [ridge.predict_windows(block) for block in
              iter_frame_windows(np.asarray(audio, np.float32), chunk_frames=chunk_frames, num_frames=num_frames, cmvn=cmvn)]
    return np.concatenate(blocks) if blocks else np.zeros((0, ridge.weights.shape[1]), np.float32)


def select_ridge_penalty(windows: np.ndarray, targets: np.ndarray, split: int,
                         candidates: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)) -> float:
    """The penalty among ``candidates`` with the lowest mean squared error on rows ``split:``
    when fitted on rows ``:split``."""
    errors = []
    for lam in candidates:
        ridge = fit_window_ridge(windows[:split], targets[:split], lam)
        errors.append(float(np.mean((ridge.predict_windows(windows[split:]) - targets[split:]) ** 2)))
    return float(candidates[int(np.argmin(errors))])


def select_person_blend(windows: np.ndarray, targets: np.ndarray, network: np.ndarray, split: int,
                        candidates: tuple[float, ...] = (30.0, 100.0, 300.0, 1000.0),
                        blends: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 2)),
                        projection: np.ndarray | None = None) -> WindowRidge:
    """The person's ridge and its blend with the network: ``windows [M, 28, 12]``, ``targets
    [M, D]``, the network's prediction ``network [M - split, D]`` of rows ``split:``. The penalty and
    the blend with the lowest mean squared error on rows ``split:`` (ridge fitted on ``:split``)
    win; the returned ridge is refitted on all rows with that penalty. ``projection [D, K]``
    measures the error after ``@ projection`` (fine-tuning passes the mouth landmarks' 3-D
    positions per expression coefficient, so that the mouth decides, not the brows or blinks)."""
    if len(network) != len(windows) - split:
        raise ValueError(f"network has {len(network)} rows; it predicts rows {split}: of {len(windows)}")
    project = (lambda e: e) if projection is None else (lambda e: e @ projection)  # noqa: E731
    best = (np.inf, candidates[0], 1.0)
    for lam in candidates:
        ridge = fit_window_ridge(windows[:split], targets[:split], lam).predict_windows(windows[split:])
        for blend in blends:
            error = float(np.mean(project(blend * network + (1.0 - blend) * ridge - targets[split:]) ** 2))
            if error < best[0]:
                best = (error, lam, float(blend))
    final = fit_window_ridge(windows, targets, best[1])
    final.blend = best[2]
    return final
