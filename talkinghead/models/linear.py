"""Ridge regression on MFCC windows: the per-person baseline and the fine-tuned model's
per-person linear correction.

:func:`ridge_fit` solves a ridge regression on standardised columns with an unshrunk intercept.
:class:`WindowRidge` applies one to flattened 28 x 12 MFCC windows (336 columns, each
standardised with the mean and deviation of the frames it was fitted on) and saves/loads it as
``.npz``.

Why a per-person ridge next to the fine-tuned network (``audio2coeff.finetune.person_ridge``):
285 windows of one person are few for a network and many for a linear map of the same windows
(a ridge regression fitted on one real video's frames 0-299 follows her held-out mouth with
correlation 0.69, where network fine-tuning reached about 0.48). When it is on, the fine-tuned
model's expression is ``blend * network + (1 - blend) * ridge``; the ridge's penalty and ``blend`` are
chosen together on the last sixth of the person's training frames (250-299, with the ridge fitted
on 0-249; never on the held-out 300-399), then the ridge is refitted on all of 0-299
(:func:`select_person_blend`). With early stopping the network, too, had only trained on 0-249;
with the fixed-step recipe (the CPU preset since session 22) it has seen 250-299, which favours
the network in the blend. On that video it raised the held-out
correlation to 0.60 but lowered how well the mouth followed other speakers' recordings, so the
CPU preset leaves it off (README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ridge_fit", "WindowRidge", "fit_window_ridge", "select_ridge_penalty", "select_person_blend"]


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

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """``windows [N, 28, 12]`` -> float32 ``[N, D]``."""
        x = (np.asarray(windows, np.float64).reshape(len(windows), -1) - self.mean) / self.std  # [N, 336]
        return (np.concatenate([x, np.ones((len(x), 1))], axis=1) @ self.weights).astype(np.float32)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.npz``) atomically."""
        path = Path(path)
        tmp = path.with_name(f".tmp_{os.getpid()}_{path.name}")
        with open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, std=self.std, weights=self.weights, lam=np.float64(self.lam),
                     blend=np.float64(self.blend))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WindowRidge":
        with np.load(path) as data:
            return cls(data["mean"], data["std"], data["weights"], float(data["lam"]), float(data["blend"]))


def fit_window_ridge(windows: np.ndarray, targets: np.ndarray, lam: float) -> WindowRidge:
    """Fit :class:`WindowRidge` on ``windows [M, 28, 12]`` -> ``targets [M, D]``."""
    return WindowRidge(*ridge_fit(np.asarray(windows).reshape(len(windows), -1), targets, lam), lam=float(lam))


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
                        blends: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))) -> WindowRidge:
    """The person's ridge and its blend with the network: ``windows [M, 28, 12]``, ``targets
    [M, D]``, the network's prediction ``network [M, D]`` of the same frames. The penalty and
    the blend with the lowest mean squared error on rows ``split:`` (ridge fitted on ``:split``)
    win; the returned ridge is refitted on all rows with that penalty."""
    best = (np.inf, candidates[0], 1.0)
    for lam in candidates:
        ridge = fit_window_ridge(windows[:split], targets[:split], lam).predict_windows(windows[split:])
        for blend in blends:
            error = float(np.mean((blend * network[split:] + (1.0 - blend) * ridge - targets[split:]) ** 2))
            if error < best[0]:
                best = (error, lam, float(blend))
    final = fit_window_ridge(windows, targets, best[1])
    final.blend = best[2]
    return final
