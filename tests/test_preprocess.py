"""Tests of preprocessing: landmark backends, track checks and smoothing, alignment, the
video -> person-clip pipeline and its input errors (talkinghead/preprocess/)."""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest
import torch

from talkinghead.data.clip import read_clip
from talkinghead.errors import ConfigError, InputError, MissingWeightsError
from talkinghead.cli import compose_config
from talkinghead.face.factory import DEFAULT_FACE_MODEL, make_face_model
from talkinghead.face import align
from talkinghead.preprocess.landmarks import (
    MEDIAPIPE_TO_IBUG68,
    FaceAlignmentDetector,
    GroundTruthDetector,
    RawTrack,
    TrackOptions,
    clean_track,
    fill_gaps,
    make_detector,
    mediapipe_to_ibug68,
    smooth_landmarks,
)
from talkinghead.preprocess.pipeline import preprocess_from_config, preprocess_video
from talkinghead.video import write_video

try:
    import mediapipe  # noqa: F401

    HAS_MEDIAPIPE = True
except ImportError:
    HAS_MEDIAPIPE = False
needs_mediapipe = pytest.mark.skipif(not HAS_MEDIAPIPE, reason="mediapipe is not installed")


def detector_node(name: str, *overrides: str):
    """The ``detector`` node of ``configs/preprocess.yaml`` with ``detector=name`` (and overrides)."""
    return compose_config("preprocess", ["video=v.mp4", "out=o", f"detector={name}", *overrides]).detector

FACE_MODEL = DEFAULT_FACE_MODEL
# A fit that only has to be cheap (the accuracy of the fit is tested in test_fit.py).
CHEAP_FIT = {"landmark_steps": 60, "photometric_steps": 2, "render_size": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------
# Test videos made from a photograph
# --------------------------------------------------------------------------------------------
def astronaut_face(size: int = 192) -> np.ndarray:
    """The face region of scikit-image's astronaut photograph, ``size`` x ``size``."""
    from skimage.data import astronaut

    image = astronaut()  # [512, 512, 3]; the face is around (225, 124)
    return cv2.resize(np.ascontiguousarray(image[0:256, 97:353]), (size, size), interpolation=cv2.INTER_AREA)


def rotating_frames(num_frames: int, size: int = 192, amplitude_deg: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photograph with small in-plane rotations and shifts over time, like a
    person moving in front of a camera -> (uint8 frames [N, S, S, 3], rotation in degrees [N],
    counter-clockwise on screen)."""
    from skimage.data import astronaut

    image = astronaut()
    t = np.arange(num_frames) / 25.0
    angles = amplitude_deg * np.sin(2 * np.pi * 0.35 * t)
    shift_x, shift_y = 6 * np.sin(2 * np.pi * 0.2 * t + 1.0), 4 * np.sin(2 * np.pi * 0.27 * t)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    scale = size / 320  # a 320-pixel window: the head and shoulders, as a webcam would see them
    face, window = np.array([225.0, 130.0]), np.array([225.0, 165.0])  # rotation centre, window centre
    offset = size / 2 - face - scale * (window - face)  # puts the window centre in the frame centre
    for i in range(num_frames):  # cv2 per frame: building a test input, not a hot path
        m = cv2.getRotationMatrix2D((face[0], face[1]), float(angles[i]), scale)  # keeps the face centre fixed
        m[:, 2] += offset + (shift_x[i], shift_y[i])
        frames[i] = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return frames, angles


def tone(num_frames: int) -> np.ndarray:
    n = num_frames * 16000 // 25
    return (0.2 * np.sin(2 * np.pi * 220 * np.arange(n) / 16000)).astype(np.float32)


@pytest.fixture(scope="module")
def rotating_video(tmp_path_factory):
    frames, angles = rotating_frames(60)
    path = write_video(tmp_path_factory.mktemp("videos") / "astronaut.mp4", frames, audio=tone(60))
    return path, angles


def _no_face_frames(num_frames: int, size: int = 128) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    frame = np.stack([x * 2, y * 2, np.full_like(x, 90)], -1).clip(0, 255).astype(np.uint8)
    return np.repeat(frame[None], num_frames, 0)


# --------------------------------------------------------------------------------------------
# MediaPipe -> iBUG 68
# --------------------------------------------------------------------------------------------
def test_mediapipe_table_is_68_valid_mesh_indices():
    assert len(MEDIAPIPE_TO_IBUG68) == 68
    flat = [i for group in MEDIAPIPE_TO_IBUG68 for i in group]
    assert all(0 <= i < 468 for i in flat)
    assert len(set(g[0] for g in MEDIAPIPE_TO_IBUG68)) >= 66  # (58 is shared by two jaw rows)
    mesh = np.arange(478 * 2, dtype=np.float64).reshape(478, 2)
    lm = mediapipe_to_ibug68(mesh)
    assert lm.shape == (68, 2)
    np.testing.assert_allclose(lm[3], (mesh[132] + mesh[58]) / 2)  # two-point rows are averaged
    np.testing.assert_allclose(lm[30], mesh[4])
    with pytest.raises(ValueError):
        mediapipe_to_ibug68(np.zeros((68, 2)))


@needs_mediapipe
def test_mediapipe_landmarks_follow_ibug_semantics():
    face = astronaut_face(192)
    faces = make_detector(detector_node("mediapipe"), static_image_mode=True).detect(face, 0)
    assert len(faces) == 1
    lm = faces[0].landmarks
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]  # eye corners left to right in the image
    assert lm[48, 0] < lm[51, 0] < lm[54, 0]  # mouth corners around the upper-lip middle
    assert lm[27, 1] < lm[30, 1] < lm[51, 1] < lm[57, 1] < lm[8, 1]  # bridge, tip, lips, chin downwards
    assert lm[19, 1] < lm[37, 1]  # brow above the eye
    assert lm[8, 1] == lm[:17, 1].max()  # the chin is the lowest jaw point
    eye_distance = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
    assert 0.1 * 192 < eye_distance < 0.5 * 192


@needs_mediapipe
def test_mediapipe_reset_forgets_the_previous_video():
    """One detector over several videos (a corpus shard): after reset() a video's landmarks are
    those of a fresh detector; without it the first frames are tracked from the previous video."""
    from talkinghead.preprocess.landmarks import detect_video

    frames, _ = rotating_frames(58, size=160)
    first, second = frames[:29], frames[29:]
    fresh = make_detector()
    expected = detect_video(second, fresh).landmarks
    fresh.close()
    shared = make_detector()
    detect_video(first, shared)
    tracked = detect_video(second, shared).landmarks
    shared.reset()
    detect_video(first, shared)
    shared.reset()
    after_reset = detect_video(second, shared).landmarks
    shared.close()
    assert np.array_equal(after_reset, expected)
    assert np.abs(tracked[0] - expected[0]).max() > 0.05  # the tracker's state carries over (pixels)


# --------------------------------------------------------------------------------------------
# face-alignment backend (not installed here: a fake module stands in)
# --------------------------------------------------------------------------------------------
def _fake_face_alignment(init, landmarks=None):
    module = types.ModuleType("face_alignment")
    module.LandmarksType = types.SimpleNamespace(TWO_D=1)
    api = types.ModuleType("face_alignment.api")
    api.models_urls = {"2DFAN-4": "https://example.org/fan/2DFAN4-11f355bf06.pth.tar"}
    module.api = api
    calls = {}

    class FaceAlignment:
        def __init__(self, landmarks_type, device="cuda", flip_input=False, face_detector="sfd", compile=True):
            calls.update(landmarks_type=landmarks_type, device=device, compile=compile)
            init()

        def get_landmarks_from_image(self, image, return_bboxes=False):
            return [landmarks], None, [np.array([1, 2, 30, 40, 0.9])]

    module.FaceAlignment = FaceAlignment
    return module, api, calls


def test_face_alignment_missing_weights_names_files_and_cache(monkeypatch, tmp_path):
    def offline():
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    module, api, calls = _fake_face_alignment(offline)
    monkeypatch.setitem(sys.modules, "face_alignment", module)
    monkeypatch.setitem(sys.modules, "face_alignment.api", api)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError) as err:
        FaceAlignmentDetector(device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert "2DFAN4-11f355bf06.pth.tar" in message  # the file the installed version wants
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "$TORCH_HOME/hub/checkpoints" in message and "detector=mediapipe" in message
    assert calls["compile"] is False and calls["device"] == "cpu"  # no torch.compile on CPU


def test_face_alignment_backend_maps_results(monkeypatch):
    lm = np.random.default_rng(0).uniform(10, 50, (68, 2)).astype(np.float32)
    module, api, _ = _fake_face_alignment(lambda: None, landmarks=lm)
    monkeypatch.setitem(sys.modules, "face_alignment", module)
    monkeypatch.setitem(sys.modules, "face_alignment.api", api)
    detector = make_detector(detector_node("face_alignment", "device=cpu"))
    faces = detector.detect(np.zeros((64, 64, 3), np.uint8), 0)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].landmarks, lm)
    np.testing.assert_allclose(faces[0].box, [1, 2, 30, 40])
    assert faces[0].score == pytest.approx(0.9)


def test_face_alignment_not_installed_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import raises ImportError
    with pytest.raises(ConfigError, match="pip install"):
        make_detector(detector_node("face_alignment"))


def test_make_detector_errors():
    with pytest.raises(ConfigError, match="detector._target_") as info:
        make_detector({"_target_": "talkinghead.preprocess.landmarks.DlibDetector"})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="ground_truth_clip"):
        make_detector(detector_node("ground_truth"))
    with pytest.raises(ConfigError, match="bad arguments for detector .*no_such_option") as info:
        make_detector(detector_node("mediapipe"), no_such_option=1)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# Ground-truth backend
# --------------------------------------------------------------------------------------------
def test_ground_truth_detector_projects_the_coefficients():
    model = make_face_model(FACE_MODEL)
    coeffs = np.zeros((3, 257), np.float32)
    coeffs[:, 226] = [0.0, 0.1, -0.1]  # roll
    coeffs[:, 256] = -2.0
    from talkinghead.face.camera import Camera

    expected = model.landmarks_2d(torch.from_numpy(coeffs), Camera().with_size(112)).numpy()
    detector = GroundTruthDetector(coeffs, model)
    frame = np.zeros((112, 112, 3), np.uint8)
    for i in range(3):
        np.testing.assert_allclose(detector.detect(frame, i)[0].landmarks, expected[i], atol=1e-4)
    assert detector.detect(frame, 3) == []  # past the known frames: no face
    big = detector.detect(np.zeros((224, 224, 3), np.uint8), 1)[0].landmarks
    np.testing.assert_allclose(big, expected[1] * 2, atol=1e-3)  # projection follows the frame size
    noisy = GroundTruthDetector(coeffs, model, noise_px=2.0).detect(frame, 0)[0].landmarks
    spread = np.std(noisy - expected[0])
    assert 0.5 < spread < 1.5  # 2 px at 224 = 1 px at 112
    with pytest.raises(InputError, match="square"):
        detector.detect(np.zeros((100, 120, 3), np.uint8), 0)


# --------------------------------------------------------------------------------------------
# Track checks, gap filling, smoothing
# --------------------------------------------------------------------------------------------
def _track(num_frames: int, missing=(), two_faces=(), seed: int = 0) -> RawTrack:
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 80, (68, 2)).astype(np.float32)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    lm = base + t * np.float32(0.5)  # moves 0.5 px per frame
    counts = np.ones(num_frames, int)
    lm[list(missing)] = np.nan
    counts[list(missing)] = 0
    ratio = np.zeros(num_frames, np.float32)
    counts[list(two_faces)] = 2
    ratio[list(two_faces)] = 0.9
    return RawTrack(lm, counts, ratio, (128, 128))


def test_short_gaps_are_interpolated_linearly():
    track = _track(40, missing=[0, 1, 10, 11, 12, 39])
    clean = clean_track(track, "v.mp4", TrackOptions(smooth_window=0))
    truth = _track(40).landmarks
    np.testing.assert_allclose(clean.landmarks[10:13], truth[10:13], atol=1e-4)  # inside: linear
    np.testing.assert_allclose(clean.landmarks[0], truth[2])  # before the first detection: held
    np.testing.assert_allclose(clean.landmarks[39], truth[38])
    assert not clean.detected[[0, 1, 10, 11, 12, 39]].any() and clean.detected.sum() == 34
    assert clean.report["interpolated_frames"] == 6
    assert clean.report["missing_frames"] == ["0-1", "10-12", "39"]
    assert np.isfinite(fill_gaps(track.landmarks, track.found)).all()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"missing": range(40)}, r"no face found in any of its 40 frames"),
        ({"missing": range(15, 40)}, r"only 15 of 40 frames"),
        ({"missing": range(15, 30)}, r"face is lost in frames 15-29 \(15 frames"),
        ({"two_faces": range(0, 40, 2)}, r"found 2 faces in 20 of 40 frames"),
    ],
)
def test_track_errors_are_one_line(kwargs, pattern):
    with pytest.raises(InputError, match=pattern) as err:
        clean_track(_track(40, **kwargs), "v.mp4")
    assert "\n" not in str(err.value) and str(err.value).startswith("v.mp4")


def test_a_small_background_face_is_not_a_second_person():
    track = _track(40, two_faces=range(40))
    track.second_face_ratio[:] = 0.2  # a face a fifth the size, in the background
    assert clean_track(track, "v.mp4").landmarks.shape == (40, 68, 2)


def test_smoothing_removes_jitter_and_keeps_motion():
    t = np.arange(100, dtype=np.float32)[:, None, None]
    motion = np.broadcast_to(5 * np.sin(t / 8) + 0.3 * t, (100, 68, 2)).astype(np.float32)
    noisy = motion + np.random.default_rng(0).normal(0, 1.0, motion.shape).astype(np.float32)
    smoothed = smooth_landmarks(noisy, 5, 2)
    assert np.std(smoothed - motion) < 0.75 * np.std(noisy - motion)
    quadratic = np.broadcast_to(0.01 * t**2 - t, (100, 68, 2)).astype(np.float32)
    np.testing.assert_allclose(smooth_landmarks(quadratic, 5, 2), quadratic, atol=1e-3)  # exact for order 2
    for off in (0, 1, 2):  # windows of at most 2 frames (0 -> 1 after rounding up to odd) are off
        assert np.array_equal(smooth_landmarks(noisy, off), noisy)
    assert np.array_equal(smooth_landmarks(noisy[:4], 5, 2), noisy[:4])  # shorter than the window: unchanged


# --------------------------------------------------------------------------------------------
# Alignment: the fixed crop's reference transform
# --------------------------------------------------------------------------------------------
def test_fixed_transform_uses_a_robust_reference():
    template = align.five_point_template(224)
    true_t = np.array([[0.5, 0.0, 20.0], [0.0, 0.5, 10.0]])  # frame = crop * 2 - (40, 20)
    inverse = align.invert_transform(true_t)
    frame_points = align.apply_transform(template, inverse)  # five points in the frame
    lm = np.zeros((30, 68, 2), np.float32)
    groups = [range(36, 42), range(42, 48), [30], [48], [54]]
    for k, group in enumerate(groups):
        lm[:, list(group)] = frame_points[k]
    rng = np.random.default_rng(0)
    lm += rng.normal(0, 0.5, lm.shape).astype(np.float32)
    lm[0] += 15.0  # frame 0 is a bad detection: the median ignores it
    fixed = align.fixed_transform(lm, 224, reference_frames=25)
    np.testing.assert_allclose(fixed, true_t, atol=0.02 * np.abs(true_t).max())
    frame0_only = align.fixed_transform(lm, 224, reference_frames=1)
    assert np.abs(frame0_only - true_t).max() > 5  # what a single bad frame 0 would have given
    with pytest.raises(InputError):
        align.reference_five_points(np.zeros((0, 68, 2)))


# --------------------------------------------------------------------------------------------
# The pipeline: bad input, one clear line each, nothing written
# --------------------------------------------------------------------------------------------
def _expect_input_error(tmp_path, video, pattern, **kwargs):
    out = tmp_path / "clip"
    with pytest.raises(InputError, match=pattern) as err:
        preprocess_video(video, out, face_model_cfg=FACE_MODEL, fitting_cfg=CHEAP_FIT, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert not out.exists()  # not even created
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clip")]  # no temp dirs left
    return str(err.value)


def test_missing_file(tmp_path):
    _expect_input_error(tmp_path, tmp_path / "nope.mp4", "video not found")


def test_not_a_video(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    _expect_input_error(tmp_path, fake, "not a readable video")


def test_five_second_video_says_how_many_frames(tmp_path):
    video = write_video(tmp_path / "short.mp4", _no_face_frames(125, 64))
    message = _expect_input_error(tmp_path, video, "at least 150 frames")  # the shortest supported clip (6 s)
    assert "125 frames" in message and "5.0 s" in message


@needs_mediapipe
def test_two_faces(tmp_path):
    face = astronaut_face(128)
    two = np.concatenate([face, face[:, ::-1]], 1)  # two people side by side
    video = write_video(tmp_path / "two.mp4", np.repeat(two[None], 30, 0))
    _expect_input_error(tmp_path, video, "found 2 faces", min_frames=25, max_frames=30)


@needs_mediapipe
def test_no_face(tmp_path):
    video = write_video(tmp_path / "empty.mp4", _no_face_frames(30))
    _expect_input_error(tmp_path, video, "no face found", min_frames=25, max_frames=30)


@needs_mediapipe
def test_face_lost_midway(tmp_path):
    face = np.repeat(astronaut_face(128)[None], 20, 0)
    video = write_video(tmp_path / "lost.mp4", np.concatenate([face, _no_face_frames(20)]))
    _expect_input_error(tmp_path, video, "face is lost in frames 20-39", min_frames=25, max_frames=40)


def test_existing_out_is_refused_before_work(tmp_path):
    video = write_video(tmp_path / "v.mp4", _no_face_frames(30, 64))
    (tmp_path / "clip").mkdir()
    with pytest.raises(InputError, match="overwrite=true"):
        preprocess_video(video, tmp_path / "clip", min_frames=25, progress=False)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from talkinghead.cli import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli("preprocess", preprocess_from_config, [f"video={tmp_path / 'none.mp4'}", f"out={tmp_path / 'c'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: video not found") and "\n" not in err
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------------------------
# The pipeline end to end on a real-looking video (made from the astronaut photograph)
# --------------------------------------------------------------------------------------------
def _check_clip_and_roll(path, angles_deg: np.ndarray, with_audio: bool):
    clip = read_clip(path)  # validates
    n = len(angles_deg)
    assert clip.num_frames == n and clip.coeffs.shape == (n, 257)
    assert clip.fixed.shape == clip.aligned.shape == (n, 224, 224, 3)
    assert clip.meta.source == "video" and clip.meta.face_model == FACE_MODEL
    assert clip.meta.has_audio is with_audio and clip.meta.extra["detector"] == "mediapipe"
    assert clip.source_video is not None
    if with_audio:
        assert len(clip.audio) == n * 16000 // 25
    # the landmarks live in the fixed crop: the fitted coefficients reproject onto them
    fit = clip.meta.extra["fit"]
    assert fit["landmark_error_px_mean"] < 6.0
    # in-plane rotation of the video <-> fitted roll (up to the constant roll of the reference)
    roll = np.degrees(clip.coeffs[:, 226])
    offset = np.median(roll - angles_deg)
    error = np.abs(roll - offset - angles_deg)
    assert np.median(error) < 2.0, (np.median(error), error.max())
    assert np.corrcoef(roll, angles_deg)[0, 1] > 0.95
    # the aligned crops undo the rotation; the fixed crops keep it
    eye_line = clip.landmarks[:, 45] - clip.landmarks[:, 36]
    fixed_tilt = np.degrees(np.arctan2(-eye_line[:, 1], eye_line[:, 0]))
    assert np.corrcoef(fixed_tilt, angles_deg)[0, 1] > 0.95
    return clip


@needs_mediapipe
def test_video_to_clip_end_to_end_fast(tmp_path, rotating_video):
    """Reduced version (60 frames, cheap fit) through the CLI's config path."""
    from talkinghead.cli import compose_config

    video, angles = rotating_video
    overrides = [f"video={video}", f"out={tmp_path / 'person'}", "min_frames=50", "max_frames=60", "progress=false",
                 *(f"fitting.{k}={v}" for k, v in CHEAP_FIT.items())]
    path = preprocess_from_config(compose_config("preprocess", overrides))
    clip = _check_clip_and_roll(path, angles, with_audio=True)
    assert clip.meta.train_frames == (0, 45) and clip.meta.test_frames == (45, 60)  # a short clip: its last quarter held out
    assert clip.meta.extra["landmarks"]["detected_frames"] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["person"]  # no temp leftovers


@needs_mediapipe
@pytest.mark.slow
def test_video_to_clip_end_to_end_full(tmp_path):
    """320 frames (12.8 s), the default 300-frame minimum, no audio track."""
    frames, angles = rotating_frames(320)
    video = write_video(tmp_path / "astronaut_320.mp4", frames)
    path = preprocess_video(video, tmp_path / "person", face_model_cfg=FACE_MODEL,
                            fitting_cfg={"photometric_steps": 20, "render_size": 64}, progress=False)
    clip = _check_clip_and_roll(path, angles, with_audio=False)
    assert clip.meta.train_frames == (0, 240) and clip.meta.test_frames == (240, 320)  # < 400 frames: last quarter held out
    assert clip.meta.extra["stage1_usable"] is False


def test_ground_truth_clip_through_the_pipeline(tmp_path):
    """A tiny synthetic clip (the synthetic world's frames and true coefficients) as the video,
    with the ground-truth detector: the fitted pose matches the truth (the synthetic full frame
    is the fixed crop up to a similarity)."""
    from talkinghead.data.synthetic.people import sample_people
    from talkinghead.data.synthetic.world import make_person

    truth_clip = make_person(tmp_path / "truth", sample_people(1, seed=3)[0], 30, FACE_MODEL, crop_size=128)
    frames, truth = read_clip(truth_clip).fixed, read_clip(truth_clip).coeffs
    video = write_video(tmp_path / "synth.mp4", frames)
    path = preprocess_video(video, tmp_path / "fitted", detector=detector_node("ground_truth", f"ground_truth_clip={truth_clip}"),
                            face_model_cfg=FACE_MODEL,
                            fitting_cfg={"landmark_steps": 200, "photometric_steps": 0},
                            min_frames=25, max_frames=30, progress=False, keep_source=False)
    clip = read_clip(path)
    assert clip.source_video is None and clip.meta.has_audio is False
    # the fixed crop is a similarity of the frame: its rotation adds to the roll (an image
    # rotated counter-clockwise on screen by a is a head rolled by +a)
    crop_rotation = np.arctan2(clip.fixed_transform[1, 0], clip.fixed_transform[0, 0])  # clockwise on screen
    roll_offset = np.median(clip.coeffs[:, 226] - truth[:, 226])
    assert abs(np.degrees(roll_offset + crop_rotation)) < 1.0, (np.degrees(roll_offset), np.degrees(crop_rotation))
    err = np.degrees(np.abs(clip.coeffs[:, 224:227] - truth[:, 224:227] - [0, 0, -crop_rotation]))  # [N, 3]
    assert np.median(err) < 2.0, np.median(err, 0)  # over frames and axes


# --------------------------------------------------------------------------------------------
# Real media (../shared/real; CI has them, a fresh clone does not: the fixture skips there)
# --------------------------------------------------------------------------------------------
@needs_mediapipe
def test_real_video_through_the_cli(tmp_path, real_media):
    """A real talking-head video through ``scripts/preprocess.py`` (30 frames, debug=tiny fit):
    a valid clip with the real audio, a face found in every frame and a tight fit."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "katie"
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(repo / "scripts" / "preprocess.py"),
                          f"video={real_media / 'WDA_KatieHill_000.mp4'}", f"out={out}", "max_frames=30",
                          "min_frames=20", "debug=tiny"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    # Nothing on stderr: MediaPipe/TensorFlow Lite's native log ("INFO: Created TensorFlow Lite
    # XNNPACK delegate", "W0000 ... inference_feedback_manager") is silenced unless verbose=true.
    assert run.stderr == "", run.stderr
    clip = read_clip(out)
    assert clip.num_frames == 30 and clip.meta.has_audio and len(clip.audio) == 30 * 16000 // 25
    assert clip.meta.extra["landmarks"]["detected_frames"] == 30
    assert clip.meta.extra["fit"]["landmark_error_px_mean"] < 8.0  # 5.5 px with the debug=tiny fit
    assert run.stdout.strip().splitlines()[-1].startswith(f"wrote {out}")


def test_saved_landmarks_detector_reads_files(tmp_path):
    """detector=saved: frame i gets row i of a [N, 68, 2] file; NaN rows and frames past the end
    have no face; bad files and a missing path are one-line errors."""
    from talkinghead.preprocess.landmarks import SavedLandmarksDetector

    rng = np.random.default_rng(0)
    landmarks = rng.uniform(20, 100, (5, 68, 2)).astype(np.float32)
    landmarks[2] = np.nan
    np.save(tmp_path / "lm.npy", landmarks)
    np.savez(tmp_path / "lm.npz", landmarks=landmarks)
    frame = np.zeros((128, 128, 3), np.uint8)
    for path in (tmp_path / "lm.npy", tmp_path / "lm.npz"):
        detector = make_detector(detector_node("saved", f"detector.path={path}"))
        assert isinstance(detector, SavedLandmarksDetector)
        faces = detector.detect(frame, 1)
        assert len(faces) == 1 and np.array_equal(faces[0].landmarks, landmarks[1])
        assert np.allclose(faces[0].box, [*landmarks[1].min(0), *landmarks[1].max(0)])
        assert detector.detect(frame, 2) == [] and detector.detect(frame, 5) == []
    with pytest.raises(ConfigError, match="detector.path"):
        make_detector(detector_node("saved"))
    np.save(tmp_path / "bad.npy", landmarks[:, :60])
    with pytest.raises(InputError, match=r"\[N, 68, 2\]"):
        make_detector(detector_node("saved"), path=str(tmp_path / "bad.npy"))
    np.savez(tmp_path / "other.npz", points=landmarks)
    with pytest.raises(InputError, match="'landmarks'"):
        make_detector(detector_node("saved"), path=str(tmp_path / "other.npz"))
    with pytest.raises(InputError, match="not found"):
        make_detector(detector_node("saved"), path=str(tmp_path / "missing.npy"))


def test_saved_landmarks_from_a_clip_reproduce_its_preprocessing(tmp_path):
    """Re-preprocessing a video with detector=saved path=CLIP (the clip's landmarks mapped back
    into the frame) gives the same crops' landmarks and fixed transform as the first run."""
    from talkinghead.data.synthetic.people import sample_people
    from talkinghead.data.synthetic.world import make_person

    truth_clip = make_person(tmp_path / "truth", sample_people(1, seed=3)[0], 30, FACE_MODEL, crop_size=128)
    video = write_video(tmp_path / "synth.mp4", read_clip(truth_clip).fixed)
    common = dict(face_model_cfg=FACE_MODEL, fitting_cfg={"landmark_steps": 5, "photometric_steps": 0},
                  min_frames=25, max_frames=30, progress=False, keep_source=False)
    first = read_clip(preprocess_video(video, tmp_path / "first", detector=detector_node("ground_truth", f"ground_truth_clip={truth_clip}"),
                                       **common))
    second = read_clip(preprocess_video(video, tmp_path / "second", detector=detector_node("saved", f"detector.path={first.root}"),
                                        landmarks_cfg={"smooth_window": 0}, **common))  # already smoothed once
    assert second.meta.extra["detector"] == "saved"
    assert np.allclose(second.fixed_transform, first.fixed_transform, atol=1e-4)
    assert np.abs(np.asarray(second.landmarks) - np.asarray(first.landmarks)).max() < 1e-2  # crop pixels


def test_detectors_by_short_name_and_node_name_the_same_kind():
    """A detector given by its short name builds the class its config node names, the name is read back
    from either form, and an unknown name is a one-line ConfigError listing the valid ones."""
    from talkinghead.errors import ConfigError
    from talkinghead.preprocess.landmarks import DETECTOR_TARGETS, detector_name, make_detector

    for name, target in DETECTOR_TARGETS.items():
        assert detector_name(name) == name
        assert detector_name({"_target_": target, "path": None}) == name
    assert detector_name(None) == "mediapipe"
    with pytest.raises(ConfigError, match="not one of mediapipe, face_alignment, ground_truth, saved"):
        make_detector("dlib")
