"""Face detection and 68 iBUG landmarks per video frame, behind one interface.

A *detector* (:class:`LandmarkDetector`) looks at one RGB frame and returns the faces it
found (:class:`FaceDetection`: 68 landmarks in frame pixels, a box, a score). Backends:

* ``mediapipe`` (:class:`MediaPipeDetector`): MediaPipe Face Mesh (its models ship inside
  the wheel, so it runs offline). Its 468/478 mesh points are mapped to the 68-point iBUG
  convention with :data:`MEDIAPIPE_TO_IBUG68` (the published correspondence of
  github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks; rows with two mesh points take their mean).
* ``face_alignment`` (:class:`FaceAlignmentDetector`): the FAN network of the
  ``face-alignment`` package (imported lazily; not installed here). It downloads weights at
  first use; offline, the error names the missing files and the cache folder
  (``$TORCH_HOME/hub/checkpoints``) where a user can place them.
* ``ground_truth`` (:class:`GroundTruthDetector`): landmarks projected from known 3DMM
  coefficients (synthetic clips), optionally with Gaussian noise, to test the fitter
  against truth.
* ``saved`` (:class:`SavedLandmarksDetector`): landmarks computed earlier, read from a file
  (``.npy`` / ``.npz`` ``[N, 68, 2]`` in frame pixels, NaN rows = no face) or taken from an
  existing person clip. Detection can then run where its package is installed and the rest of
  preprocessing elsewhere (a GPU machine without mediapipe), or a clip can be re-fitted
  with other settings on exactly the same landmarks.

:func:`detect_video` runs a detector over frames and keeps the dominant (largest) face per
frame in a :class:`RawTrack`; :func:`clean_track` then checks the track (no face, two faces,
face lost for too long: one-line :class:`InputError`), fills short gaps by linear
interpolation and smooths the landmarks over time (:func:`smooth_landmarks`: a
Savitzky-Golay filter, window 5 frames and polynomial order 2 by default, which removes
frame-to-frame jitter while keeping fast mouth motion).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from talkinghead.data.clip import read_clip
from talkinghead.devices import resolve_device
from talkinghead.errors import ConfigError, InputError, MissingWeightsError
from talkinghead.face.align import apply_transform, invert_transform
from talkinghead.face.camera import Camera
from talkinghead.face.factory import make_face_model
from talkinghead.instantiate import build, target_from_kind
from talkinghead.progress import progress_bar

log = logging.getLogger(__name__)

NUM_LANDMARKS = 68

#: MediaPipe Face Mesh index (or two, averaged) for each of the 68 iBUG landmarks, in iBUG
#: order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67.
#: Source: the correspondence table of github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks.
MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw, from the subject's right ear (image left) over the chin (8) to the left ear
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # right brow (image left), left brow
    (70,), (63,), (105,), (66,), (107,),
    (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30 (30 = tip), nostrils 31-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # right eye 36-41 (outer corner, upper lid, inner corner, lower lid), left eye 42-47
    (33,), (160,), (158,), (133,), (153,), (144,),
    (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59: left corner, upper lip to the right corner, lower lip back
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    # inner lips 60-67
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)
assert len(MEDIAPIPE_TO_IBUG68) == NUM_LANDMARKS

# The table as a [68, 2] index array (single points repeated) for one vectorised gather.
_MP_PAIRS = np.array([(g[0], g[-1]) for g in MEDIAPIPE_TO_IBUG68], dtype=np.int64)


def mediapipe_to_ibug68(mesh_points: np.ndarray) -> np.ndarray:
    """MediaPipe mesh points ``[..., 468 or 478, D]`` -> 68 iBUG landmarks ``[..., 68, D]``."""
    mesh_points = np.asarray(mesh_points)
    if mesh_points.shape[-2] < 468:
        raise ValueError(f"expected at least 468 MediaPipe mesh points on axis -2, got {mesh_points.shape}")
    return mesh_points[..., _MP_PAIRS, :].mean(-2)


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------
@dataclass
class FaceDetection:
    """One face found in one frame."""

    landmarks: np.ndarray  # [68, 2] float32 frame pixels (u right, v down)
    box: np.ndarray  # [4] float32 x0, y0, x1, y1 (frame pixels)
    score: float = 1.0

    @property
    def size(self) -> float:
        """Geometric mean of the box's width and height (pixels)."""
        w, h = float(self.box[2] - self.box[0]), float(self.box[3] - self.box[1])
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))


def detection_from_landmarks(landmarks: np.ndarray, score: float = 1.0) -> FaceDetection:
    """A :class:`FaceDetection` whose box is the landmarks' bounding box."""
    lm = np.asarray(landmarks, dtype=np.float32).reshape(NUM_LANDMARKS, 2)
    return FaceDetection(lm, np.concatenate([lm.min(0), lm.max(0)]).astype(np.float32), float(score))


@runtime_checkable
class LandmarkDetector(Protocol):
    """Anything that finds faces and their 68 landmarks in RGB frames."""

    name: str

    def detect(self, frame: np.ndarray, index: int) -> list[FaceDetection]:
        """Faces in ``frame`` (uint8 RGB ``[H, W, 3]``, the ``index``-th frame of a video
        fed in order), any order; an empty list when there is none."""
        ...

    def reset(self) -> None:
        """Forget the frames seen so far (a tracker's state): the next frame starts a new video."""
        ...

    def close(self) -> None:
        """Release resources (graphs, GPU memory)."""
        ...


# --------------------------------------------------------------------------------------------
# MediaPipe
# --------------------------------------------------------------------------------------------
@contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Point file descriptor 2 at /dev/null for the duration: MediaPipe and TensorFlow Lite log
    from C++ straight to the process's stderr ("INFO: Created TensorFlow Lite XNNPACK delegate",
    "W0000 ... inference_feedback_manager.cc"), past Python's ``sys.stderr``, so only a redirect
    of the descriptor keeps them off the user's terminal. ``enabled=False`` (``verbose=true``)
    leaves stderr alone."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class MediaPipeDetector:
    """MediaPipe Face Mesh mapped to 68 iBUG points (offline: models ship in the wheel).

    Args:
        static_image_mode: False for video (tracks between frames), True for unrelated images.
        max_num_faces: 2 so that a second face is found and reported, not silently ignored.
        min_detection_confidence, min_tracking_confidence: MediaPipe's thresholds.
        native_log: let MediaPipe's C++ log lines reach stderr (``verbose=true``); by default the
            graph is built and run with file descriptor 2 silenced (:func:`native_stderr_silenced`).
    """

    name = "mediapipe"

    def __init__(
        self,
        static_image_mode: bool = False,
        max_num_faces: int = 2,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        native_log: bool = False,
    ):
        self._quiet = not native_log
        try:
            import mediapipe  # optional dependency

            face_mesh = mediapipe.solutions.face_mesh
        except (ImportError, AttributeError) as err:  # pragma: no cover - mediapipe is a dev dependency here
            raise ConfigError(
                f"detector=mediapipe needs the mediapipe package ({err}); pip install mediapipe==0.10.21 "
                "or use detector=face_alignment"
            ) from None
        with native_stderr_silenced(self._quiet):
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=bool(static_image_mode),
                max_num_faces=int(max_num_faces),
                refine_landmarks=False,
                min_detection_confidence=float(min_detection_confidence),
                min_tracking_confidence=float(min_tracking_confidence),
            )
            # The graph opens its calculators (and they log) asynchronously after the constructor
            # returns; one blank frame waits for that inside the silenced window.
            self.reset()

    def detect(self, frame: np.ndarray, index: int = 0) -> list[FaceDetection]:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        height, width = frame.shape[:2]
        with native_stderr_silenced(self._quiet):  # the graph logs on its first frames (and may later)
            result = self._mesh.process(frame)
        faces = []
        for face in result.multi_face_landmarks or ():
            mesh = np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32) * (width, height)  # [468, 2]
            box = np.concatenate([mesh.min(0), mesh.max(0)]).astype(np.float32)
            faces.append(FaceDetection(mediapipe_to_ibug68(mesh).astype(np.float32), box, 1.0))
        return faces

    def reset(self) -> None:
        """One blank frame: no face is found in it, so the next frame is detected afresh, not
        tracked from the previous video's last face."""
        with native_stderr_silenced(self._quiet):
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        with native_stderr_silenced(self._quiet):
            self._mesh.close()


# --------------------------------------------------------------------------------------------
# face-alignment (FAN)
# --------------------------------------------------------------------------------------------
#: Weight files of face-alignment's 2-D FAN and its default SFD face detector, used in error
#: messages when the installed package does not list its own URLs.
FACE_ALIGNMENT_FILES = ("2DFAN4-cd938726ad.zip", "s3fd-619a316812.pth")


def torch_hub_checkpoints() -> Path:
    """The folder torch.hub (and face-alignment) caches downloads in: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _urls_in(module: Any, names: Iterable[str]) -> list[str]:
    """Every string URL found in the (possibly nested) dicts ``module.<name>``."""
    found: list[str] = []

    def walk(value):
        if isinstance(value, str) and value.startswith("http"):
            found.append(value)
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)

    for name in names:
        walk(getattr(module, name, None))
    return found


def face_alignment_weight_files(module: Any) -> list[str]:
    """File names of the 2-D FAN and SFD weights the installed face-alignment would download."""
    urls = []
    for sub, attrs in (("api", ("models_urls", "default_model_urls")),
                       ("detection.sfd.sfd_detector", ("models_urls",))):
        try:
            urls += _urls_in(importlib.import_module(f"{module.__name__}.{sub}"), attrs)
        except Exception:  # noqa: BLE001 - older/newer layouts: fall back to the known names
            pass
    urls += _urls_in(module, ("models_urls", "default_model_urls"))
    names = sorted({u.rsplit("/", 1)[-1] for u in urls if "2DFAN" in u or "s3fd" in u})
    return names or list(FACE_ALIGNMENT_FILES)


class FaceAlignmentDetector:
    """face-alignment's 2-D FAN (with its SFD face detector) giving 68 iBUG points.

    The package is imported lazily. ``torch.compile`` is switched off (``compile=False``) when
    the installed version has that argument: compiling on CPU costs minutes for no gain here.
    Construction failures (weights that cannot be downloaded offline) raise
    :class:`MissingWeightsError` naming the files and ``$TORCH_HOME/hub/checkpoints``.
    """

    name = "face_alignment"

    def __init__(self, device: str = "auto", face_detector: str = "sfd", flip_input: bool = False):
        try:
            import face_alignment  # optional dependency
        except ImportError:
            raise ConfigError(
                "detector=face_alignment needs the face-alignment package, which is not installed; "
                "pip install --no-deps face-alignment (keeps one OpenCV), or use detector=mediapipe"
            ) from None
        landmarks_type = getattr(face_alignment.LandmarksType, "TWO_D", None) or getattr(face_alignment.LandmarksType, "_2D")
        kwargs: dict[str, Any] = {"device": str(resolve_device(device)), "flip_input": bool(flip_input),
                                  "face_detector": face_detector}
        try:
            params = inspect.signature(face_alignment.FaceAlignment.__init__).parameters
        except (TypeError, ValueError):
            params = {}
        if "compile" in params:
            kwargs["compile"] = False
        try:
            self._fa = face_alignment.FaceAlignment(landmarks_type, **kwargs)
        except Exception as err:  # noqa: BLE001 - any download/load failure becomes one clear line
            cache = torch_hub_checkpoints()
            files = face_alignment_weight_files(face_alignment)
            missing = [f for f in files if not (cache / f).is_file()]
            reason = " ".join(str(err).split())[:160] or type(err).__name__
            if missing:
                raise MissingWeightsError(
                    f"face-alignment could not load its weights ({reason}); missing {', '.join(missing)} in {cache}: "
                    f"download them on a machine with internet and place them in $TORCH_HOME/hub/checkpoints "
                    f"({cache}), or use detector=mediapipe"
                ) from None
            raise MissingWeightsError(
                f"face-alignment failed to load ({reason}) although its weight files are in {cache}; "
                "they may be corrupt: replace them, or use detector=mediapipe"
            ) from None

    def detect(self, frame: np.ndarray, index: int = 0) -> list[FaceDetection]:
        result = self._fa.get_landmarks_from_image(np.ascontiguousarray(frame), return_bboxes=True)
        landmarks, _, boxes = result if isinstance(result, tuple) else (result, None, None)
        faces = []
        for i, lm in enumerate(landmarks or ()):
            lm = np.asarray(lm, dtype=np.float32)[:, :2]
            if boxes is not None and i < len(boxes):
                box = np.asarray(boxes[i], dtype=np.float32)
                faces.append(FaceDetection(lm, box[:4], float(box[4]) if box.shape[0] > 4 else 1.0))
            else:
                faces.append(detection_from_landmarks(lm))
        return faces

    def reset(self) -> None:
        pass  # every frame is detected on its own

    def close(self) -> None:
        self._fa = None


# --------------------------------------------------------------------------------------------
# Ground truth (synthetic clips)
# --------------------------------------------------------------------------------------------
class GroundTruthDetector:
    """Landmarks projected from known coefficients: frame ``i`` gets ``landmarks[i]``.

    Build it with :meth:`from_coeffs` / :meth:`from_clip`; the projection is done for the
    frame size seen at the first :meth:`detect` call (frames are the square crop the
    coefficients live in, e.g. a synthetic clip's frames). ``noise_px`` adds Gaussian noise
    (standard deviation in pixels of a 224 crop, scaled with the frame size) like a real
    detector's; frames past the end of the coefficients have no face.
    """

    name = "ground_truth"

    def __init__(self, coeffs: np.ndarray, face_model, noise_px: float = 0.0, seed: int = 0):
        self.coeffs = np.asarray(coeffs, dtype=np.float32)
        self.face_model = face_model
        self.noise_px = float(noise_px)
        self.seed = int(seed)
        self._landmarks: np.ndarray | None = None  # [N, 68, 2] at the frame size
        self._size: int | None = None

    @classmethod
    def from_coeffs(cls, coeffs, face_model, noise_px: float = 0.0, seed: int = 0) -> "GroundTruthDetector":
        return cls(coeffs, face_model, noise_px, seed)

    @classmethod
    def from_clip(cls, clip_dir: str | os.PathLike, noise_px: float = 0.0, seed: int = 0) -> "GroundTruthDetector":
        """Coefficients and face model of a (synthetic) person clip."""
        clip = read_clip(clip_dir, load_audio=False)
        return cls(np.asarray(clip.coeffs), make_face_model(clip.meta.face_model), noise_px, seed)

    def landmarks_for_size(self, image_size: int) -> np.ndarray:
        """Projected landmarks ``[N, 68, 2]`` in an ``image_size`` square frame (noise included)."""
        if self._landmarks is None or self._size != image_size:
            with torch.no_grad():
                lm = self.face_model.landmarks_2d(torch.from_numpy(self.coeffs), Camera().with_size(image_size)).numpy()
            if self.noise_px > 0:
                rng = np.random.default_rng(self.seed)
                lm = lm + rng.normal(0.0, self.noise_px * image_size / 224, lm.shape)
            self._landmarks, self._size = lm.astype(np.float32), image_size
        return self._landmarks

    def detect(self, frame: np.ndarray, index: int = 0) -> list[FaceDetection]:
        height, width = frame.shape[:2]
        if height != width:
            raise InputError(
                f"detector=ground_truth needs square frames (the crop the coefficients live in), got {width}x{height}; "
                "use the synthetic clip's frames as the video"
            )
        if index >= len(self.coeffs):
            return []
        return [detection_from_landmarks(self.landmarks_for_size(width)[index])]

    def reset(self) -> None:
        pass  # frame i's landmarks come from row i

    def close(self) -> None:
        pass


class SavedLandmarksDetector:
    """Landmarks computed earlier: frame ``i`` gets ``landmarks[i]`` (``[N, 68, 2]`` float, frame
    pixels of the video at 25 fps, the frames preprocessing feeds in order). A row with NaN, or a
    frame past the end, has no face (short gaps are filled by :func:`clean_track` as usual).

    Build it from a file with :meth:`from_file` (``.npy``, or ``.npz`` with a ``landmarks``
    array) or from a person clip with :meth:`from_clip` (its fixed-crop landmarks mapped back
    into the full frame)."""

    name = "saved"

    def __init__(self, landmarks: np.ndarray, source: str = "landmarks"):
        lm = np.asarray(landmarks, dtype=np.float32)
        if lm.ndim != 3 or lm.shape[1:] != (NUM_LANDMARKS, 2) or len(lm) == 0:
            raise InputError(f"{source}: saved landmarks must be [N, 68, 2] frame pixels, got {lm.shape}; "
                             "save them with numpy.save(path, landmarks)")
        self.landmarks = lm  # [N, 68, 2]
        self.source = source

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SavedLandmarksDetector":
        path = Path(path).expanduser()
        if path.is_dir():
            return cls.from_clip(path)
        if not path.is_file():
            raise InputError(f"saved landmarks {path} not found; set detector.path to a .npy/.npz [N, 68, 2] or a clip")
        try:
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                if "landmarks" not in data.files:
                    raise InputError(f"{path} has no 'landmarks' array (it has {data.files}); "
                                     "save with numpy.savez(path, landmarks=...)")
                data = data["landmarks"]
        except (OSError, ValueError) as err:
            raise InputError(f"saved landmarks {path} cannot be read ({err}); write it with numpy.save") from None
        return cls(data, str(path))

    @classmethod
    def from_clip(cls, clip_dir: str | os.PathLike) -> "SavedLandmarksDetector":
        """A person clip's landmarks in full-frame pixels (the inverse of its fixed transform)."""
        clip = read_clip(clip_dir, load_audio=False)
        frame = apply_transform(np.asarray(clip.landmarks), invert_transform(clip.fixed_transform))
        return cls(frame, str(clip_dir))

    def detect(self, frame: np.ndarray, index: int = 0) -> list[FaceDetection]:
        if index >= len(self.landmarks) or not np.isfinite(self.landmarks[index]).all():
            return []
        return [detection_from_landmarks(self.landmarks[index])]

    def reset(self) -> None:
        pass  # frame i's landmarks come from row i

    def close(self) -> None:
        pass


def saved_detector(path: str | None = None) -> SavedLandmarksDetector:
    """``configs/detector/saved.yaml``: landmarks from ``path`` (a file or a clip directory)."""
    if path is None:
        raise ConfigError("detector=saved needs detector.path=FILE (.npy/.npz [N, 68, 2] frame pixels) or a clip directory")
    return SavedLandmarksDetector.from_file(path)


def ground_truth_detector(clip=None, coeffs=None, face_model=None, noise_px: float = 0.0,
                          seed: int = 0) -> GroundTruthDetector:
    """``configs/detector/ground_truth.yaml``: landmarks projected from ``clip``'s true
    coefficients (or from ``coeffs`` + ``face_model``)."""
    if clip is not None:
        return GroundTruthDetector.from_clip(clip, noise_px, seed)
    if coeffs is None or face_model is None:
        raise ConfigError(
            "detector=ground_truth needs the clip with the true coefficients: set ground_truth_clip=DIR "
            "(a synthetic clip whose frames are the video)"
        )
    return GroundTruthDetector(coeffs, face_model, noise_px, seed)


# --------------------------------------------------------------------------------------------
# Building one from its config
# --------------------------------------------------------------------------------------------
#: The short names of the detectors (``configs/detector/NAME.yaml``) and the ``_target_`` of each.
DETECTOR_TARGETS = {
    "mediapipe": "talkinghead.preprocess.landmarks.MediaPipeDetector",
    "face_alignment": "talkinghead.preprocess.landmarks.FaceAlignmentDetector",
    "ground_truth": "talkinghead.preprocess.landmarks.ground_truth_detector",
    "saved": "talkinghead.preprocess.landmarks.saved_detector",
}


def detector_name(detector: Mapping[str, Any] | str | None) -> str:
    """The short name (``mediapipe``, ``face_alignment``, ``ground_truth``, ``saved``) of a detector
    given by name or by its config node (its ``_target_``); ``None`` is MediaPipe."""
    if detector is None:
        return "mediapipe"
    if isinstance(detector, str):
        return detector.lower()
    target = str(detector.get("_target_", detector.get("name", "")))
    return next((name for name, full in DETECTOR_TARGETS.items() if full == target), target.rsplit(".", 1)[-1].lower())


def make_detector(detector: Mapping[str, Any] | str | None = None, **overrides) -> LandmarkDetector:
    """A detector from a ``configs/detector/*.yaml`` node (``_target_`` + options, built with
    Hydra's instantiate; ``overrides`` replace options), or from its short name (``"mediapipe"``,
    ``"ground_truth"``, ...; :data:`DETECTOR_TARGETS`); ``None``: MediaPipe. A bad ``_target_``,
    name or option raises a one-line :class:`ConfigError`."""
    if detector is None:
        return MediaPipeDetector(**overrides)
    if isinstance(detector, str):
        detector = target_from_kind({"kind": detector}, "detector", DETECTOR_TARGETS)
    return build(detector, "detector", **overrides)


# --------------------------------------------------------------------------------------------
# Running a detector over a video, and cleaning the track
# --------------------------------------------------------------------------------------------
@dataclass
class RawTrack:
    """The dominant face per frame, before cleaning (NaN landmarks where none was found)."""

    landmarks: np.ndarray  # [N, 68, 2] float32, NaN where no face
    num_faces: np.ndarray  # [N] int: faces found in each frame
    second_face_ratio: np.ndarray  # [N] size of the second-largest face / the largest (0 if < 2 faces)
    frame_size: tuple[int, int]  # (height, width)

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)

    @property
    def found(self) -> np.ndarray:
        """``[N]`` bool: a face was found."""
        return self.num_faces > 0


def detect_video(frames: Iterable[np.ndarray], detector: LandmarkDetector, progress: bool = False,
                 total: int | None = None) -> RawTrack:
    """Run ``detector`` over ``frames`` (fed in order) and keep the largest face of each frame."""
    landmarks, counts, ratios = [], [], []
    frame_size = (0, 0)
    for index, frame in enumerate(progress_bar(frames, total=total, desc="landmarks", unit="frame", enabled=progress)):
        frame_size = frame.shape[:2]
        faces = sorted(detector.detect(frame, index), key=lambda f: f.size, reverse=True)
        counts.append(len(faces))
        ratios.append(faces[1].size / max(faces[0].size, 1e-6) if len(faces) > 1 else 0.0)
        landmarks.append(faces[0].landmarks if faces else np.full((NUM_LANDMARKS, 2), np.nan, np.float32))
    if not landmarks:
        raise InputError("no frames to detect faces in; check that the video decodes")
    return RawTrack(np.stack(landmarks).astype(np.float32), np.asarray(counts), np.asarray(ratios, np.float32),
                    tuple(frame_size))


@dataclass
class TrackOptions:
    """How :func:`clean_track` judges and repairs a track (``landmarks:`` in configs/preprocess.yaml)."""

    max_gap: int = 12  # longest run of frames without a face that is interpolated (0.48 s)
    min_detected_fraction: float = 0.5  # fewer detected frames than this is an error
    second_face_ratio: float = 0.5  # a second face at least this large (relative) is a competitor
    max_multi_face_fraction: float = 0.1  # more frames with a competitor than this: "two faces"
    smooth_window: int = 5  # Savitzky-Golay window (frames, odd); <= 2 switches smoothing off
    smooth_polyorder: int = 2

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "TrackOptions":
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown landmarks option(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**cfg)


@dataclass
class CleanTrack:
    """Landmarks ready for alignment and fitting, and what was repaired."""

    landmarks: np.ndarray  # [N, 68, 2] float32 frame pixels, gaps filled, smoothed
    detected: np.ndarray  # [N] bool: the detector found the face (else interpolated)
    report: dict = field(default_factory=dict)  # counts for meta.extra and the log


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def fill_gaps(landmarks: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill frames without a face ``[N, 68, 2]`` by linear interpolation in time between the
    nearest detected frames (held constant before the first / after the last)."""
    n = len(landmarks)
    idx = np.arange(n)
    prev = np.maximum.accumulate(np.where(found, idx, -1))  # last detected frame at or before t
    nxt = np.minimum.accumulate(np.where(found, idx, n)[::-1])[::-1]  # first detected at or after t
    prev = np.where(prev < 0, nxt, prev)
    nxt = np.where(nxt >= n, prev, nxt)
    span = np.maximum(nxt - prev, 1)
    w = ((idx - prev) / span)[:, None, None]  # [N, 1, 1]
    return ((1 - w) * landmarks[prev] + w * landmarks[nxt]).astype(np.float32)


def smooth_landmarks(landmarks: np.ndarray, window: int = 5, polyorder: int = 2) -> np.ndarray:
    """Savitzky-Golay filter over time (axis 0) of ``[N, 68, 2]`` landmarks. A local polynomial
    fit keeps peaks (mouth openings) better than a moving average of the same width; windows
    of at most 2 frames, or clips shorter than the window, are returned unchanged."""
    from scipy.signal import savgol_filter  # local: scipy.signal costs 0.9 s; only smoothing needs it

    window = int(window)
    if window <= 2:
        return np.asarray(landmarks, dtype=np.float32)
    if window % 2 == 0:
        window += 1
    if len(landmarks) < window or polyorder >= window:
        return np.asarray(landmarks, dtype=np.float32)
    return savgol_filter(landmarks, window, int(polyorder), axis=0, mode="interp").astype(np.float32)


def clean_track(track: RawTrack, source: str = "video", options: TrackOptions | None = None) -> CleanTrack:
    """Check a raw track and repair it: one :class:`InputError` line for no face, two faces,
    too few detections or a face lost longer than ``max_gap`` frames; short gaps are
    interpolated; the result is smoothed over time."""
    opt = options or TrackOptions()
    n = track.num_frames
    found = track.found
    detected = int(found.sum())
    if detected == 0:
        raise InputError(f"{source}: no face found in any of its {n} frames; use a video that shows one face")
    competitor = track.second_face_ratio >= opt.second_face_ratio
    if competitor.mean() > opt.max_multi_face_fraction:
        raise InputError(
            f"{source}: found 2 faces in {int(competitor.sum())} of {n} frames; preprocessing needs exactly one "
            "dominant face: crop or choose a video with one person"
        )
    if detected < opt.min_detected_fraction * n:
        raise InputError(
            f"{source}: a face was found in only {detected} of {n} frames (at least {opt.min_detected_fraction:.0%} "
            "needed); use a video where the face stays visible and frontal"
        )
    gaps = _runs(~found)
    longest = max(gaps, key=lambda r: r[1] - r[0], default=(0, 0))
    if longest[1] - longest[0] > opt.max_gap:
        raise InputError(
            f"{source}: the face is lost in frames {longest[0]}-{longest[1] - 1} ({longest[1] - longest[0]} frames, "
            f"more than max_gap={opt.max_gap}); use a video where the face stays visible, or cut it before that point"
        )
    filled = fill_gaps(track.landmarks, found)
    smoothed = smooth_landmarks(filled, opt.smooth_window, opt.smooth_polyorder)
    missing = [f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in gaps]
    report = {
        "frames": n,
        "detected_frames": detected,
        "interpolated_frames": n - detected,
        "missing_frames": missing,
        "frames_with_second_face": int((track.num_faces > 1).sum()),
    }
    if missing:
        log.warning("%s: no face in %d frame(s) (%s); interpolated", source, n - detected, ", ".join(missing[:10]))
    return CleanTrack(smoothed, found.copy(), report)
