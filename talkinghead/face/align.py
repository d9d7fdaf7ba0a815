"""5-point similarity alignment to a square crop (method.md section 2).

Five points: left eye centre, right eye centre (as seen in the image), nose tip, left and right
mouth corners. The template is the widely used ArcFace 112 x 112 template, scaled to the crop
size and zoomed out by ``TEMPLATE_ZOOM`` so that the crop keeps forehead, chin and some
background (the face then spans roughly the middle 60 % of the crop).
"""

from __future__ import annotations

import cv2
import numpy as np

from talkinghead.errors import InputError
from talkinghead.face.morphable import five_points  # the one definition of the 5 points

_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
TEMPLATE_ZOOM = 0.75


def five_point_template(crop_size: int = 224, zoom: float = TEMPLATE_ZOOM) -> np.ndarray:
    """Target positions ``[5, 2]`` of the five points in a ``crop_size`` crop."""
    centre = np.array([56.0, 56.0])
    return ((_ARCFACE_112 - centre) * zoom + centre) * (crop_size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping points ``src [K,2]`` onto
    ``dst [K,2]``; returns the ``[2, 3]`` affine matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    var = (s**2).sum() / len(src)
    if var < 1e-12:
        raise InputError("degenerate landmarks (all points coincide); the face detection failed for this frame")
    scale = np.trace(np.diag(sig) @ sign) / var
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1).astype(np.float32)


def alignment_transforms(landmarks68: np.ndarray, crop_size: int = 224) -> np.ndarray:
    """Per-frame transforms ``[N, 2, 3]`` mapping full-frame pixels into the aligned crop."""
    template = five_point_template(crop_size)
    pts = five_points(np.asarray(landmarks68, np.float64))
    return np.stack([similarity_transform(p, template) for p in pts.reshape(-1, 5, 2)]).reshape(
        *pts.shape[:-2], 2, 3
    )


def warp_crop(frame: np.ndarray, transform: np.ndarray, crop_size: int = 224) -> np.ndarray:
    """Cut a ``crop_size`` crop from ``frame [H,W,3]`` with the frame->crop ``transform [2,3]``."""
    return cv2.warpAffine(
        np.ascontiguousarray(frame), np.asarray(transform, np.float64), (crop_size, crop_size),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101,
    )


def apply_transform(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Map points ``[..., 2]`` with an affine ``[2, 3]``."""
    t = np.asarray(transform, np.float64)
    return (np.asarray(points, np.float64) @ t[:, :2].T + t[:, 2]).astype(np.float32)


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a ``[2, 3]`` affine (crop -> frame)."""
    return cv2.invertAffineTransform(np.asarray(transform, np.float64)).astype(np.float32)


def reference_five_points(landmarks68: np.ndarray, reference_frames: int = 25) -> np.ndarray:
    """A robust stand-in for frame 0's five points: the per-coordinate median ``[5, 2]`` of the
    five points over the first ``reference_frames`` frames of ``landmarks68 [N, 68, 2]`` (one
    second at 25 fps). One frame's detection jitters by a pixel or two and may catch a blink or
    a turn; the median keeps the fixed crop centred on the head's usual place."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.ndim != 3 or len(lm) == 0:
        raise InputError(f"reference_five_points needs landmarks [N, 68, 2] with N >= 1, got {lm.shape}")
    return np.median(five_points(lm[: max(1, int(reference_frames))]), axis=0)


def fixed_transform(landmarks68: np.ndarray, crop_size: int = 224, reference_frames: int = 25) -> np.ndarray:
    """The fixed crop's transform ``[2, 3]`` (full frame -> crop), used for every frame: the
    5-point similarity of :func:`reference_five_points` onto the template (method.md section 2:
    "frame 0's transform", made robust)."""
    return similarity_transform(reference_five_points(landmarks68, reference_frames), five_point_template(crop_size))
