"""3DMM fitting by optimisation (method.md section 2; replaces Deng et al.'s pretrained regressor).

Given the fixed crops of a clip (``[N, S, S, 3]``) and their 68 landmarks (crop pixels),
:func:`fit_coefficients` finds the 257-d coefficients of every frame; :func:`fit_clips` does the
same for many clips at once (e.g. LRW's 29-frame word clips, ``batch_clips`` per batch):

* **Parameters.** identity ``[80]`` and texture ``[80]`` shared by the whole clip;
  expression ``[N, 64]``, Euler angles ``[N, 3]``, translation ``[N, 3]`` and SH lighting
  ``[N, 27]`` per frame. All frames are optimised together (Adam), in chunks of
  ``batch_frames`` frames whose gradients are accumulated, so a step is one pass over the clip.
  A batch of clips is one optimisation of the sum of the clips' own losses (:class:`FitParameters`:
  per-clip ``[B, 80]``, per-frame ``[B, T, k]`` padded to the longest clip and masked; only the
  real frames are projected and rendered). The clips share no parameter and Adam's update is per
  element, so a clip's fit does not depend on its companions (float rounding aside); a single clip
  is a batch of one.
* **Initialisation.** Angles/translation from a closed-form 2-D similarity fit of the mean
  face's projected landmarks onto the detected ones (:func:`initial_pose`): it gives the roll,
  the scale (hence the depth) and the position; yaw/pitch start at 0.
* **Losses** (weights: ``configs/fitting/default.yaml``):

  - landmark reprojection: mean over frames and points of the weighted squared distance, in
    pixels of a 224 crop (:data:`LANDMARK_WEIGHTS`: jaw contour 0.5, it slides along the
    silhouette in real images; nose and inner lips 2; others 1), weighted ``w_landmark`` in
    stage 1 and ``w_landmark_photo`` (3x) in stage 2: the photometric loss is biased wherever
    the 3DMM cannot explain the image with a pixel close to skin colour (blond hair over the
    face, a key light's shading and highlights the SH lighting cannot match), so the landmarks
    must hold the pose (on 8 synthetic-world clips x 16 frames, 3 instead of 1 took the median
    x/y translation error from above the landmark fit's to below it, 0.98 -> 1.03 -> 0.89 px,
    and pitch 1.25 -> 1.08, yaw 0.23 -> 0.20 degrees; roll 0.34 -> 0.44, still below the
    landmark fit's 0.59; 10 was no better);
  - photometric: mean over the face pixels of each frame of a robust function of the
    Euclidean RGB distance ``d`` (colours in [0, 1]) between the render (``render_size``,
    through the renderer) and the fixed crop area-downsampled to that size:
    ``s * (1 - exp(-d / s))`` with ``s = photo_robust_scale`` (about ``d`` for small ``d``; a
    pixel's pull fades as ``exp(-d / s)``), so that what the 3DMM cannot express at all - hair
    over the forehead, moles, specular highlights, a key light the SH lighting cannot match -
    does not drag the pose and expression (with the plain distance it did: on synthetic-world
    clips the pitch moved by up to 8 degrees to shrink the forehead under a fringe). Face pixels
    = rendered alpha AND the face model's skin region (eyes and mouth interior excluded),
    eroded by one pixel; both images get a 3x3 blur first (the render is point-sampled, the
    target area-averaged);
  - priors: squared norms of identity, texture, expression (per frame) and lighting
    (per frame, around the ambient start value); the expression's is ``w_exp_prior`` in stage 1
    and ``w_exp_prior_photo`` (100x) in stage 2: 57 of the 64 expression components move no
    vertex by more than about a pixel per unit, stage 1 fits them to the landmark noise, and
    the images do not constrain them either, so stage 2 pulls them back toward 0 (on the 8
    clips: full 64-component expression RMSE 0.340 -> 0.324, lower on 8 clips of 8, where
    the weak prior left it at 0.367, lower on 1; the 7 major components 0.195 -> 0.150);
  - temporal smoothness: mean squared first difference over frames of the pose (angles x
    :data:`ANGLE_TO_PX`, translation x :data:`TRANSLATION_TO_PX`: about pixels of a 224 crop)
    and of the expression.
* **Coarse to fine.** Stage 1 (``landmark_steps``): landmarks + priors + smoothness, first
  pose only (``pose_fraction`` of the steps) from the points identity and expression move
  least (:data:`RIGID_LANDMARK_WEIGHTS`: brows, nose, eyes), then pose, expression and
  identity on all points, the angles at ``lr * shape_angle_lr_ratio`` (otherwise the head
  pitches to explain a longer or shorter lower face before the identity can). Stage 2
  (``photometric_steps``): adds the photometric loss, first texture and lighting only
  (``appearance_fraction``; the robust kernel's scale anneals from ``photo_robust_anneal``
  times its value down to it, so that every pixel pulls while the appearance is still far
  off), then everything, the geometry at ``lr * refine_lr_ratio`` (it is already close). Each
  phase has its own Adam with a cosine learning-rate decay to ``lr * final_lr_ratio``.

A tqdm progress bar shows the phase, the weighted RMS landmark error (224-crop pixels) and
the photometric loss.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from talkinghead.devices import resolve_device
from talkinghead.errors import ConfigError, InputError, TrainingError
from talkinghead.instantiate import config_default
from talkinghead.progress import progress_bar
from talkinghead.face.camera import CAMERA_Z, Camera, pose_vertices
from talkinghead.face.coeffs import COEFF_DIM, EXP_DIM, ID_DIM, SH_DIM, SLICES, TEX_DIM, join_coeffs, split_coeffs
from talkinghead.render import get_renderer

#: Per-landmark weights of the reprojection loss (iBUG 68 order).
LANDMARK_WEIGHTS = np.ones(68, dtype=np.float32)
LANDMARK_WEIGHTS[0:17] = 0.5  # jaw contour: slides along the silhouette in real images
LANDMARK_WEIGHTS[27:36] = 2.0  # nose
LANDMARK_WEIGHTS[60:68] = 2.0  # inner lips (mouth opening)
#: Weights of the pose-only phase: only the points that identity and expression move least
#: (brows, nose, eyes); the jaw and lips would drag the pose toward explaining a longer or
#: shorter lower face, or an open mouth, by pitching the head.
RIGID_LANDMARK_WEIGHTS = np.zeros(68, dtype=np.float32)
RIGID_LANDMARK_WEIGHTS[17:48] = 1.0

#: Pose units -> approximate pixels of a 224 crop, for the smoothness loss: a face about
#: 0.8 units in radius seen at depth ~12 with focal 1015 moves ~70 px per radian and ~85 px per
#: unit of translation.
ANGLE_TO_PX = 70.0
TRANSLATION_TO_PX = 85.0
#: Expression units -> "pixels" for the smoothness loss (1.0 = a full action of ~20 px).
EXPRESSION_TO_PX = 20.0


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def _fitting_default(key: str) -> Any:
    return config_default("fitting/default.yaml", key)


@dataclass
class FittingConfig:
    """The keys of ``configs/fitting/default.yaml`` (their defaults are read from there: written once)."""

    landmark_steps: int = _fitting_default("landmark_steps")
    photometric_steps: int = _fitting_default("photometric_steps")
    lr: float = _fitting_default("lr")
    final_lr_ratio: float = _fitting_default("final_lr_ratio")
    pose_fraction: float = _fitting_default("pose_fraction")
    appearance_fraction: float = _fitting_default("appearance_fraction")
    refine_lr_ratio: float = _fitting_default("refine_lr_ratio")
    photometric_warmup: float = _fitting_default("photometric_warmup")
    shape_angle_lr_ratio: float = _fitting_default("shape_angle_lr_ratio")
    render_size: int = _fitting_default("render_size")
    w_landmark: float = _fitting_default("w_landmark")
    w_landmark_photo: float = _fitting_default("w_landmark_photo")
    w_photo: float = _fitting_default("w_photo")
    w_id_prior: float = _fitting_default("w_id_prior")
    w_exp_prior: float = _fitting_default("w_exp_prior")
    w_exp_prior_photo: float = _fitting_default("w_exp_prior_photo")
    w_tex_prior: float = _fitting_default("w_tex_prior")
    w_light_prior: float = _fitting_default("w_light_prior")
    w_smooth_pose: float = _fitting_default("w_smooth_pose")
    w_smooth_exp: float = _fitting_default("w_smooth_exp")
    batch_frames: int = _fitting_default("batch_frames")
    batch_clips: int = _fitting_default("batch_clips")
    photo_robust_scale: float = _fitting_default("photo_robust_scale")
    photo_robust_anneal: float = _fitting_default("photo_robust_anneal")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None = None, **overrides) -> "FittingConfig":
        """From a config node / dict (unknown keys raise :class:`ConfigError`)."""
        values = {**dict(cfg or {}), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown fitting key(s) {unknown}; see configs/fitting/default.yaml")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        for key in ("landmark_steps", "photometric_steps"):
            if int(getattr(self, key)) < 0:
                raise ConfigError(f"fitting.{key} must be >= 0, got {getattr(self, key)}")
        if self.landmark_steps + self.photometric_steps == 0:
            raise ConfigError("fitting.landmark_steps + fitting.photometric_steps is 0; fit at least one step")
        if int(self.render_size) < 8:
            raise ConfigError(f"fitting.render_size must be at least 8 pixels, got {self.render_size}")
        if int(self.batch_frames) < 1:
            raise ConfigError(f"fitting.batch_frames must be >= 1, got {self.batch_frames}")
        if int(self.batch_clips) < 1:
            raise ConfigError(f"fitting.batch_clips must be >= 1, got {self.batch_clips}")
        if not self.lr > 0:
            raise ConfigError(f"fitting.lr must be positive, got {self.lr}")
        if self.photo_robust_scale < 0:
            raise ConfigError(f"fitting.photo_robust_scale must be >= 0 (0: plain RGB distance), got {self.photo_robust_scale}")
        if self.photo_robust_anneal < 1:
            raise ConfigError(f"fitting.photo_robust_anneal must be >= 1 (1: no annealing), got {self.photo_robust_anneal}")


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------
def similarity_2d(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares 2-D similarity from points ``src [K, 2]`` to each ``dst [N, K, 2]``:
    ``dst ~ scale * Rot(theta) @ src + shift``. Returns ``scale [N]``, ``theta [N]`` (radians,
    in the coordinates given) and ``shift [N, 2]``."""
    mu_s, mu_d = src.mean(0), dst.mean(1, keepdim=True)  # [2], [N, 1, 2]
    s, d = src - mu_s, dst - mu_d  # [K, 2], [N, K, 2]
    a = (s * d).sum((1, 2))  # sum of dot products                       [N]
    b = (s[:, 0] * d[..., 1] - s[:, 1] * d[..., 0]).sum(1)  # sum of cross products [N]
    scale = torch.sqrt(a**2 + b**2) / (s**2).sum()
    theta = torch.atan2(b, a)
    cos, sin = theta.cos(), theta.sin()
    rotated = torch.stack([cos * mu_s[0] - sin * mu_s[1], sin * mu_s[0] + cos * mu_s[1]], -1)  # [N, 2]
    return scale, theta, mu_d[:, 0] - scale[:, None] * rotated


def initial_pose(face_model, landmarks: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles ``[N, 3]`` and translation ``[N, 3]`` placing the mean face over ``landmarks
    [N, 68, 2]`` (crop pixels): roll, depth and position from a 2-D similarity fit of the
    mean face's frontal projection; yaw and pitch 0."""
    zeros = torch.zeros(1, COEFF_DIM, device=landmarks.device)
    reference = face_model.landmarks_2d(zeros, camera)[0]  # [68, 2] frontal mean face at t = 0
    scale, theta, _ = similarity_2d(reference, landmarks)
    # A world rotation by +a about z (y up) turns image points (v down) by -a.
    roll = -theta
    angles = torch.stack([torch.zeros_like(roll), torch.zeros_like(roll), roll], -1)  # [N, 3]
    model_points = face_model.landmark_vertices(zeros[:, :ID_DIM], zeros[:, ID_DIM:ID_DIM + EXP_DIM])  # [1, 68, 3]
    rotated = pose_vertices(model_points.expand(len(roll), -1, -1), angles, torch.zeros_like(angles))
    centroid = rotated.mean(1)  # [N, 3] rotated landmark centroid in model space
    depth0 = camera.camera_z - centroid[:, 2]  # its depth at translation 0
    depth = depth0 / scale  # apparent size ~ 1 / depth
    target = landmarks.mean(1)  # [N, 2]
    tx = (target[:, 0] - camera.principal_px) * depth / camera.focal_px - centroid[:, 0]
    ty = (camera.image_size - target[:, 1] - camera.principal_px) * depth / camera.focal_px - centroid[:, 1]
    tz = camera.camera_z - depth - centroid[:, 2]
    return angles, torch.stack([tx, ty, tz], -1)


# --------------------------------------------------------------------------------------------
# Parameters and losses
# --------------------------------------------------------------------------------------------
class FitParameters(torch.nn.Module):
    """Identity/texture per clip and expression/pose/lighting per frame of a batch of clips.

    Clips of different lengths are padded to the longest (``T`` frames): the per-clip parameters
    are ``[B, 80]``, the per-frame ones ``[B, T, k]``; ``mask [B, T]`` (1 = a real frame) and
    ``frame_index [F]`` (the flat index ``b * T + t`` of each of the ``F`` real frames, clip after
    clip) say which frames are real. Everything per frame outside this class (targets, losses,
    :meth:`coeffs`) lists the real frames only, in that order, so padding costs no rendering; a
    padded frame gets no gradient and never moves. ``lengths``: the frames of each clip (an int:
    one clip); ``angles`` and ``translation``: ``[F, 3]`` start values of the real frames."""

    def __init__(self, lengths: int | Sequence[int], angles: torch.Tensor, translation: torch.Tensor):
        super().__init__()
        device = angles.device
        lengths = [int(lengths)] if isinstance(lengths, (int, np.integer)) else [int(n) for n in lengths]
        num_clips, max_len = len(lengths), max(lengths)
        self.lengths = torch.tensor(lengths, device=device)  # [B]
        self.mask = (torch.arange(max_len, device=device)[None] < self.lengths[:, None]).float()  # [B, T]
        self.frame_index = self.mask.flatten().nonzero()[:, 0]  # [F]
        self.frame_clip = torch.div(self.frame_index, max_len, rounding_mode="floor")  # [F] clip of each real frame
        self.identity = torch.nn.Parameter(torch.zeros(num_clips, ID_DIM, device=device))
        self.texture = torch.nn.Parameter(torch.zeros(num_clips, TEX_DIM, device=device))
        self.expression = torch.nn.Parameter(torch.zeros(num_clips, max_len, EXP_DIM, device=device))
        self.angles = torch.nn.Parameter(self._padded(angles.detach()))
        self.translation = torch.nn.Parameter(self._padded(translation.detach()))
        self.lighting = torch.nn.Parameter(torch.zeros(num_clips, max_len, SH_DIM, device=device))

    @classmethod
    def from_coeffs(cls, lengths: int | Sequence[int], coeffs: np.ndarray, device: torch.device) -> "FitParameters":
        """Start from the real frames' coefficients ``[F, 257]`` (identity and texture: their mean
        over each clip's frames)."""
        c = split_coeffs(torch.as_tensor(coeffs, dtype=torch.float32, device=device))
        params = cls(lengths, c.angles, c.translation)
        with torch.no_grad():
            counts = params.lengths[:, None].float()
            params.identity.index_add_(0, params.frame_clip, c.identity).div_(counts)
            params.texture.index_add_(0, params.frame_clip, c.texture).div_(counts)
            params.expression.copy_(params._padded(c.expression))
            params.lighting.copy_(params._padded(c.lighting))
        return params

    def _padded(self, per_frame: torch.Tensor) -> torch.Tensor:
        """Real frames ``[F, k]`` -> padded ``[B, T, k]`` (zeros in the padding)."""
        padded = per_frame.new_zeros(self.mask.numel(), per_frame.shape[-1])
        padded[self.frame_index] = per_frame
        return padded.view(*self.mask.shape, -1)

    def coeffs(self, frames: slice | None = None) -> torch.Tensor:
        """Coefficients ``[n, 257]`` of the real frames in ``frames`` (a slice of the ``F`` real
        frames; default all)."""
        frames = frames or slice(None)
        index, clip = self.frame_index[frames], self.frame_clip[frames]  # [n] flat padded indices, [n] their clips

        def per_frame(p: torch.Tensor) -> torch.Tensor:
            return p.flatten(0, 1).index_select(0, index)

        return join_coeffs(self.identity.index_select(0, clip), per_frame(self.expression),
                           self.texture.index_select(0, clip), per_frame(self.angles), per_frame(self.lighting),
                           per_frame(self.translation))

    def per_frame_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over each clip's real frames of padded ``values [B, T]`` -> ``[B]``."""
        return (values * self.mask).sum(1) / self.lengths

    def group(self, *names: str) -> list[torch.nn.Parameter]:
        return [getattr(self, name) for name in names]


@dataclass
class _Targets:
    """What the fit compares against, on the fitting device (real frames only, clip after clip)."""

    landmarks: torch.Tensor  # [F, 68, 2] crop pixels
    weights: torch.Tensor  # [68]
    px_scale: float  # crop pixels -> 224-crop pixels
    images: torch.Tensor | None  # [F, 3, R, R] in [0, 1], or None without photometric stage
    frame_weight: torch.Tensor | None = None  # [F] 1 / (frames of the frame's clip): per-frame terms are clip means


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, px_scale: float) -> torch.Tensor:
    """Per-frame weighted mean squared landmark distance in 224-crop pixels ``[n]``."""
    sq = ((predicted - target) * px_scale).square().sum(-1)  # [n, 68]
    return (sq * weights).sum(-1) / weights.sum()


def photometric_loss(rendered: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scale: float = 0.0) -> torch.Tensor:
    """Per-frame mean over the masked pixels ``[n]`` of the Euclidean RGB distance ``d`` (robust:
    not squared) or, with ``scale > 0``, of ``scale * (1 - exp(-d / scale))``: about ``d`` for
    small distances, bounded by ``scale``, so a pixel's pull falls as ``exp(-d / scale)`` (a
    pixel the face model cannot explain at all, such as hair over the forehead, barely counts)."""
    dist = ((rendered - target).square().sum(1, keepdim=True) + 1e-8).sqrt()  # [n, 1, R, R]
    if scale > 0:
        dist = -scale * torch.expm1(-dist / scale)
    return (dist * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp_min(1.0)


def smoothness_loss(params: FitParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared frame-to-frame differences of pose (approx. px) and expression within each
    clip ``([B], [B])``; 0 for a one-frame clip (pairs with a padded frame do not count)."""
    pose = torch.cat([params.angles * ANGLE_TO_PX, params.translation * TRANSLATION_TO_PX], -1)  # [B, T, 6]
    pairs = params.mask[:, 1:] * params.mask[:, :-1]  # [B, T - 1]: both frames real
    count = pairs.sum(1).clamp_min(1.0)
    pose_term = ((pose[:, 1:] - pose[:, :-1]).square().sum(-1) * pairs).sum(1) / count
    exp_step = (params.expression[:, 1:] - params.expression[:, :-1]) * EXPRESSION_TO_PX
    exp_term = (exp_step.square().sum(-1) * pairs).sum(1) / count
    return pose_term, exp_term


# --------------------------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """Fitted coefficients and how well they fit."""

    coeffs: np.ndarray  # float32 [N, 257]
    landmark_error_px: np.ndarray  # float32 [N] mean landmark distance per frame (crop pixels)
    losses: dict[str, float]  # final loss terms
    history: list[dict] = field(default_factory=list)  # per step: phase and loss terms
    seconds: float = 0.0  # wall seconds (a clip fitted in a batch: its share of the batch's time)
    device: str = "cpu"

    def summary(self) -> dict[str, Any]:
        """Small JSON-friendly summary (for ``meta.extra``)."""
        return {
            "landmark_error_px_mean": float(self.landmark_error_px.mean()),
            "landmark_error_px_median": float(np.median(self.landmark_error_px)),
            "losses": {k: round(float(v), 6) for k, v in self.losses.items()},
            "seconds": round(self.seconds, 2),
            "device": self.device,
        }


@dataclass
class _Phase:
    name: str
    steps: int
    params: tuple[str, ...]
    photometric: bool
    rigid: bool = False  # landmark loss on RIGID_LANDMARK_WEIGHTS only
    lr_scale: dict = field(default_factory=dict)  # parameter name -> learning-rate factor


_GEOMETRY = ("angles", "translation", "expression", "identity")


def _phases(config: FittingConfig) -> list[_Phase]:
    """Coarse-to-fine schedule: pose -> + shape/expression -> appearance -> everything."""
    geometry = _GEOMETRY
    pose_steps = int(round(config.landmark_steps * config.pose_fraction))
    appearance_steps = int(round(config.photometric_steps * config.appearance_fraction))
    phases = [
        _Phase("pose", pose_steps, ("angles", "translation"), False, rigid=True),
        _Phase("shape", config.landmark_steps - pose_steps, geometry, False,
               lr_scale={"angles": config.shape_angle_lr_ratio}),
        _Phase("appearance", appearance_steps, ("texture", "lighting"), True),
        _Phase("joint", config.photometric_steps - appearance_steps, geometry + ("texture", "lighting"), True,
               lr_scale={name: config.refine_lr_ratio for name in geometry}),
    ]
    return [p for p in phases if p.steps > 0]


def _robust_scale(config: FittingConfig, phase: _Phase, i: int) -> float:
    """Scale of the robust photometric kernel at step ``i`` of ``phase``: the appearance phase
    (texture and lighting start from the mean face under ambient light, far from the target
    everywhere) anneals it geometrically from ``photo_robust_scale * photo_robust_anneal`` down to
    ``photo_robust_scale`` (graduated non-convexity: every pixel pulls at first, the outliers
    drop out as the appearance fits); the phases that move the geometry use ``photo_robust_scale``."""
    scale = float(config.photo_robust_scale)
    if scale <= 0 or "angles" in phase.params or phase.steps < 2:
        return scale
    return scale * float(config.photo_robust_anneal) ** (1.0 - i / (phase.steps - 1))


def _lr_schedule(steps: int, floor: float, warmup: float = 0.0):
    """Learning-rate factor for step ``i`` of ``steps``: cosine from 1 down to ``floor``, after
    a linear warm-up over the first ``warmup`` fraction of the steps (Adam's first steps move
    every parameter by about the full learning rate, whatever its gradient: a phase that starts
    from a good fit must start gently)."""
    ramp = max(1.0, warmup * steps)

    def factor(i: int) -> float:
        cosine = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(i, steps - 1) / max(steps - 1, 1)))
        return cosine * min(1.0, (i + 1) / ramp)

    return factor


def _model_on(face_model, device: torch.device):
    """The face model on ``device`` (a copy when it must move: the factory's model is shared)."""
    current = face_model.mean_shape.device
    return face_model if current == device else copy.deepcopy(face_model).to(device)


def _check_inputs(crops, landmarks: np.ndarray, photometric: bool, where: str = "fit") -> None:
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2) or len(landmarks) == 0:
        raise InputError(f"{where}: landmarks must be [N, 68, 2] crop pixels, got {landmarks.shape}")
    if not np.isfinite(landmarks).all():
        raise InputError(f"{where}: landmarks contain NaN/inf; fill detection gaps first (landmarks.clean_track)")
    if crops is None:
        if photometric:
            raise InputError(f"{where}: the photometric stage needs the crops; pass crops or set fitting.photometric_steps=0")
        return
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2] or len(crops) != len(landmarks):
        raise InputError(
            f"{where}: crops must be uint8 [N, S, S, 3] with N = {len(landmarks)} like the landmarks, got {crops.shape}"
        )


def _check_init(init_coeffs, num_frames: int, where: str = "fit") -> np.ndarray:
    init = np.asarray(init_coeffs, dtype=np.float32)
    if init.shape != (num_frames, COEFF_DIM) or not np.isfinite(init).all():
        raise InputError(f"{where}: init_coeffs must be finite [{num_frames}, {COEFF_DIM}] like the landmarks, got {init.shape}")
    return init


def fit_coefficients(
    crops: np.ndarray | None,
    landmarks: np.ndarray,
    face_model,
    config: FittingConfig | Mapping[str, Any] | None = None,
    renderer: str | Any = "torch",
    device: str | torch.device = "auto",
    progress: bool = True,
    crop_size: int | None = None,
    record_history: bool = True,
    init_coeffs: np.ndarray | None = None,
) -> FitResult:
    """Fit per-frame 257-d coefficients to fixed crops ``[N, S, S, 3]`` (uint8 RGB) and their
    landmarks ``[N, 68, 2]`` (crop pixels). ``crops`` may be ``None`` with
    ``photometric_steps=0`` (then give ``crop_size``). ``renderer``: a name for
    :func:`talkinghead.render.get_renderer` or a renderer. ``init_coeffs [N, 257]``: start
    from these (e.g. a previous fit; identity/texture are averaged over frames) instead of
    :func:`initial_pose`. Returns a :class:`FitResult` (:func:`fit_clips` with this clip alone)."""
    return fit_clips(None if crops is None else [crops], [landmarks], face_model, config, renderer=renderer,
                     device=device, progress=progress, crop_size=crop_size, record_history=record_history,
                     init_coeffs=None if init_coeffs is None else [init_coeffs])[0]


def fit_clips(
    crops: Sequence[np.ndarray] | None,
    landmarks: Sequence[np.ndarray],
    face_model,
    config: FittingConfig | Mapping[str, Any] | None = None,
    renderer: str | Any = "torch",
    device: str | torch.device = "auto",
    progress: bool = True,
    crop_size: int | None = None,
    record_history: bool = True,
    init_coeffs: Sequence[np.ndarray | None] | None = None,
) -> list[FitResult]:
    """Fit many clips, ``fitting.batch_clips`` at a time in one optimisation (e.g. LRW's 29-frame
    word clips): clip ``i`` has crops ``crops[i] [N_i, S, S, 3]`` (one crop size ``S`` for all;
    ``crops`` may be ``None`` with ``photometric_steps=0``, then give ``crop_size``) and landmarks
    ``landmarks[i] [N_i, 68, 2]``. Each clip gets its own identity/texture and per-frame
    expression/pose/lighting; the clips of a batch are padded to the longest and masked (the
    padding is never rendered, so unequal lengths cost no compute). The batch's loss is the sum of
    the clips' own losses, which share no parameter, and Adam's update is per element: each clip
    follows the same optimisation as when fitted alone (:func:`fit_coefficients`), up to float
    rounding, whatever its batch companions. Returns one :class:`FitResult` per clip, in order;
    ``seconds`` is each clip's share of its batch's wall time."""
    config = config if isinstance(config, FittingConfig) else FittingConfig.from_mapping(config)
    config.validate()
    photometric = config.photometric_steps > 0
    landmarks = [np.asarray(lm, dtype=np.float32) for lm in landmarks]
    num_clips = len(landmarks)
    if num_clips == 0:
        raise InputError("fit: no clips given; pass at least one clip's landmarks")
    crops = [None] * num_clips if crops is None else list(crops)
    inits = [None] * num_clips if init_coeffs is None else list(init_coeffs)
    if len(crops) != num_clips or len(inits) != num_clips:
        raise InputError(f"fit: {num_clips} clips of landmarks but {len(crops)} of crops and {len(inits)} of "
                         "init_coeffs; give one entry per clip (or None)")
    where = ["fit"] if num_clips == 1 else [f"fit: clip {i}" for i in range(num_clips)]
    for i in range(num_clips):
        _check_inputs(crops[i], landmarks[i], photometric, where[i])
        if inits[i] is not None:
            inits[i] = _check_init(inits[i], len(landmarks[i]), where[i])
    sizes = sorted({int(c.shape[1]) for c in crops if c is not None})
    if len(sizes) > 1:
        raise InputError(f"fit: the clips' crops are {sizes} px; fit clips of one crop size together")
    size = sizes[0] if sizes else int(crop_size or 224)
    dev = resolve_device(device)
    model = _model_on(face_model, dev)
    render = get_renderer(renderer) if isinstance(renderer, str) else renderer
    batch = int(config.batch_clips)
    results: list[FitResult] = []
    for first in range(0, num_clips, batch):
        clips = slice(first, min(first + batch, num_clips))
        results += _fit_batch(crops[clips], landmarks[clips], inits[clips], list(range(num_clips))[clips], model,
                              render, config, dev, size, progress, record_history)
    return results


#: The loss terms a fit reports (:attr:`FitResult.losses`, each entry of ``history``).
TERM_NAMES = ("landmark", "photo", "prior", "smooth_pose", "smooth_exp")


def _fit_batch(crops: list, landmarks: list[np.ndarray], inits: list, clip_ids: list[int], model, render,
               config: FittingConfig, dev: torch.device, size: int, progress: bool,
               record_history: bool) -> list[FitResult]:
    """One batch of checked clips in one optimisation (:func:`fit_clips`)."""
    start = time.perf_counter()
    camera = Camera().with_size(size)
    render_camera = Camera().with_size(int(config.render_size))
    lengths = [len(lm) for lm in landmarks]
    num_clips, num_frames = len(lengths), sum(lengths)
    all_weights = torch.from_numpy(LANDMARK_WEIGHTS).to(dev)
    rigid_weights = torch.from_numpy(RIGID_LANDMARK_WEIGHTS).to(dev)
    targets = _Targets(
        landmarks=torch.from_numpy(np.concatenate(landmarks)).to(dev),  # [F, 68, 2]
        weights=all_weights,
        px_scale=224.0 / size,
        images=None,
    )
    if config.photometric_steps > 0:
        targets.images = _downsample(np.concatenate(crops), int(config.render_size), dev)  # [F, 3, R, R]
    skin = model.skin_mask.to(torch.float32)[None, :, None]  # [1, V, 1]

    # Start: the closed-form pose (identity, expression, texture, lighting 0), or the given coefficients.
    with torch.no_grad():
        angles, translation = initial_pose(model, targets.landmarks, camera)  # [F, 3] each
    start_coeffs = torch.zeros(num_frames, COEFF_DIM, device=dev)
    start_coeffs[:, SLICES["angles"]], start_coeffs[:, SLICES["translation"]] = angles, translation
    bounds = np.cumsum([0] + lengths)
    for clip, init in enumerate(inits):
        if init is not None:
            start_coeffs[bounds[clip]:bounds[clip + 1]] = torch.from_numpy(init).to(dev)
    params = FitParameters.from_coeffs(lengths, start_coeffs, dev)
    frame_clip = params.frame_clip  # [F]
    targets.frame_weight = 1.0 / params.lengths[frame_clip].float()  # [F]
    chunk = int(config.batch_frames)
    chunks = [slice(i, min(i + chunk, num_frames)) for i in range(0, num_frames, chunk)]

    def step(photometric: bool, robust_scale: float = 0.0) -> torch.Tensor:
        """One pass over the batch: accumulate gradients chunk by chunk of frames; returns the
        loss terms per clip ``[5, B]`` (:data:`TERM_NAMES`; each clip's own loss, whose sum over
        the clips is what is minimised)."""
        # Clip-level terms (cheap, on the full parameter tensors): [B] each.
        smooth_pose, smooth_exp = smoothness_loss(params)
        exp_prior = config.w_exp_prior_photo if photometric else config.w_exp_prior
        priors = (
            config.w_id_prior * params.identity.square().sum(-1)
            + config.w_tex_prior * params.texture.square().sum(-1)
            + exp_prior * params.per_frame_mean(params.expression.square().sum(-1))
            + config.w_light_prior * params.per_frame_mean(params.lighting.square().sum(-1))
        )
        clip_terms = priors + config.w_smooth_pose * smooth_pose + config.w_smooth_exp * smooth_exp
        if clip_terms.requires_grad:
            clip_terms.sum().backward()
        lm_sum = torch.zeros(num_clips, device=dev)
        photo_sum = torch.zeros(num_clips, device=dev) if photometric else torch.full((num_clips,), math.nan, device=dev)
        for frames in chunks:
            coeffs = params.coeffs(frames)
            weight = targets.frame_weight[frames]  # [n]: each frame's share of its clip's mean
            lm_term = landmark_loss(model.landmarks_2d(coeffs, camera), targets.landmarks[frames], targets.weights,
                                    targets.px_scale) * weight  # [n]
            loss = (config.w_landmark_photo if photometric else config.w_landmark) * lm_term.sum()
            if photometric:
                photo_term = _photometric_terms(model, render, coeffs, render_camera, targets.images[frames], skin,
                                                robust_scale) * weight
                loss = loss + config.w_photo * photo_term.sum()
                photo_sum.index_add_(0, frame_clip[frames], photo_term.detach())
            if loss.requires_grad:
                loss.backward()
            lm_sum.index_add_(0, frame_clip[frames], lm_term.detach())
        return torch.stack([lm_sum, photo_sum, priors.detach(), smooth_pose.detach(), smooth_exp.detach()])

    phases = _phases(config)
    history: list[tuple[str, torch.Tensor]] = []  # (phase, terms [5, B]) per step
    terms = torch.zeros(len(TERM_NAMES), num_clips)
    desc = "fit 3DMM" if num_clips == 1 else f"fit 3DMM ({num_clips} clips)"
    bar = progress_bar(total=sum(p.steps for p in phases), desc=desc, unit="step", enabled=progress)
    for phase in phases:
        targets.weights = rigid_weights if phase.rigid else all_weights
        for name, parameter in params.named_parameters():
            parameter.requires_grad_(name in phase.params)  # frozen groups cost no backward pass
        groups = [{"params": [getattr(params, name)], "lr": config.lr * phase.lr_scale.get(name, 1.0)}
                  for name in phase.params]
        optimiser = torch.optim.Adam(groups, lr=config.lr)
        warmup = config.photometric_warmup if phase.photometric else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_schedule(phase.steps, config.final_lr_ratio, warmup))
        checked = list(range(len(TERM_NAMES))) if phase.photometric else [0, 2, 3, 4]  # photo is NaN without photometry
        for i in range(phase.steps):
            optimiser.zero_grad(set_to_none=True)
            terms = step(phase.photometric, _robust_scale(config, phase, i))
            finite = torch.isfinite(terms[checked]).all(0).cpu()  # [B]
            if not bool(finite.all()):
                which = "" if num_clips == 1 else f" for clip(s) {[clip_ids[c] for c in (~finite).nonzero()[:, 0].tolist()]}"
                raise TrainingError(f"fit: the loss became NaN/inf{which}; check the landmarks (a detection may be "
                                    "wrong) or lower fitting.lr")
            optimiser.step()
            schedule.step()
            if record_history:
                history.append((phase.name, terms))
            bar.update(1)
            if progress:
                bar.set_postfix(phase=phase.name, lm_rms_px=f"{math.sqrt(float(terms[0].mean())):.2f}",
                                photo=f"{float(terms[1].mean()):.4f}" if phase.photometric else "-")
    bar.close()

    with torch.no_grad():
        coeffs = params.coeffs()  # [F, 257]
        error = (model.landmarks_2d(coeffs, camera) - targets.landmarks).norm(dim=-1).mean(-1)  # [F] crop px
    coeffs, error = coeffs.cpu().numpy().astype(np.float32), error.cpu().numpy().astype(np.float32)
    final = terms.T.tolist()  # [B][5]
    steps = torch.stack([t for _, t in history]).permute(2, 0, 1).tolist() if history else [[]] * num_clips  # [B][S][5]
    seconds = (time.perf_counter() - start) / num_clips
    return [
        FitResult(
            coeffs=coeffs[bounds[c]:bounds[c + 1]].copy(),
            landmark_error_px=error[bounds[c]:bounds[c + 1]].copy(),
            losses=dict(zip(TERM_NAMES, final[c])),
            history=[{"phase": phase, **dict(zip(TERM_NAMES, row))} for (phase, _), row in zip(history, steps[c])],
            seconds=seconds,
            device=str(dev),
        )
        for c in range(num_clips)
    ]


def _downsample(crops: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` -> float ``[N, 3, size, size]`` in [0, 1] (area average)."""
    images = torch.from_numpy(np.require(crops, requirements=["C", "W"])).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if images.shape[-1] != size:
        mode = "area" if size < images.shape[-1] else "bilinear"
        images = F.interpolate(images, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return images.contiguous()


def _blur3(images: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur ``[n, C, H, W]`` (edge-replicated borders)."""
    kernel = torch.tensor([1.0, 2.0, 1.0], device=images.device, dtype=images.dtype)
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(images.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])


def _photometric_terms(model, render, coeffs: torch.Tensor, camera: Camera, images: torch.Tensor,
                       skin: torch.Tensor, robust_scale: float = 0.0) -> torch.Tensor:
    """Per-frame photometric loss ``[n]`` of coefficients ``[n, 257]`` against ``images``.

    The render samples pixel centres (aliased) while the target is an area average of the
    crop; to compare like with like, the render is composited over the target, both are
    blurred by a 3x3 binomial kernel, and the face mask is eroded by one pixel (the
    silhouette pixels are only partly face in the target)."""
    geometry = model(coeffs, camera)
    colours = torch.cat([geometry.colours, skin.expand(coeffs.shape[0], -1, -1)], -1)  # [n, V, 4]: RGB + skin
    out = render.render(geometry.vertices, model.triangles, colours, camera)
    rgba = out.rgba  # [n, 5, R, R]: RGB, skin, alpha
    alpha = rgba[:, 4:5]
    mask = alpha * (rgba[:, 3:4] > 0.5).to(rgba.dtype)  # [n, 1, R, R] face skin pixels
    mask = -F.max_pool2d(-mask, 3, stride=1, padding=1)  # erode by one pixel
    composite = alpha * rgba[:, :3] + (1 - alpha) * images
    return photometric_loss(_blur3(composite), _blur3(images), mask.detach(), robust_scale)


# --------------------------------------------------------------------------------------------
# Evaluation against truth and a visual check
# --------------------------------------------------------------------------------------------
def coefficient_errors(fitted: np.ndarray, truth: np.ndarray, face_model=None) -> dict[str, float]:
    """Errors of fitted coefficients ``[N, 257]`` against ground truth: median absolute Euler
    angle error (degrees, over frames and axes, and per axis: pitch = x, yaw = y, roll = z),
    median translation error (model units, and pixels of a 224 crop for x/y), expression
    coefficient RMSE and, with ``face_model``, the mean vertex distance of the expression offsets
    (model units, ~1 dm) and the coefficient RMSE over the *major* expression components (those
    whose largest vertex motion per unit is at least a tenth of the strongest component's: the
    others move no vertex by more than about a pixel, so images barely constrain them)."""
    f, t = split_coeffs(np.asarray(fitted, np.float64)), split_coeffs(np.asarray(truth, np.float64))
    angle_error = np.abs(np.degrees(f.angles - t.angles))  # [N, 3]: pitch (x), yaw (y), roll (z)
    out = {
        "angle_deg_median": float(np.median(angle_error)),
        "angle_deg_max": float(angle_error.max()),
        "pitch_deg_median": float(np.median(angle_error[:, 0])),
        "yaw_deg_median": float(np.median(angle_error[:, 1])),
        "roll_deg_median": float(np.median(angle_error[:, 2])),
        "translation_median": float(np.median(np.linalg.norm(f.translation - t.translation, axis=-1))),
        "translation_xy_px_median": float(np.median(
            np.linalg.norm(f.translation[:, :2] - t.translation[:, :2], axis=-1) * 1015.0 / (CAMERA_Z - t.translation[:, 2]))),
        "translation_z_median": float(np.median(np.abs(f.translation[:, 2] - t.translation[:, 2]))),
        "expression_rmse": float(np.sqrt(np.mean((f.expression - t.expression) ** 2))),
    }
    if face_model is not None:
        basis = face_model.exp_basis.detach().cpu().double()  # [V*3, 64]
        diff = torch.from_numpy(f.expression - t.expression) @ basis.T  # [N, V*3]
        out["expression_vertex_mean"] = float(diff.view(len(diff), -1, 3).norm(dim=-1).mean())
        reach = basis.view(-1, 3, basis.shape[1]).norm(dim=1).amax(0)  # [64] largest vertex motion per unit
        major = (reach >= 0.1 * reach.max()).numpy()
        out["expression_rmse_major"] = float(np.sqrt(np.mean((f.expression - t.expression)[:, major] ** 2)))
    return out


def truth_sequence(face_model, num_frames: int, image_size: int = 224, seed: int = 0,
                   renderer: str | Any = "torch") -> tuple[np.ndarray, np.ndarray]:
    """A small ground-truth sequence to test the fitter: coefficients ``[N, 257]`` with smooth
    head motion (yaw +-15, pitch +-8, roll +-8 degrees, small shifts, the face at about the
    aligned-crop size), talking-like expressions, one random identity/texture and slowly
    changing lighting, rendered over a smooth random background -> (uint8 frames
    ``[N, S, S, 3]``, coefficients). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames, dtype=np.float64) / 25.0

    def wave(amplitude, low=0.15, high=0.6):
        freq, phase = rng.uniform(low, high), rng.uniform(0, 2 * np.pi)
        return amplitude * np.sin(2 * np.pi * freq * t + phase)

    identity = np.broadcast_to(rng.normal(0, 0.6, ID_DIM), (num_frames, ID_DIM))
    texture = np.broadcast_to(rng.normal(0, 0.4, TEX_DIM), (num_frames, TEX_DIM))
    expression = np.stack([wave(0.08, 0.5, 2.0) for _ in range(EXP_DIM)], -1)
    expression[:, 0] = 0.3 + wave(0.3, 1.0, 3.0)  # jaw: talking
    expression[:, 4] = 0.2 + wave(0.2)  # smile
    expression[:, 6] = wave(0.3)  # brows
    angles = np.radians(np.stack([wave(8.0), wave(15.0), wave(8.0)], -1))
    translation = np.stack([wave(0.08), -0.25 + wave(0.08), -2.2 + wave(0.3)], -1)
    light_base = np.zeros(SH_DIM)
    light_base[[1, 2, 3, 10, 11, 12, 19, 20, 21]] = np.tile(rng.normal(0, 0.12, 3), 3)  # first-order bands, white
    light_base[[0, 9, 18]] = rng.normal(0, 0.05, 3)  # ambient tint
    lighting = light_base + np.stack([wave(0.03) for _ in range(SH_DIM)], -1)
    coeffs = join_coeffs(identity, expression, texture, angles, lighting, translation).astype(np.float32)

    rgba = render_coeffs(face_model, coeffs, image_size, renderer)  # [N, S, S, 4]
    grid = np.linspace(0, 1, image_size)
    colours = rng.uniform(0.2, 0.8, (3, 3))
    background = colours[0] + grid[:, None, None] * (colours[1] - colours[0]) + grid[None, :, None] * (colours[2] - colours[0])
    background = background.clip(0, 1)  # [S, S, 3]: a smooth two-way colour gradient
    frames = rgba[..., :3].clip(0, 1) * rgba[..., 3:] + background[None] * (1 - rgba[..., 3:])
    return (frames * 255 + 0.5).clip(0, 255).astype(np.uint8), coeffs


def draw_fit_overlay(image: np.ndarray, detected: np.ndarray, fitted: np.ndarray, render_rgba: np.ndarray | None = None,
                     blend: float = 0.5) -> np.ndarray:
    """A visual check: ``image`` (uint8 ``[S, S, 3]``) with the rendered face blended in
    (``render_rgba`` float ``[S, S, 4]`` in [0, 1]), detected landmarks as green dots and
    fitted (projected) landmarks as red crosses. Returns uint8 ``[S, S, 3]``."""
    canvas = np.asarray(image, dtype=np.float32).copy()
    if render_rgba is not None:
        alpha = render_rgba[..., 3:4] * blend
        canvas = canvas * (1 - alpha) + np.clip(render_rgba[..., :3], 0, 1) * 255.0 * alpha
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    radius = max(1, canvas.shape[0] // 160)
    for u, v in np.asarray(detected):
        cv2.circle(canvas, (int(round(u - 0.5)), int(round(v - 0.5))), radius + 1, (0, 255, 0), -1, cv2.LINE_AA)
    for u, v in np.asarray(fitted):
        cv2.drawMarker(canvas, (int(round(u - 0.5)), int(round(v - 0.5))), (255, 0, 0), cv2.MARKER_CROSS,
                       3 * radius + 2, 1, cv2.LINE_AA)
    return canvas


def render_coeffs(face_model, coeffs: np.ndarray | torch.Tensor, image_size: int, renderer: str | Any = "torch") -> np.ndarray:
    """Render coefficients ``[N, 257]`` to float RGBA ``[N, S, S, 4]`` in [0, 1] (no hole filling)."""
    render = get_renderer(renderer) if isinstance(renderer, str) else renderer
    coeffs = torch.as_tensor(np.asarray(coeffs), dtype=torch.float32, device=face_model.mean_shape.device)
    camera = Camera().with_size(int(image_size))
    with torch.no_grad():
        geometry = face_model(coeffs, camera)
        out = render.render(geometry.vertices, face_model.triangles, geometry.colours.clamp(0, 1), camera)
    return out.rgba.permute(0, 2, 3, 1).cpu().numpy()


def config_dict(config: FittingConfig) -> dict[str, Any]:
    """The config as a plain dict (for ``meta.extra``)."""
    return asdict(config)

