"""Head pose at inference: the "personalized pose" of method.md section 5, and two simpler modes.

A pose is 6 numbers per frame: Euler angles x, y, z (radians) then translation x, y, z (the
coefficient layout of :mod:`talkinghead.face.coeffs`, Stage-1 translation shift already undone).
The person's reference poses are those of their clip's frames 0-299; the index of a reference
frame also says which background crop the rendered face is blended onto.

Modes (:class:`PoseControls`):

``matched`` (default, the published demo)
    Keyframes are the local extrema of the smoothed predicted roll (z-angle); each keyframe is
    matched to the reference frame with the nearest Euler angles (L1) near the previous match;
    the reference index is linearly interpolated between keyframes. Every output frame takes
    the pose (and background) of its reference frame, so head motion is the person's own.
``predicted``
    The LSTM's pose, smoothed with a Hanning window; the background is the reference frame
    with the nearest angles (L1), frame by frame.
``still``
    Reference frame 0's pose and background for every frame.

``amplitude`` scales every frame's deviation from the reference mean pose (angles and
translation), in every mode except ``still``; the background index is not changed by it.

``usable`` (optional, ``[M]`` bool; inference passes :func:`eyes_open` of the reference frames'
landmarks): the reference frames ``matched`` and ``predicted`` may pick. Why: a reference frame
lends the output its eyes (and background), and matching can dwell on a few neighbouring frames
for a second or more; in the session-22 demo it dwelt on a blink, and 69 % of the output frames
had closed eyes. Frames with closed eyes are therefore not picked, unless no usable frame is in
reach.

Arrays may be numpy or torch; poses come back in the type (and, for torch, dtype/device) of
``pred_pose``, indices always as a numpy ``int64`` array.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
from scipy.ndimage import convolve1d
from scipy.signal import find_peaks
from scipy.spatial.distance import cdist

from talkinghead.errors import ConfigError, InputError
from talkinghead.instantiate import config_default, to_plain

POSE_MODES = ("matched", "predicted", "still")
KEEP_MOVING_HINT = "0 = the published demo's matching"
#: Roll (rotation about the camera axis) is the z Euler angle: pose column 2.
ROLL_COLUMN = 2


# ----------------------------------------------------------------------------- input handling
def _float64(x) -> np.ndarray:
    """``x`` (numpy, torch or sequence) -> float64 numpy."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr.astype(np.float64, copy=False)


def _as_numpy(x, name: str, width: int | None = None) -> np.ndarray:
    """``x`` (numpy, torch or sequence) -> float64 numpy; checks ``[N, width]`` if ``width``."""
    arr = _float64(x)
    if width is not None and (arr.ndim != 2 or arr.shape[1] != width):
        raise InputError(f"{name} must be an array [N, {width}] (angles x,y,z + translation x,y,z), got shape {arr.shape}")
    if width is None and arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array [N], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{name} is empty; it needs at least one frame")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf values; check the Stage-1 prediction / clip coefficients")
    return arr


def _like(result: np.ndarray, reference):
    """Return ``result`` in the array type of ``reference`` (torch keeps dtype and device)."""
    if isinstance(reference, torch.Tensor):
        dtype = reference.dtype if reference.is_floating_point() else torch.float32
        return torch.as_tensor(result, dtype=dtype, device=reference.device)
    return result


# ----------------------------------------------------------------------------- smoothing
def hanning_taps(window: int) -> np.ndarray:
    """Normalised smoothing taps of length ``window``: ``numpy.hanning(window)`` as in the demo
    (its two end taps are zero, so Hanning-7 averages 5 frames); a flat window for 2."""
    taps = np.hanning(window) if window >= 3 else np.ones(max(window, 1))
    return taps / taps.sum()


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Hanning smoothing along axis 0 with edge padding (repeat the first/last frame)."""
    if window <= 1:
        return values.copy()
    return convolve1d(values, hanning_taps(window), axis=0, mode="nearest")


def smooth_pose(pose, window: int):
    """Smooth each pose column over time with a Hanning window of ``window`` frames.

    ``pose [N, 6]`` (numpy or torch) -> ``[N, 6]`` of the same type. Edge-padded: frames beyond
    the ends repeat the first/last frame, so a constant sequence stays constant. ``window <= 1``
    returns the input unchanged (a copy).
    """
    _check_window(window, "pose.smoothing")
    arr = _as_numpy(pose, "pose", 6)
    return _like(_smooth(arr, int(window)), pose)


def _check_non_negative(value, key: str, hint: str) -> float:
    """``value`` as a float, or a :class:`ConfigError` naming ``key`` unless it is finite and >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0:
        raise ConfigError(f"{key} must be a finite number >= 0 ({hint}), got {value!r}")
    return number


def _check_window(window, key: str) -> None:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise ConfigError(f"{key} must be an integer number of frames (e.g. 7), got {window!r}")


# ----------------------------------------------------------------------------- keyframes
def find_keyframes(signal, max_keyframes: int | None = None, min_gap: int = 3, smoothing: int = 7) -> np.ndarray:
    """Keyframes of a 1-D signal (the predicted roll): sorted frame indices, ``int64``.

    1. Smooth with a Hanning window of ``smoothing`` frames (edge-padded).
    2. Candidates: every local maximum and minimum of the smoothed signal (plateaus count once,
       at their middle), with their topographic prominence (``scipy.signal.find_peaks``).
    3. Greedy non-maximum suppression by prominence: the first and last frame are always
       keyframes; candidates, most prominent first, are kept when at least ``min_gap`` frames
       from every kept keyframe (so extrema closer than ``min_gap`` are merged into the more
       prominent one), until ``max_keyframes`` extrema are kept.

    ``max_keyframes`` bounds the extrema kept (the first and last frame come on top of it);
    ``None`` means ``N // 10`` (the demo's "at most N/10"). The demo's own thinning repeatedly
    kept extrema of the extrema; keeping the most prominent is our documented variant.
    """
    _check_window(smoothing, "pose.smoothing")
    values = _as_numpy(signal, "signal")
    n = values.shape[0]
    if max_keyframes is None:
        max_keyframes = n // 10
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    smoothed = _smooth(values, smoothing)

    maxima, max_props = find_peaks(smoothed, prominence=0.0)
    minima, min_props = find_peaks(-smoothed, prominence=0.0)
    candidates = np.concatenate([maxima, minima])
    prominence = np.concatenate([max_props["prominences"], min_props["prominences"]])
    order = np.argsort(-prominence, kind="stable")

    kept = [0, n - 1]
    extrema_kept = 0
    for index in candidates[order]:  # loops over extrema (a few per second), never over frames
        if extrema_kept >= max_keyframes:
            break
        if np.min(np.abs(np.asarray(kept) - index)) >= min_gap:
            kept.append(int(index))
            extrema_kept += 1
    return np.unique(np.asarray(kept, dtype=np.int64))


# ----------------------------------------------------------------------------- matching
def eye_aspect_ratio(landmarks, per_eye: bool = False) -> np.ndarray:
    """Eye aspect ratio of 68-point ``landmarks [M, 68, 2]`` (Soukupova & Cech 2016: the two
    vertical eyelid distances over twice the eye's width, points 36-41 and 42-47) -> the mean of
    both eyes ``[M]``, or each eye's ``[M, 2]`` with ``per_eye``; about 0.25-0.3 for open eyes,
    near 0 when closed, in any image scale."""
    points = _float64(landmarks)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise InputError(f"landmarks must have shape [M, 68, 2], got {tuple(points.shape)}")
    eyes = np.stack([points[:, 36:42], points[:, 42:48]], axis=1)  # [M, 2, 6, 2]
    dist = lambda a, b: np.linalg.norm(eyes[:, :, a] - eyes[:, :, b], axis=-1)  # noqa: E731  [M, 2]
    ratio = (dist(1, 5) + dist(2, 4)) / (2.0 * np.maximum(dist(0, 3), 1e-6))  # [M, 2]
    return ratio if per_eye else ratio.mean(axis=1)


def eyes_open(landmarks, fraction: float = 0.85, margin: int = 1) -> np.ndarray:
    """``[M]`` bool: frames where *each* eye's :func:`eye_aspect_ratio` is at least ``fraction``
    of that eye's median over the frames (a person's open-eye ratio varies, a blink drops it to a
    fraction; a wink or a squint closes one eye), and so are the ``margin`` frames on either side
    of it (``landmarks`` in frame order: a blink's opening and closing frames are half shut, and
    landmarks under-report a squint). On the 8 s real clip a squint during a head turn measured
    0.81 of the median and was used as a reference frame with the mean of both eyes at 0.8."""
    ratio = eye_aspect_ratio(landmarks, per_eye=True)  # [M, 2]
    if not len(ratio):
        return np.zeros(0, bool)
    shut = (ratio < fraction * np.median(ratio, axis=0)).any(axis=1)  # [M]
    near_shut = shut.copy()
    for shift in range(1, min(margin, len(shut) - 1) + 1):  # a shut frame's neighbours too
        near_shut[shift:] |= shut[:-shift]
        near_shut[:-shift] |= shut[shift:]
    return ~near_shut


def _usable_mask(usable, m: int) -> np.ndarray | None:
    if usable is None:
        return None
    usable = np.asarray(usable, dtype=bool)
    if usable.shape != (m,):
        raise InputError(f"usable must be a bool mask of the {m} reference frames, got shape {usable.shape}")
    return usable if usable.any() else None


def _nearest_angles(query: np.ndarray, ref_angles: np.ndarray, usable: np.ndarray | None = None,
                    penalty: np.ndarray | None = None) -> int:
    """Index of the row of ``ref_angles [K, 3]`` nearest to ``query [3]`` in L1 (plus ``penalty
    [K]`` when given), among the ``usable [K]`` rows when any of them is."""
    distance = np.abs(ref_angles - query).sum(axis=1)
    if penalty is not None:
        distance = distance + penalty
    if usable is not None and usable.any():
        distance = np.where(usable, distance, np.inf)
    return int(distance.argmin())


def match_reference_frames(
    pred_pose,
    ref_pose,
    search_radius: int | None = None,
    search_speed: float = 1.0,
    smoothing: int = 7,
    max_keyframes: int | None = None,
    min_gap: int = 3,
    usable=None,
    keep_moving: float = 0.0,
) -> np.ndarray:
    """Assign a reference frame to every output frame: ``[N, 6], [M, 6] -> ref_index [N] int64``.

    Keyframes: :func:`find_keyframes` on the predicted roll (z-angle), Hanning-``smoothing``
    smoothed, first and last frame included. Frame 0's keyframe is matched against all
    reference frames; each later keyframe ``k_i`` against the reference frames within
    ``r`` of the previous match ``m_{i-1}`` (the window ``[m_{i-1} - r, m_{i-1} + r]``, clipped
    to ``[0, M-1]``), where ``r = search_radius`` if given, else
    ``max(1, round(search_speed * (k_i - k_{i-1})))``. With the demo's speed 1 the reference
    video is never traversed faster than real time between keyframes, so the background moves
    naturally. The match minimises the L1 distance between the predicted (unsmoothed) Euler
    angles at the keyframe and the reference angles, plus, with ``keep_moving`` ``w > 0``, a
    cost for travelling less than real time since the previous match: ``w * s * (1 -
    min(|m - m_{i-1}| / gap, 1))``, ``s`` the reference angles' mean L1 distance to their median
    (a typical pose difference). Between keyframes the (float) reference index is interpolated
    linearly and rounded half up.

    Why ``keep_moving``: when the predicted roll is flat, the keyframes are few and all match the
    same reference frames, and the output holds one frame of the person for seconds; only the
    mouth moves (31.mp4 driven by a 5.5 s file: 2 distinct reference frames in 137 with ``w = 0``,
    the published demo's rule).
    """
    pred = _as_numpy(pred_pose, "pred_pose", 6)
    ref = _as_numpy(ref_pose, "ref_pose", 6)
    if search_radius is not None and search_radius < 0:
        raise ConfigError(f"pose.search_radius must be >= 0 frames, got {search_radius}")
    _check_window(smoothing, "pose.smoothing")
    pred_angles, ref_angles = pred[:, :3], ref[:, :3]
    m = ref.shape[0]
    usable = _usable_mask(usable, m)

    keep_moving = _check_non_negative(keep_moving, "pose.keep_moving", KEEP_MOVING_HINT)
    if keep_moving > 0:  # s: a typical pose difference
        typical = float(np.abs(ref_angles - np.median(ref_angles, axis=0)).sum(axis=1).mean())
    keyframes = find_keyframes(pred[:, ROLL_COLUMN], max_keyframes=max_keyframes, min_gap=min_gap, smoothing=smoothing)
    matches = np.empty(len(keyframes), dtype=np.int64)
    matches[0] = _nearest_angles(pred_angles[keyframes[0]], ref_angles, usable)
    for i in range(1, len(keyframes)):  # loops over keyframes only
        gap = keyframes[i] - keyframes[i - 1]
        radius = search_radius if search_radius is not None else max(1, int(round(search_speed * gap)))
        lo, hi = max(0, matches[i - 1] - radius), min(m - 1, matches[i - 1] + radius)
        window_usable = None if usable is None else usable[lo:hi + 1]
        penalty = None
        if keep_moving > 0:  # [W]: standing still costs w * s, travelling at real time nothing
            travel = np.abs(np.arange(lo, hi + 1) - matches[i - 1]) / gap
            penalty = keep_moving * typical * (1.0 - np.minimum(travel, 1.0))
        matches[i] = lo + _nearest_angles(pred_angles[keyframes[i]], ref_angles[lo:hi + 1], window_usable, penalty)

    frames = np.arange(pred.shape[0])
    index = np.interp(frames, keyframes, matches.astype(np.float64))
    return np.floor(index + 0.5).astype(np.int64)


def nearest_reference_frames(pose, ref_pose, usable=None) -> np.ndarray:
    """Per-frame nearest reference frame by L1 distance on the Euler angles, among the
    ``usable [M]`` ones when given: ``[N, 6], [M, 6] -> [N] int64`` (the background source in
    ``predicted`` mode)."""
    pose_np = _as_numpy(pose, "pose", 6)
    ref = _as_numpy(ref_pose, "ref_pose", 6)
    distance = cdist(pose_np[:, :3], ref[:, :3], metric="cityblock")  # [N, M]
    usable = _usable_mask(usable, ref.shape[0])
    if usable is not None:
        distance[:, ~usable] = np.inf
    return distance.argmin(axis=1).astype(np.int64)


# ----------------------------------------------------------------------------- controls
@dataclass
class PoseControls:
    """User controls for the head pose at inference (config group ``pose``).

    mode: ``matched`` (reference frames chosen by keyframe matching; default), ``predicted``
        (the LSTM's smoothed pose) or ``still`` (reference frame 0 throughout).
    amplitude: scale of each frame's deviation from the reference mean pose (1 = as is,
        0 = the mean pose); ignored by ``still``.
    smoothing: Hanning window in frames, for the predicted pose (``predicted``) and for the
        roll signal whose extrema are the keyframes (``matched``); <= 1 disables it.
    keep_moving: ``matched`` only: how much a keyframe prefers a reference frame that keeps the
        person's video playing at real time over a closer pose (0 = the published demo's rule;
        :func:`match_reference_frames`).
    """

    mode: str = config_default("pose/default.yaml", "mode")  # defaults written once, in the YAML
    amplitude: float = config_default("pose/default.yaml", "amplitude")
    smoothing: int = config_default("pose/default.yaml", "smoothing")
    keep_moving: float = config_default("pose/default.yaml", "keep_moving")

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "PoseControls":
        """From the ``pose`` config group (configs/pose/default.yaml); unknown keys raise :class:`ConfigError`."""
        values = dict(to_plain(node) or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown config key pose.{unknown[0]}; see configs/pose/default.yaml")
        return cls(**values)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the ``pose.*`` key at fault."""
        if self.mode not in POSE_MODES:
            raise ConfigError(f"pose.mode={self.mode!r} is not a pose mode; use one of {', '.join(POSE_MODES)}")
        _check_non_negative(self.amplitude, "pose.amplitude", "1 = as predicted")
        _check_window(self.smoothing, "pose.smoothing")
        _check_non_negative(self.keep_moving, "pose.keep_moving", KEEP_MOVING_HINT)


def _scale_about_mean(pose: np.ndarray, mean: np.ndarray, amplitude: float) -> np.ndarray:
    return mean + amplitude * (pose - mean)


def resolve_pose(pred_pose, ref_pose, controls: PoseControls | None = None, usable=None):
    """The pose to render and the background frame for every output frame.

    ``pred_pose [N, 6]`` (Stage-1 pose, translation shift undone), ``ref_pose [M, 6]`` (the
    person's reference frames), ``usable [M]`` (the reference frames that may be picked, e.g.
    :func:`eyes_open`; None: all) -> ``(pose [N, 6], ref_index [N] int64)``; see the module
    docstring for the modes. ``pose`` has the type of ``pred_pose``.
    """
    controls = controls if controls is not None else PoseControls()
    controls.validate()
    pred = _as_numpy(pred_pose, "pred_pose", 6)
    ref = _as_numpy(ref_pose, "ref_pose", 6)
    n = pred.shape[0]
    mean = ref.mean(axis=0)  # [6]

    if controls.mode == "still":
        pose = np.repeat(ref[:1], n, axis=0)
        ref_index = np.zeros(n, dtype=np.int64)
    elif controls.mode == "matched":
        ref_index = match_reference_frames(pred, ref, smoothing=int(controls.smoothing), usable=usable,
                                           keep_moving=float(controls.keep_moving))
        pose = _scale_about_mean(ref[ref_index], mean, float(controls.amplitude))
    else:  # predicted
        pose = _scale_about_mean(_smooth(pred, int(controls.smoothing)), mean, float(controls.amplitude))
        ref_index = nearest_reference_frames(pose, ref, usable)
    return _like(pose, pred_pose), ref_index
