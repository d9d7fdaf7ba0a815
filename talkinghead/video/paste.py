"""Paste a generated face crop back into the full original frame (method.md section 8).

The crop was cut from the frame by an affine alignment ``frame_to_crop`` (a ``[2, 3]`` matrix in
OpenCV's pixel convention, as used by ``cv2.warpAffine`` when cropping). Pasting warps the crop
back with ``crop_to_frame = invert_affine(frame_to_crop)`` and blends it over the frame inside a
mask: Poisson blending (``cv2.seamlessClone``, NORMAL_CLONE) by default, or a feathered alpha
blend.
"""

from __future__ import annotations

import cv2
import numpy as np

from talkinghead.errors import InputError


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``[2, 3]`` affine transform (e.g. ``frame_to_crop`` -> ``crop_to_frame``)."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"{name} must be a uint8 image [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return np.ascontiguousarray(image)


def _mask_to_float(mask: np.ndarray | None, crop_shape: tuple[int, int]) -> np.ndarray:
    """Crop mask as float32 ``[h, w]`` in [0, 1] (bool, 0..255 uint8 or 0..1 float accepted)."""
    if mask is None:
        return np.ones(crop_shape, dtype=np.float32)
    mask = np.asarray(mask)
    if mask.shape != crop_shape:
        raise InputError(f"mask must have the crop's size {crop_shape}, got {tuple(mask.shape)}")
    if mask.dtype == np.uint8:
        return mask.astype(np.float32) / 255.0
    return np.clip(mask.astype(np.float32), 0.0, 1.0)


def paste_back(
    frame: np.ndarray,
    crop: np.ndarray,
    crop_to_frame: np.ndarray,
    mask: np.ndarray | None = None,
    seamless: bool = True,
    feather: float | None = None,
) -> np.ndarray:
    """Warp ``crop [h, w, 3]`` into ``frame [H, W, 3]`` (both uint8) and blend it in.

    Args:
        frame: full original frame (not modified).
        crop: generated face crop.
        crop_to_frame: ``[2, 3]`` affine mapping crop pixel coordinates to frame pixel
            coordinates (the inverse of the alignment that cut the crop; see :func:`invert_affine`).
        mask: ``[h, w]`` region of the crop to paste (bool, uint8 0/255 or float 0..1); ``None``
            pastes the whole crop.
        seamless: Poisson blending with ``cv2.seamlessClone`` (matches colours at the mask border);
            ``False`` for a feathered alpha blend.
        feather: width in frame pixels of the soft alpha edge (``seamless=False``); default 4% of
            the pasted crop's size; 0 uses ``mask`` as the alpha as it is (a mask that is
            already soft, e.g. the mouth compositor's region).

    Returns:
        A new uint8 frame ``[H, W, 3]``; the frame unchanged where the mask does not land.
    """
    frame = _check_image(frame, "frame")
    crop = _check_image(crop, "crop")
    matrix = np.asarray(crop_to_frame, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise InputError(f"crop_to_frame must be a finite [2, 3] affine matrix, got shape {matrix.shape}")
    crop_mask = _mask_to_float(mask, crop.shape[:2])  # [h, w] in [0, 1]
    if seamless:
        return _seamless_blend(frame, crop, matrix, crop_mask)
    if feather is None:
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        feather = 0.04 * scale * min(crop.shape[:2])
    return _feathered_blend(frame, crop, matrix, crop_mask, feather)


def _footprint_box(matrix: np.ndarray, crop_shape: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """Integer box ``(x0, y0, x1, y1)`` in frame pixels around the warped crop, plus ``margin``."""
    crop_h, crop_w = crop_shape
    # Outer corners of the crop's pixels (pixel centres at integers, as in cv2.warpAffine).
    corners = np.array([[x, y, 1.0] for y in (-0.5, crop_h - 0.5) for x in (-0.5, crop_w - 0.5)])
    xs, ys = (corners @ matrix.T).T
    return (int(np.floor(xs.min())) - margin, int(np.floor(ys.min())) - margin,
            int(np.ceil(xs.max())) + margin + 1, int(np.ceil(ys.max())) + margin + 1)  # fmt: skip


def _warp_into_box(image: np.ndarray, matrix: np.ndarray, box: tuple[int, int, int, int], **kwargs) -> np.ndarray:
    """Warp ``image`` by ``matrix`` onto the canvas covering frame pixels ``box``."""
    x0, y0, x1, y1 = box
    shifted = matrix.copy()
    shifted[:, 2] -= (x0, y0)
    return cv2.warpAffine(image, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, **kwargs)


def _seamless_blend(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, crop_mask: np.ndarray) -> np.ndarray:
    """Poisson-blend the warped crop into the frame where the warped mask exceeds 0.5.

    The blend runs on a canvas around the warped crop only. Poisson blending pins the result to
    the destination on the mask's boundary; where the crop runs off the frame that boundary would
    be the frame edge and the face would fade into the frame's colours there, so the canvas may
    extend past the frame and, outside it, the destination is the warped crop itself (nothing is
    pinned at the frame edge). Only the frame part of the canvas is written back.
    """
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = box = _footprint_box(matrix, crop.shape[:2], margin=3)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)  # canvas ∩ frame
    if fx0 >= fx1 or fy0 >= fy1:
        return frame.copy()  # the crop lands outside the frame
    in_canvas = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    in_frame = (slice(fy0, fy1), slice(fx0, fx1))

    source = _warp_into_box(crop, matrix, box, borderMode=cv2.BORDER_REPLICATE)  # [h', w', 3]
    destination = source.copy()
    destination[in_canvas] = frame[in_frame]
    coverage = _warp_into_box(crop_mask, matrix, box)  # 0 outside the crop
    # Binary mask kept off the interpolated crop edge (and so off the canvas border).
    binary = cv2.erode((coverage > 0.5).astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    if not binary[in_canvas].any():
        return frame.copy()
    x, y, w, h = cv2.boundingRect(binary)
    centre = (x + w // 2, y + h // 2)  # OpenCV puts the mask's box at centre - size // 2: in place
    cloned = cv2.seamlessClone(source, destination, binary.copy(), centre, cv2.NORMAL_CLONE)  # it edits the mask
    # OpenCV solves over the mask's whole bounding box and can shift pixels outside the mask by
    # one grey level; keep the frame exactly as it was there.
    blended = np.where(binary[..., None] > 0, cloned, destination)
    out = frame.copy()
    out[in_frame] = blended[in_canvas]
    return out


def _feathered_blend(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, crop_mask: np.ndarray,
                     feather: float) -> np.ndarray:  # fmt: skip
    """Alpha-blend the warped crop: alpha is the warped mask shrunk by ``feather`` px, then
    blurred (``feather`` 0: the warped mask itself)."""
    height, width = frame.shape[:2]
    radius = max(int(round(feather)), 1) if feather > 0 else 0
    x0, y0, x1, y1 = _footprint_box(matrix, crop.shape[:2], margin=2 * radius + 2)
    box = (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))  # work on the frame region only
    if box[0] >= box[2] or box[1] >= box[3]:
        return frame.copy()
    region = (slice(box[1], box[3]), slice(box[0], box[2]))
    warped = _warp_into_box(crop, matrix, box, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    coverage = _warp_into_box(crop_mask, matrix, box)  # [h', w'], 0 outside the crop
    if radius:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        coverage = cv2.GaussianBlur(cv2.erode(coverage, kernel), (0, 0), sigmaX=radius / 2.0)
    alpha = coverage[..., None]  # [h', w', 1]
    out = frame.copy()
    background = frame[region].astype(np.float32)
    out[region] = np.clip(alpha * warped + (1.0 - alpha) * background + 0.5, 0, 255).astype(np.uint8)
    return out
