"""Sharp faces at the source resolution: the lower face synthesised by warping real frames.

In ``matched`` pose mode every output frame ``t`` has a *reference frame* ``r(t)`` of the
person (one of the fine-tuning frames) with the right head pose, background, hair and eyes; only
what the audio changes -- mouth, jaw, lower cheeks -- differs from it. This module makes that
region from the person's own frames instead of a GAN, so it is as sharp as the video itself and
needs no training (the route that practical lip-sync systems take; the paper's full-frame
memory-augmented refiner, ``talkinghead.pipeline.stage2``, still serves ``predicted``/``still``
pose and ``synthesis=refiner``):

1. **Donor retrieval** (:meth:`MouthCompositor.select_donors`): for each output frame, the
   fine-tuning frame whose 3DMM mouth (the 3-D positions of the 20 mouth and 7 lower-jaw
   landmark vertices of the person's own face, from the expression alone) is closest to the
   predicted one, with a small penalty for a head pose far from the reference frame's (less
   warping) and a hysteresis that keeps the previous donor unless another is clearly better
   (no texture flicker between equally good donors).
2. **Warp** (:meth:`MouthCompositor.warp_fields`): the target face (reference pose, predicted
   expression) is rasterised with each vertex carrying its projected position in the donor
   frame, which gives, for every covered pixel, where that surface point is in the donor: a
   backward warp. Off the mesh (the mouth's hole, the neck below the chin) the displacement is
   extrapolated smoothly (normalised convolution).
3. **Region**: the lower face of the target *and* of the reference geometry (so the reference's
   own chin is covered when the new mouth is less open), from a per-vertex weight that is 0
   above the nose and 1 from the upper lip down, dilated past the jaw line and feathered.
4. **Compositing** (:meth:`MouthCompositor.compose`) at the reference crop's full resolution:
   the warped donor, shifted by the mean colour difference along the region's border (exposure
   and white balance drift between frames), alpha-blended into the reference frame. Outside the
   region the output *is* the reference frame, so paste-back into the full frame has no seam.

All steps are batched over frames (``[n, ...]`` tensors); nothing loops over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from talkinghead.errors import ConfigError, InputError
from talkinghead.face.camera import Camera, pose_planes
from talkinghead.face.coeffs import SLICES, split_coeffs
from talkinghead.instantiate import config_default
from talkinghead.metrics.image import gaussian_window

#: 0-based iBUG-68 landmarks that describe the mouth for retrieval: the lower jaw 5-11 and the
#: 20 mouth points 48-67.
MOUTH_LANDMARKS = np.r_[5:12, 48:68]
NOSE_BOTTOM, UPPER_LIP_TOP = 33, 51


@dataclass
class MouthOptions:
    """Settings of :class:`MouthCompositor` (the ``mouth:`` block of ``configs/infer.yaml``, where
    each is explained and its default written).

    Sizes are fractions of the crop side unless named in pixels; ``pose_weight`` is in squared
    224-crop pixels per squared degree; ``hysteresis`` in squared 224-crop pixels.
    """

    render_size: int = config_default("infer.yaml", "mouth.render_size")
    pose_weight: float = config_default("infer.yaml", "mouth.pose_weight")
    hysteresis: float = config_default("infer.yaml", "mouth.hysteresis")
    dilate: float = config_default("infer.yaml", "mouth.dilate")
    feather: float = config_default("infer.yaml", "mouth.feather")
    extrapolate_sigma: float = config_default("infer.yaml", "mouth.extrapolate_sigma")
    colour_match: bool = config_default("infer.yaml", "mouth.colour_match")
    batch_size: int = config_default("infer.yaml", "mouth.batch_size")


def mouth_options(values=None) -> MouthOptions:
    """:class:`MouthOptions` from a mapping (the ``mouth:`` config block); unknown keys are a
    one-line :class:`ConfigError`."""
    if values is None:
        return MouthOptions()
    values = dict(values.items()) if hasattr(values, "items") else dict(values)
    known = set(MouthOptions.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"mouth.{unknown[0]} is not a mouth-synthesis setting; use one of {', '.join(sorted(known))}")
    return MouthOptions(**values)


def _gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` (reflect padding); identity for sigma < 0.3."""
    if sigma_px < 0.3:
        return image
    radius = max(1, int(round(3 * sigma_px)))
    radius = min(radius, image.shape[-1] - 1, image.shape[-2] - 1)
    kernel = gaussian_window(2 * radius + 1, sigma_px, dtype=image.dtype, device=image.device)  # [2r + 1]
    channels = image.shape[1]
    out = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1),
                   groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1),
                    groups=channels)


def _normalised_fill(values: torch.Tensor, weight: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Fill ``values [B, C, H, W]`` where ``weight [B, 1, H, W]`` is 0 with a smooth
    extrapolation (normalised convolution, computed at quarter resolution); keeps them where
    the weight is 1."""
    size = values.shape[-1]
    small = max(8, size // 4)
    v = F.interpolate(values * weight, size=(small, small), mode="area")
    w = F.interpolate(weight, size=(small, small), mode="area")
    scale = small / size
    v, w = _gaussian_blur(v, sigma_px * scale), _gaussian_blur(w, sigma_px * scale)
    filled = F.interpolate(v / w.clamp_min(1e-6), size=values.shape[-2:], mode="bilinear", align_corners=False)
    return weight * values + (1 - weight) * filled


def lower_face_weights(face_model) -> torch.Tensor:
    """Per-vertex weight ``[N]`` of the lower face on the model's mean shape: 0 above the
    bottom of the nose, rising smoothly to 1 at the top of the upper lip and below."""
    mean = face_model.mean_shape.reshape(-1, 3)  # [N, 3]
    lm = mean[face_model.landmark_indices]  # [68, 3]
    y_top, y_full = lm[NOSE_BOTTOM, 1], lm[UPPER_LIP_TOP, 1]
    t = ((y_top - mean[:, 1]) / (y_top - y_full).clamp_min(1e-6)).clamp(0, 1)
    return t * t * (3 - 2 * t)  # smoothstep


class MouthCompositor:
    """Synthesises the lower face of a person's frames from their own fine-tuning frames.

    Args:
        face_model: the clip's face model (coefficients of ``donor_coeffs`` belong to it).
        renderer: any :class:`talkinghead.render.Renderer` (gives barycentrics).
        donor_coeffs: ``[M, 257]`` coefficients of the donor frames (the fine-tuning frames).
        donor_images: ``[M, 3, S, S]`` float in [0, 1] or uint8 ``[M, S, S, 3]``: the donors'
            fixed crops at the output resolution ``S`` (any size; the warp is resolution-free).
        options: :class:`MouthOptions`.
    """

    def __init__(self, face_model, renderer, donor_coeffs, donor_images, options: MouthOptions | None = None):
        self.face_model = face_model
        self.renderer = renderer
        self.options = options or MouthOptions()
        self.device = face_model.mean_shape.device
        self.donor_coeffs = torch.as_tensor(np.asarray(donor_coeffs), dtype=torch.float32, device=self.device)  # [M, 257]
        if self.donor_coeffs.ndim != 2 or len(self.donor_coeffs) == 0:
            raise InputError(f"MouthCompositor needs donor coefficients [M, 257], got {tuple(self.donor_coeffs.shape)}")
        self.donor_images = donor_images  # uint8 [M, S, S, 3] (numpy, e.g. a memory map) or float [M, 3, S, S]
        if len(donor_images) != len(self.donor_coeffs):
            raise InputError(f"MouthCompositor: {len(self.donor_coeffs)} donor coefficient rows but {len(donor_images)} donor images")
        self.vertex_weight = lower_face_weights(face_model).to(self.device)  # [N]
        self.camera = Camera().with_size(self.options.render_size)
        self._donor_mouths = self.mouth_shape(self.donor_coeffs[:, SLICES["identity"]],
                                              self.donor_coeffs[:, SLICES["expression"]])  # [M, K, 3]

    # ------------------------------------------------------------------ 1. donor retrieval
    def mouth_shape(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Model-space mouth/jaw landmark positions ``[B, K, 3]`` in 224-crop pixels at the
        canonical depth (unposed: pose does not enter the retrieval distance)."""
        vertices = self.face_model.landmark_vertices(identity, expression)[:, MOUTH_LANDMARKS]  # [B, K, 3]
        camera = Camera()
        return vertices * (camera.focal_px / camera.camera_z)

    def donor_costs(self, expression, ref_angles) -> torch.Tensor:
        """``[n, M]`` retrieval cost of every donor for ``expression [n, 64]`` at reference
        head angles ``ref_angles [n, 3]`` (radians): mean squared mouth-landmark distance
        (224-crop pixels) + ``pose_weight`` x squared angle difference (degrees)."""
        expression = torch.as_tensor(np.asarray(expression), dtype=torch.float32, device=self.device)
        ref_angles = torch.as_tensor(np.asarray(ref_angles), dtype=torch.float32, device=self.device)
        identity = self.donor_coeffs[:1, SLICES["identity"]].expand(len(expression), -1)
        target = self.mouth_shape(identity, expression)  # [n, K, 3]
        mouth = torch.cdist(target.flatten(1), self._donor_mouths.flatten(1),
                            compute_mode="donot_use_mm_for_euclid_dist") ** 2 / target.shape[1]  # [n, M]
        donor_angles = self.donor_coeffs[:, SLICES["angles"]]  # [M, 3]
        pose = torch.cdist(torch.rad2deg(ref_angles), torch.rad2deg(donor_angles)) ** 2  # [n, M]
        return mouth + self.options.pose_weight * pose

    def select_donors(self, expression, ref_angles, previous: int | None = None) -> np.ndarray:
        """Donor index ``[n]`` (rows of ``donor_coeffs``) for each output frame, with
        hysteresis: the previous frame's donor is kept while it costs at most ``hysteresis``
        more than the best. ``previous`` continues a stream from an earlier chunk."""
        costs = self.donor_costs(expression, ref_angles).cpu().numpy()  # [n, M]
        best = costs.argmin(1)
        chosen = np.empty(len(costs), dtype=np.int64)
        margin = self.options.hysteresis
        for t in range(len(costs)):  # a scalar recurrence over frames (n values), not pixels
            keep = previous is not None and costs[t, previous] <= costs[t, best[t]] + margin
            previous = previous if keep else int(best[t])
            chosen[t] = previous
        return chosen

    # ------------------------------------------------------------------ 2.-3. warp and region
    def warp_fields(self, target_coeffs: torch.Tensor, ref_coeffs: torch.Tensor, donor_index) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward warp and region at ``render_size`` R.

        ``target_coeffs``, ``ref_coeffs``: ``[n, 257]``. Returns ``(grid [n, R, R, 2], region
        [n, 1, R, R])``: ``grid`` holds, in ``grid_sample``'s normalised coordinates
        (``align_corners=False``), where each output pixel is found in its donor crop; the
        region is the soft lower-face mask in [0, 1].
        """
        opts, R = self.options, self.options.render_size
        n = len(target_coeffs)
        donors = self.donor_coeffs[torch.as_tensor(np.asarray(donor_index), device=self.device)]  # [n, 257]
        c = split_coeffs(torch.cat([target_coeffs, ref_coeffs, donors]).to(self.device))  # 3n frames
        planes = pose_planes(self.face_model.shape_planes(c.identity, c.expression), c.angles, c.translation)
        vertices = planes.permute(2, 1, 0)  # [3n, N, 3] world space (a view of the planar layout)
        donor_uv, _ = self.camera.project(vertices[2 * n:])  # [n, N, 2] pixels of R (u right, v down)
        weight = self.vertex_weight.view(1, -1, 1).expand(2 * n, -1, -1)  # [2n, N, 1]
        attrs = torch.cat([weight, torch.cat([donor_uv, donor_uv]) / R], -1)  # [2n, N, 3]
        out = self.renderer.render(vertices[: 2 * n], self.face_model.triangles, attrs, self.camera)
        image = out.rgba  # [2n, 4, R, R]: weight, donor u/R, donor v/R, coverage
        covered = image[:n, 3:4]  # [n, 1, R, R] target mesh coverage
        pixel = (torch.arange(R, dtype=torch.float32, device=self.device) + 0.5) / R  # pixel centres
        grid_u, grid_v = pixel.view(1, 1, 1, R).expand(n, 1, R, R), pixel.view(1, 1, R, 1).expand(n, 1, R, R)
        identity = torch.cat([grid_u, grid_v], 1)  # [n, 2, R, R] in [0, 1]
        displacement = (image[:n, 1:3] - identity) * covered  # [n, 2, R, R]
        displacement = _normalised_fill(displacement, covered, opts.extrapolate_sigma * R)
        grid = (identity + displacement) * 2 - 1  # [n, 2, R, R] -> grid_sample coordinates
        region = torch.maximum(image[:n, :1] * covered, image[n:, :1] * image[n:, 3:4])  # [n, 1, R, R]
        # Grown and feathered at a quarter of the resolution (it is smooth), then upsampled.
        small = max(16, R // 4)
        region = F.interpolate(region, size=(small, small), mode="area")
        grow = max(1, int(round(opts.dilate * small)))  # down (the chin moves down as the mouth opens) ...
        side = max(1, grow // 3)  # ... much more than sideways (the jaw line is near hair and background)
        region = F.max_pool2d(region, (2 * grow + 1, 2 * side + 1), stride=1, padding=(grow, side))
        region = _gaussian_blur(region, opts.feather * small)
        region = F.interpolate(region, size=(R, R), mode="bilinear", align_corners=False).clamp(0, 1)
        return grid.permute(0, 2, 3, 1), region

    # ------------------------------------------------------------------ 4. compositing
    def _donor_batch(self, donor_index) -> torch.Tensor:
        """Donor crops ``[n, 3, S, S]`` float in [0, 1]."""
        index = np.asarray(donor_index)
        images = self.donor_images
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return images[torch.as_tensor(index)].to(self.device)
        batch = torch.as_tensor(np.asarray(images[index]), device=self.device)  # uint8 [n, S, S, 3]
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def compose(self, target_coeffs, ref_coeffs, ref_images: torch.Tensor, donor_index) -> tuple[torch.Tensor, torch.Tensor]:
        """Output crops ``[n, 3, S, S]`` and their region ``[n, 1, S, S]`` (both in [0, 1]).

        ``ref_images``: the reference frames' crops ``[n, 3, S, S]`` float in [0, 1] at the
        output resolution; ``target_coeffs``/``ref_coeffs`` ``[n, 257]``; ``donor_index [n]``.
        """
        target_coeffs = torch.as_tensor(target_coeffs, dtype=torch.float32, device=self.device)
        ref_coeffs = torch.as_tensor(np.asarray(ref_coeffs), dtype=torch.float32, device=self.device)
        donor_index = np.asarray(donor_index)
        step = max(1, int(self.options.batch_size))
        if len(target_coeffs) > step:
            parts = [self.compose(target_coeffs[i:i + step], ref_coeffs[i:i + step], ref_images[i:i + step],
                                  donor_index[i:i + step]) for i in range(0, len(target_coeffs), step)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        ref_images = ref_images.to(self.device, torch.float32)
        size = ref_images.shape[-1]
        with torch.no_grad():
            grid, region = self.warp_fields(target_coeffs, ref_coeffs, donor_index)
            if grid.shape[1] != size:
                grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                     align_corners=False).permute(0, 2, 3, 1)
                region = F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False)
            warped = F.grid_sample(self._donor_batch(donor_index), grid, mode="bilinear", padding_mode="border",
                                   align_corners=False)  # [n, 3, S, S]
            if self.options.colour_match:
                border = 4 * region * (1 - region)  # [n, 1, S, S]: peaks on the soft edge
                shift = ((ref_images - warped) * border).sum((2, 3), keepdim=True) / border.sum((2, 3), keepdim=True).clamp_min(1e-6)
                warped = warped + shift
            out = ref_images + region * (warped - ref_images)
        return out.clamp_(0, 1), region


__all__ = ["MouthCompositor", "MouthOptions", "lower_face_weights", "mouth_options"]
