"""Head-pose similarity (HS) between two videos' Euler-angle sequences.

The paper proposes an HS measure (method.md section 9) whose exact formula could not be
verified. :func:`head_pose_similarity` is OUR definition, documented here, not the paper's:

For each video, and for each of the 3 Euler axes, summarise two quantities by a 1-D Gaussian
(mean ``m``, standard deviation ``s``, population std, floored at 0.1 degree so that a still
head does not give a degenerate spike):

* the angle itself (habitual tilt = mean, amplitude of motion = std), in degrees;
* its frame-to-frame velocity ``angle[t+1] - angle[t]`` (rhythm/speed of motion), in degrees
  per frame.

For each of these 6 pairs of Gaussians take the Bhattacharyya coefficient::

    BC = sqrt(2 s1 s2 / (s1^2 + s2^2)) * exp(-(m1 - m2)^2 / (4 (s1^2 + s2^2)))

and HS = the mean of the 6 coefficients. HS is in [0, 1], symmetric, and 1 iff the Gaussian
summaries coincide; it drops as the tilt shifts, the amplitude changes or the motion becomes
faster/slower. Both videos must be at the same frame rate (25 fps in this project).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from talkinghead.errors import InputError

#: Std floor in degrees (for angles) and degrees per frame (for velocities).
STD_FLOOR_DEG = 0.1


def _angles_deg(angles, name: str) -> np.ndarray:
    arr = angles.detach().cpu().numpy() if isinstance(angles, torch.Tensor) else np.asarray(angles)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 2:
        raise InputError(f"{name} must be Euler angles [N, 3] in radians with N >= 2 frames, got shape {arr.shape}")
    arr = np.degrees(arr.astype(np.float64))
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf angles")
    return arr


def pose_gaussian_summary(angles, name: str = "angles") -> tuple[np.ndarray, np.ndarray]:
    """``angles [N, 3]`` (radians) -> ``(mean [6], std [6])`` in degrees (per frame): angle x, y,
    z then velocity x, y, z; std floored at :data:`STD_FLOOR_DEG`."""
    deg = _angles_deg(angles, name)
    features = (deg, np.diff(deg, axis=0))  # [N, 3], [N-1, 3]
    mean = np.concatenate([f.mean(axis=0) for f in features])
    std = np.maximum(np.concatenate([f.std(axis=0) for f in features]), STD_FLOOR_DEG)
    return mean, std


def bhattacharyya_gaussian(m1, s1, m2, s2) -> np.ndarray:
    """Bhattacharyya coefficient of N(m1, s1^2) and N(m2, s2^2), elementwise with broadcasting."""
    var_sum = s1**2 + s2**2
    return np.sqrt(2.0 * s1 * s2 / var_sum) * np.exp(-((m1 - m2) ** 2) / (4.0 * var_sum))


def head_pose_similarity_matrix(angles_a: Sequence, angles_b: Sequence) -> np.ndarray:
    """HS for every pair: lists of ``[N_i, 3]`` angle arrays (radians) -> ``[A, B]`` in [0, 1]."""
    if len(angles_a) == 0 or len(angles_b) == 0:
        raise InputError("head_pose_similarity_matrix needs at least one angle sequence on each side")
    summary_a = [pose_gaussian_summary(a, f"angles_a[{i}]") for i, a in enumerate(angles_a)]
    summary_b = [pose_gaussian_summary(b, f"angles_b[{i}]") for i, b in enumerate(angles_b)]
    mean_a, std_a = (np.stack(x) for x in zip(*summary_a))  # [A, 6] each
    mean_b, std_b = (np.stack(x) for x in zip(*summary_b))  # [B, 6] each
    bc = bhattacharyya_gaussian(mean_a[:, None], std_a[:, None], mean_b[None], std_b[None])  # [A, B, 6]
    return bc.mean(axis=-1)


def head_pose_similarity(angles_a, angles_b) -> float:
    """HS (our definition, see the module docstring) of two Euler-angle sequences
    ``[Na, 3]`` and ``[Nb, 3]`` in radians; a float in [0, 1], 1 = identical summaries."""
    return float(head_pose_similarity_matrix([angles_a], [angles_b])[0, 0])
