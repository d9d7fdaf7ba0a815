"""Pose at inference: smoothing, keyframes, reference matching and the three pose modes."""

import numpy as np
import pytest
import torch

from talkinghead.errors import ConfigError, InputError
from talkinghead.pipeline.pose import (
    PoseControls,
    eye_aspect_ratio,
    eyes_open,
    find_keyframes,
    match_reference_frames,
    nearest_reference_frames,
    resolve_pose,
    smooth_pose,
)


def head_motion(n: int, seed: int = 0) -> np.ndarray:
    """A plausible pose sequence [n, 6]: slow sinusoids of different periods plus small noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    periods = rng.uniform(20, 60, size=6)
    phases = rng.uniform(0, 2 * np.pi, size=6)
    scale = np.array([0.1, 0.2, 0.15, 0.02, 0.02, 0.05])
    return scale * np.sin(2 * np.pi * t / periods + phases) + 0.002 * rng.standard_normal((n, 6))


def test_smooth_pose_identity_constant_and_noise_reduction():
    pose = head_motion(80)
    np.testing.assert_array_equal(smooth_pose(pose, 1), pose)
    constant = np.tile(np.arange(6.0), (30, 1))
    np.testing.assert_allclose(smooth_pose(constant, 7), constant)
    noise = np.random.default_rng(1).standard_normal((200, 6))
    assert smooth_pose(noise, 7).std() < 0.7 * noise.std()
    out = smooth_pose(torch.tensor(noise, dtype=torch.float32), 7)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (200, 6)


def test_keyframes_first_last_min_gap_and_cap():
    rng = np.random.default_rng(2)
    for n in (37, 120, 400):
        signal = np.cumsum(rng.standard_normal(n))  # rough random walk: many extrema
        for min_gap in (3, 5):
            keys = find_keyframes(signal, min_gap=min_gap)
            assert keys[0] == 0 and keys[-1] == n - 1
            assert np.all(np.diff(keys) >= min_gap)
            assert len(keys) - 2 <= n // 10
        assert len(find_keyframes(signal, max_keyframes=2)) <= 4


def test_keyframes_sit_on_the_extrema_of_a_sine():
    n, period = 200, 40
    signal = np.sin(2 * np.pi * np.arange(n) / period)
    keys = find_keyframes(signal, max_keyframes=100)
    expected = np.arange(period // 4, n - 1, period // 2)  # maxima and minima
    assert keys[0] == 0 and keys[-1] == n - 1
    np.testing.assert_allclose(keys[1:-1], expected, atol=1)


def test_matched_reference_against_itself_is_identity():
    ref = head_motion(300)
    index = match_reference_frames(ref, ref)
    assert index.dtype == np.int64 and index.shape == (300,)
    assert np.abs(index - np.arange(300)).max() <= 1
    assert np.mean(index == np.arange(300)) > 0.95


def test_matched_never_traverses_the_reference_faster_than_real_time():
    pred, ref = head_motion(250, seed=3), head_motion(300, seed=4)
    index = match_reference_frames(pred, ref)  # search_speed 1: radius = keyframe gap
    assert index.min() >= 0 and index.max() < 300
    assert np.abs(np.diff(index)).max() <= 1


def test_matched_keyframes_take_the_nearest_angles_in_the_window():
    pred, ref = head_motion(120, seed=5), head_motion(300, seed=6)
    index = match_reference_frames(pred, ref, search_radius=1000)  # window = all frames
    keys = find_keyframes(pred[:, 2])
    brute = np.abs(pred[keys, None, :3] - ref[None, :, :3]).sum(-1).argmin(1)
    np.testing.assert_array_equal(index[keys], brute)


def test_matched_keeps_the_person_moving_when_the_predicted_pose_is_flat():
    """keep_moving: a flat predicted pose matched with the published demo's rule holds the same
    few reference frames; with keep_moving the reference plays at (at most) real time."""
    ref = head_motion(300, seed=11)
    flat = np.tile(ref[150], (125, 1))  # the predicted pose does not move (one keyframe segment)
    held = match_reference_frames(flat, ref)
    moving = match_reference_frames(flat, ref, keep_moving=1.0)
    assert len(np.unique(held)) <= 2
    assert len(np.unique(moving)) > 60 and np.abs(np.diff(moving)).max() <= 1  # moves, never faster than real time
    own = head_motion(300, seed=12)  # against itself the matching is still the identity
    assert np.mean(match_reference_frames(own, own, keep_moving=1.0) == np.arange(300)) > 0.95
    _, index = resolve_pose(flat, ref, PoseControls("matched"))  # the default (configs/pose) keeps moving
    assert len(np.unique(index)) > 60
    for bad in (-1.0, float("nan"), "fast"):
        with pytest.raises(ConfigError, match="pose.keep_moving"):
            PoseControls(keep_moving=bad)
    with pytest.raises(ConfigError, match="pose.keep_moving"):
        match_reference_frames(flat, ref, keep_moving=-0.5)


def test_matched_mode_uses_reference_poses():
    pred, ref = head_motion(90, seed=7), head_motion(300, seed=8)
    pose, index = resolve_pose(pred, ref, PoseControls("matched"))
    np.testing.assert_allclose(pose, ref[index])
    pose2, index2 = resolve_pose(pred, ref, PoseControls("matched", amplitude=2.0))
    np.testing.assert_array_equal(index2, index)
    mean = ref.mean(0)
    np.testing.assert_allclose(pose2 - mean, 2.0 * (ref[index] - mean))


def test_predicted_mode():
    pred, ref = head_motion(90, seed=9), head_motion(300, seed=10)
    pose, index = resolve_pose(pred, ref, PoseControls("predicted", amplitude=1.0, smoothing=1))
    np.testing.assert_allclose(pose, pred)
    brute = np.abs(pred[:, None, :3] - ref[None, :, :3]).sum(-1).argmin(1)
    np.testing.assert_array_equal(index, brute)
    np.testing.assert_array_equal(nearest_reference_frames(pred, ref), brute)
    smoothed, _ = resolve_pose(pred, ref, PoseControls("predicted", smoothing=7))
    np.testing.assert_allclose(smoothed, smooth_pose(pred, 7))
    still_mean, _ = resolve_pose(pred, ref, PoseControls("predicted", amplitude=0.0))
    np.testing.assert_allclose(still_mean, np.tile(ref.mean(0), (90, 1)), atol=1e-12)


def test_still_mode_is_constant_reference_frame_zero():
    pred, ref = head_motion(50, seed=11), head_motion(300, seed=12)
    pose, index = resolve_pose(torch.tensor(pred, dtype=torch.float32), torch.tensor(ref), PoseControls("still", amplitude=3.0))
    assert isinstance(pose, torch.Tensor) and pose.dtype == torch.float32
    assert isinstance(index, np.ndarray) and np.all(index == 0)
    torch.testing.assert_close(pose, torch.tensor(ref[:1], dtype=torch.float32).expand(50, 6))


def test_bad_controls_and_inputs():
    with pytest.raises(ConfigError, match="pose.mode"):
        PoseControls(mode="wobble")
    controls = PoseControls()
    controls.mode = "Matched"
    with pytest.raises(ConfigError, match="pose.mode.*matched, predicted, still"):
        resolve_pose(head_motion(20), head_motion(30), controls)
    with pytest.raises(ConfigError, match="pose.amplitude"):
        PoseControls(amplitude=-1.0)
    with pytest.raises(ConfigError, match="pose.smoothing"):
        PoseControls(smoothing=2.5)
    with pytest.raises(InputError, match="ref_pose"):
        resolve_pose(head_motion(20), np.zeros((30, 3)))
    with pytest.raises(InputError, match="pred_pose"):
        resolve_pose(np.full((20, 6), np.nan), head_motion(30))


def _eye_landmarks(openness: np.ndarray) -> np.ndarray:
    """68-point landmarks [M, 68, 2] whose eyes are 30 px wide and ``openness * 30`` px high."""
    lm = np.zeros((len(openness), 68, 2))
    for start, cx in ((36, 100.0), (42, 160.0)):
        xs = cx + np.array([-15, -5, 5, 15, 5, -5])
        ys = np.array([0, -1, -1, 0, 1, 1]) * 15.0
        lm[:, start:start + 6, 0] = xs
        lm[:, start:start + 6, 1] = 200.0 + ys[None] * openness[:, None]
    return lm


def test_eye_aspect_ratio_and_open_eyes():
    openness = np.array([1.0, 0.9, 1.1, 0.1, 0.0, 1.0])
    ratio = eye_aspect_ratio(_eye_landmarks(openness))
    np.testing.assert_allclose(ratio, openness * 30 / 30, atol=1e-9)  # (2 * 30 h) / (2 * 30 w)
    np.testing.assert_allclose(eye_aspect_ratio(3.0 * _eye_landmarks(openness)), ratio, atol=1e-9)  # scale-free
    assert eyes_open(_eye_landmarks(openness), margin=0).tolist() == [True, True, True, False, False, True]
    assert eyes_open(_eye_landmarks(openness)).tolist() == [True, True, False, False, False, False]  # and neighbours
    assert eyes_open(_eye_landmarks(openness), fraction=0.5, margin=2).tolist() == [True, False, False, False, False, False]
    # A wink or a squint: one eye shut is not open eyes.
    wink = _eye_landmarks(np.ones(6))
    wink[2, 42:48] = _eye_landmarks(np.array([0.7]))[0, 42:48]
    np.testing.assert_allclose(eye_aspect_ratio(wink, per_eye=True)[2], [1.0, 0.7], atol=1e-9)
    assert eye_aspect_ratio(wink)[2] > 0.8 * np.median(eye_aspect_ratio(wink))  # the mean of both eyes misses it
    assert eyes_open(wink, margin=0).tolist() == [True, True, False, True, True, True]
    assert eyes_open(_eye_landmarks(np.ones(1))).tolist() == [True] and eyes_open(np.zeros((0, 68, 2))).shape == (0,)
    with pytest.raises(InputError, match="68, 2"):
        eye_aspect_ratio(np.zeros((3, 5, 2)))


def test_matching_never_picks_a_closed_eye_frame_when_an_open_one_is_in_reach():
    ref = head_motion(300, seed=3)
    pred = head_motion(100, seed=4)
    plain = match_reference_frames(pred, ref)
    usable = np.ones(300, bool)
    usable[np.unique(plain)] = False  # every frame the plain matching used has closed eyes now
    usable[np.unique(plain)[::7]] = True
    masked = match_reference_frames(pred, ref, usable=usable)
    assert usable[masked[np.isin(np.arange(100), find_keyframes(pred[:, 2]))]].all()  # keyframes land on usable frames
    assert usable[masked].mean() > usable[plain].mean()
    np.testing.assert_array_equal(match_reference_frames(pred, ref, usable=np.ones(300, bool)), plain)
    np.testing.assert_array_equal(match_reference_frames(pred, ref, usable=np.zeros(300, bool)), plain)  # none: all
    near = nearest_reference_frames(pred, ref, usable)
    assert usable[near].all()
    _, index = resolve_pose(pred, ref, PoseControls(mode="predicted"), usable=usable)
    assert usable[index].all()
    with pytest.raises(InputError, match="usable"):
        match_reference_frames(pred, ref, usable=np.ones(5, bool))
