"""Paste-back (talkinghead/video/paste.py) against a reference written out on the whole frame.

The library works on a box around the warped crop (bounded memory and time for any frame size);
the reference below does the same blend on the full frame with plain OpenCV calls, as the
docstrings describe it. Both must agree exactly, for crops inside the frame, across its edges,
at sub-pixel offsets and outside it, for both blend modes and every mask type.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from talkinghead.errors import InputError
from talkinghead.video import paste_back
from talkinghead.video.paste import invert_affine

H, W = 72, 96


def _frame(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, W)[None, :, None] * np.linspace(0.5, 1, H)[:, None, None]
    frame = (40 + 150 * ramp * np.array([1.0, 0.6, 0.3]) + rng.normal(0, 3, (H, W, 3))).clip(0, 255)
    frame[::7, ::5] = 0  # black dots: where nothing is pasted they must stay 0 (exactly)
    return frame.astype(np.uint8)


def _crop(size: int = 32, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = 128 + 100 * np.sin(xx / 2.5)[..., None] * np.cos(yy / 3.0)[..., None] * np.array([1.0, -0.7, 0.4])
    return (base + rng.normal(0, 8, (size, size, 3))).clip(0, 255).astype(np.uint8)


def _matrix(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def _disc_mask(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2) < (0.42 * size) ** 2


def reference_feathered(frame, crop, matrix, mask, feather=None):
    """Feathered blend on the full frame: alpha = warped mask, eroded by an ellipse of radius
    round(feather) (at least 1), blurred with sigma radius / 2; default feather 4 % of the
    pasted crop's size."""
    h, w = crop.shape[:2]
    if feather is None:
        feather = 0.04 * np.sqrt(abs(np.linalg.det(matrix[:, :2]))) * min(h, w)
    radius = max(int(round(feather)), 1)
    warped = cv2.warpAffine(crop, matrix, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    coverage = cv2.warpAffine(mask, matrix, (W, H), flags=cv2.INTER_LINEAR)  # 0 outside the crop
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    alpha = cv2.GaussianBlur(cv2.erode(coverage, kernel), (0, 0), sigmaX=radius / 2.0)[..., None]
    out = alpha * warped.astype(np.float32) + (1 - alpha) * frame.astype(np.float32) + 0.5
    return np.clip(out, 0, 255).astype(np.uint8)


def reference_seamless(frame, crop, matrix, mask):
    """Poisson blend on the full frame where the warped mask exceeds 0.5 (eroded by 3 x 3); the
    frame is unchanged elsewhere. Only for crops whose canvas lies inside the frame."""
    source = cv2.warpAffine(crop, matrix, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    coverage = cv2.warpAffine(mask, matrix, (W, H), flags=cv2.INTER_LINEAR)
    binary = cv2.erode((coverage > 0.5).astype(np.uint8) * 255, np.ones((3, 3), np.uint8))
    x, y, w, h = cv2.boundingRect(binary)
    cloned = cv2.seamlessClone(source, frame.copy(), binary.copy(), (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    return np.where(binary[..., None] > 0, cloned, frame), binary > 0


MASKS = {
    "none": None,
    "bool": _disc_mask(),
    "uint8": _disc_mask().astype(np.uint8) * 255,
    "float": np.clip(_disc_mask().astype(np.float32) * 1.7 - 0.35, -0.5, 1.5),  # clipped to [0, 1]
}
PLACES = {
    "inside": _matrix(1.3, 8.0, 30.0, 14.0),
    "half-pixel": _matrix(1.0, 0.0, 40.5, 20.5),  # coverage exactly 0.5 on the edges
    "off top-left": _matrix(1.2, -5.0, -12.0, -9.0),
    "off bottom-left": _matrix(1.1, 3.0, -10.0, 50.0),
    "off right": _matrix(0.9, 0.0, 80.0, 30.0),
    "outside": _matrix(1.0, 0.0, 200.0, 10.0),
}


def _float_mask(mask, size=32):
    if mask is None:
        return np.ones((size, size), np.float32)
    if mask.dtype == np.uint8:
        return mask.astype(np.float32) / 255.0
    return np.clip(mask.astype(np.float32), 0.0, 1.0)


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("feather", [None, 2.6])
def test_feathered_paste_equals_the_full_frame_reference(place, mask_kind, feather):
    frame, crop, matrix = _frame(), _crop(), PLACES[place]
    out = paste_back(frame, crop, matrix, mask=MASKS[mask_kind], seamless=False, feather=feather)
    expected = reference_feathered(frame, crop, matrix, _float_mask(MASKS[mask_kind]), feather)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    # exact but for OpenCV's fixed-point bilinear weights, which round differently when the
    # warp is shifted by the box's integer offset (rotated crops: a few pixels by 1-2 levels)
    diff = np.abs(out.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.005, (diff.max(), (diff > 0).mean())
    untouched = expected == frame  # alpha 0 (and the crop's own colour equal by chance): exact
    np.testing.assert_array_equal(out[untouched & (frame == 0)], 0)


@pytest.mark.parametrize("place", ["inside", "half-pixel"])
@pytest.mark.parametrize("mask_kind", list(MASKS))
def test_seamless_paste_equals_the_full_frame_reference(place, mask_kind):
    frame, crop, matrix = _frame(), _crop(), PLACES[place]
    out = paste_back(frame, crop, matrix, mask=MASKS[mask_kind])  # seamless is the default
    expected, inside = reference_seamless(frame, crop, matrix, _float_mask(MASKS[mask_kind]))
    np.testing.assert_array_equal(out[~inside], frame[~inside])  # untouched outside the mask
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert (out[inside] != frame[inside]).any(axis=-1).mean() > 0.75  # the face is there


@pytest.mark.parametrize("place", ["off top-left", "off bottom-left", "off right"])
def test_seamless_paste_across_the_frame_edge_reaches_the_edge(place):
    """Across the frame's edge the face is pasted up to the edge, and the frame is unchanged
    outside the (eroded) warped mask."""
    frame, crop, matrix = _frame(), _crop(), PLACES[place]
    out = paste_back(frame, crop, matrix)
    coverage = cv2.warpAffine(np.ones((32, 32), np.float32), matrix, (W, H), flags=cv2.INTER_LINEAR)
    inside = cv2.erode((coverage > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    np.testing.assert_array_equal(out[~inside], frame[~inside])
    edge = np.zeros((H, W), bool)
    edge[0, :], edge[-1, :], edge[:, 0], edge[:, -1] = True, True, True, True
    assert (inside & edge).any()
    # the face is written up to the frame's edge (the rows/columns there are not left out)
    on_edge = inside & edge
    assert (out[on_edge] != frame[on_edge]).any(axis=-1).mean() > 0.75


def test_outside_the_frame_and_input_errors():
    frame, crop = _frame(), _crop()
    for seamless in (True, False):
        np.testing.assert_array_equal(paste_back(frame, crop, PLACES["outside"], seamless=seamless), frame)
    # the working box (footprint + margin 2 * 3 + 2 for feather 2.6) starts exactly at the frame's
    # right edge: an empty box, the frame comes back unchanged
    np.testing.assert_array_equal(paste_back(frame, crop, _matrix(1.0, 0.0, 104.5, 10.0), seamless=False, feather=2.6),
                                  frame)
    np.testing.assert_array_equal(paste_back(frame, crop, _matrix(1.0, 0.0, 10.0, 80.5), seamless=False, feather=2.6),
                                  frame)
    with pytest.raises(InputError, match=r"frame must be a uint8 image \[H, W, 3\]"):
        paste_back(frame[..., 0], crop, PLACES["inside"])
    with pytest.raises(InputError, match=r"frame must be a uint8 image"):
        paste_back(frame[..., :2], crop, PLACES["inside"])
    with pytest.raises(InputError, match=r"crop must be a uint8 image"):
        paste_back(frame, crop.astype(np.float32), PLACES["inside"])
    with pytest.raises(InputError, match=r"crop_to_frame must be a finite \[2, 3\] affine"):
        paste_back(frame, crop, np.full((2, 3), np.nan))
    with pytest.raises(InputError, match=r"mask must have the crop's size \(32, 32\)"):
        paste_back(frame, crop, PLACES["inside"], mask=np.ones((31, 32), bool))


def test_feather_zero_blends_exactly_the_given_alpha():
    """``feather=0``: a soft mask (the mouth compositor's) is the alpha as it is, no erosion or blur."""
    frame = np.full((60, 80, 3), 50, np.uint8)
    crop = np.full((20, 20, 3), 250, np.uint8)
    alpha = np.zeros((20, 20), np.float32)
    alpha[5:15, 5:15] = 0.5
    alpha[8:12, 8:12] = 1.0
    out = paste_back(frame, crop, [[1.0, 0, 30], [0, 1.0, 20]], mask=alpha, seamless=False, feather=0)  # (x, y) -> (x + 30, y + 20)
    expected = frame.copy()
    expected[25:35, 35:45] = 150  # 0.5 * 250 + 0.5 * 50
    expected[28:32, 38:42] = 250
    np.testing.assert_array_equal(out, expected)


def test_a_feather_under_one_pixel_still_softens_one_pixel():
    frame, crop, matrix, mask = _frame(), _crop(), PLACES["inside"], _disc_mask()
    out = paste_back(frame, crop, matrix, mask=mask, seamless=False, feather=0.4)
    np.testing.assert_array_equal(out, paste_back(frame, crop, matrix, mask=mask, seamless=False, feather=1.0))
    diff = np.abs(out.astype(int) - reference_feathered(frame, crop, matrix, _float_mask(mask), 0.4).astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.005


@pytest.mark.parametrize("seamless", [True, False])
def test_integer_matrix_as_a_list(seamless):
    frame, crop = _frame(), _crop()
    as_list = [[1, 0, 30], [0, 1, 14]]  # what a user may type
    np.testing.assert_array_equal(paste_back(frame, crop, as_list, seamless=seamless),
                                  paste_back(frame, crop, np.array(as_list, np.float64), seamless=seamless))


def test_invert_affine_round_trip():
    matrix = PLACES["inside"]
    inverse = invert_affine(matrix.astype(np.float32))
    assert inverse.dtype == np.float64
    np.testing.assert_allclose(invert_affine(inverse), matrix, atol=1e-6)
    point = np.array([5.0, 7.0, 1.0])
    np.testing.assert_allclose(inverse @ np.append(matrix @ point, 1.0), point[:2], atol=1e-6)
