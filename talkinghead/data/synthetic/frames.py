"""Frame synthesis: the plain 3DMM render and the "real" frame Stage 2 learns to produce.

The *plain render* is what every stage can compute from the coefficients: the face model's
SH-shaded vertex colours rasterized with alpha (:meth:`FrameSynthesizer.plain`).

The *real frame* (:meth:`FrameSynthesizer.real`) renders the same mesh once, but with a
richer appearance, and adds what a 3DMM lacks:

* person-specific fine skin detail (pores, blotches, freckles) in a texture attached to the
  face through the rasterizer's barycentrics (looked up at the interpolated face-model
  coordinates of every pixel);
* a lighting model the 27 SH coefficients cannot express: the SH light plus a directional key
  light with a Blinn-Phong specular highlight, drifting slowly, and per-frame flicker;
* lower teeth and a darker depth gradient in the mouth cavity, catch lights in the eyes;
* hair: a head-shaped region behind the face that follows the head pose (with parallax) and a
  hairline on the forehead; a neck (and collar) under the chin;
* the person's static background, a white balance, slight blur and camera noise.

Everything is batched tensor code over frames and pixels (frames are processed in chunks).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from talkinghead.data.synthetic.people import Person
from talkinghead.face.camera import Camera, pose_vertices
from talkinghead.face.coeffs import split_coeffs
from talkinghead.face.morphable import MorphableModel
from talkinghead.face.procedural import EXPRESSION_UNITS
from talkinghead.face.shading import irradiance
from talkinghead.render import get_renderer

#: Face-model coordinates covered by the detail texture: x in [-U, U], y in [Y0, Y1].
_UV_X = 0.8
_UV_Y0, _UV_Y1 = -1.08, 1.0
_DETAIL_SIZE = 256


# ------------------------------------------------------------------------ face attributes
@dataclass
class FaceAttributes:
    """Per-vertex attributes of the face model the real frames need (shared by all persons).

    ``uv [N, 2]``: face-model x, y of each vertex with the jaw open (so the mouth cavity is
    spread out): the coordinates the skin-detail texture, hairline and catch lights attach to.
    ``skin``, ``teeth``, ``cavity_shade`` ``[N]``: skin mask, lower-teeth mask, darkening of the
    mouth cavity toward its depth. ``pupils [2, 2]``: pupil centres in uv. ``texel_uv
    [T, T, 2]``: the uv of each texel of the face texture (row 0 = top of the face);
    ``skin_texels [T, T]``: 1 where the texel's nearest vertex is skin.
    """

    uv: torch.Tensor
    skin: torch.Tensor
    teeth: torch.Tensor
    cavity_shade: torch.Tensor
    pupils: torch.Tensor
    texel_uv: torch.Tensor
    skin_texels: torch.Tensor

    @classmethod
    def from_model(cls, model: MorphableModel, texture_size: int = _DETAIL_SIZE) -> "FaceAttributes":
        n = model.num_vertices
        jaw = torch.zeros(1, model.exp_basis.shape[1])
        jaw[0, EXPRESSION_UNITS["jaw_open"]] = 1.0
        open_shape = model.shape(torch.zeros(1, model.id_basis.shape[1]), jaw)[0]  # [N, 3]
        uv = open_shape[:, :2].clone()
        skin = model.skin_mask
        mouth = torch.zeros(n, dtype=torch.bool)
        if model.mouth_indices is not None:
            mouth[model.mouth_indices] = True
        cavity = mouth & ~skin
        eye = ~skin & ~cavity
        # relative height inside the open cavity (0 = lower lip, 1 = upper lip), against the
        # cavity vertices at a similar x
        rel = torch.zeros(n)
        idx = cavity.nonzero().squeeze(-1)
        if len(idx):
            x, y = uv[idx, 0], uv[idx, 1]
            near = (x[:, None] - x[None, :]).abs() < 0.02  # [M, M]
            lo = torch.where(near, y[None, :], torch.inf).min(1).values
            hi = torch.where(near, y[None, :], -torch.inf).max(1).values
            rel[idx] = ((y - lo) / (hi - lo).clamp_min(1e-4)).clamp(0, 1)
        teeth = cavity & (rel < 0.2) & (uv[:, 0].abs() < 0.16)
        shade = 1.0 - 0.45 * (cavity & ~teeth).float() * (1.0 - (2.0 * rel - 1.0).abs())
        # pupils: the darkest eye vertices on each side
        darkness = -model.mean_albedo.sum(-1)
        pupils = []
        for side in (-1.0, 1.0):
            on_side = eye & (torch.sign(uv[:, 0]) == side)
            d = torch.where(on_side, darkness, -torch.inf)
            k = max(int(on_side.sum()) // 10, 1)
            pupils.append(uv[d.topk(k).indices].mean(0))
        # skin mask over the detail texture (row 0 = top of the face)
        ty, tx = np.mgrid[0:texture_size, 0:texture_size] + 0.5
        texel_uv = np.stack([(tx / texture_size * 2 - 1) * _UV_X, _UV_Y1 - ty / texture_size * (_UV_Y1 - _UV_Y0)], -1)
        _, nearest = cKDTree(uv.numpy()).query(texel_uv.reshape(-1, 2))
        skin_texels = torch.from_numpy(skin.numpy()[nearest].reshape(texture_size, texture_size).astype(np.float32))
        return cls(uv=uv, skin=skin.float(), teeth=teeth.float(), cavity_shade=shade, pupils=torch.stack(pupils),
                   texel_uv=torch.from_numpy(texel_uv.astype(np.float32)), skin_texels=skin_texels)


# ------------------------------------------------------------------------- person images
def _smooth_field(rng: np.random.Generator, size: int, cutoff: float, power: float = 2.0) -> np.ndarray:
    """A smooth random field ``[size, size]`` (white noise low-passed in the Fourier domain,
    ``cutoff`` in cycles per image), normalised to unit std."""
    fy = np.fft.fftfreq(size)[:, None] * size
    fx = np.fft.rfftfreq(size)[None, :] * size
    gain = 1.0 / (1.0 + (np.hypot(fx, fy) / cutoff) ** power)
    field = np.fft.irfft2(np.fft.rfft2(rng.normal(size=(size, size))) * gain, s=(size, size))
    return field / max(field.std(), 1e-8)


def make_background(seed: int, size: int = 224) -> np.ndarray:
    """A person's static background ``[size, size, 3]`` float32 in [0, 1]: two colours mixed by
    a smooth field, a vertical light gradient, a few soft panels (a room, a window)."""
    rng = np.random.default_rng(seed)
    hue = rng.uniform(0.0, 1.0)
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.85)))
    other = np.array(colorsys.hsv_to_rgb((hue + rng.normal(0.0, 0.08)) % 1.0, rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.85)))
    mix = 1.0 / (1.0 + np.exp(-2.0 * _smooth_field(rng, size, 2.0)))
    img = base * (1 - mix[..., None]) + other * mix[..., None]
    yy, xx = np.mgrid[0:size, 0:size] / size
    img *= (1.0 + rng.uniform(-0.25, 0.25) * (yy - 0.5) + rng.uniform(-0.15, 0.15) * (xx - 0.5))[..., None]
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2)
        w, h = rng.uniform(0.15, 0.6, 2)
        soft = 0.02 + rng.uniform(0, 0.05)
        inside = (1 / (1 + np.exp(-(xx - x0) / soft)) * 1 / (1 + np.exp((xx - x0 - w) / soft))
                  * 1 / (1 + np.exp(-(yy - y0) / soft)) * 1 / (1 + np.exp((yy - y0 - h) / soft)))
        colour = np.array(colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.4), rng.uniform(0.2, 0.95)))
        img = img * (1 - 0.7 * inside[..., None]) + 0.7 * inside[..., None] * colour
    img += 0.015 * _smooth_field(rng, size, 40.0)[..., None]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def make_skin_detail(seed: int, strength: float, freckles: float, size: int = _DETAIL_SIZE) -> np.ndarray:
    """Multiplicative skin detail ``[3, size, size]`` over the face-model coordinates (row 0 =
    top of the face): blotches, pores, freckles and a mole or two."""
    rng = np.random.default_rng(seed)
    blotch = _smooth_field(rng, size, 6.0)
    pores = _smooth_field(rng, size, size / 5.0, power=4.0)
    tint = np.array([1.0, 0.7, 0.6])[:, None, None]  # blotches are reddish
    detail = 1.0 + strength * (0.8 * blotch[None] * tint + 0.3 * pores[None])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    count = int(freckles * 220) + int(rng.integers(0, 3))  # freckles, then moles
    cx = rng.normal(size / 2, size * 0.2, count)
    cy = rng.normal(size * 0.55, size * 0.12, count)
    radius = np.where(np.arange(count) < int(freckles * 220), rng.uniform(0.6, 1.6, count), rng.uniform(1.5, 2.5, count))
    depth = np.where(np.arange(count) < int(freckles * 220), rng.uniform(0.08, 0.2, count), rng.uniform(0.3, 0.5, count))
    spots = np.zeros((size, size))
    for lo in range(0, count, 64):  # chunks of spots, each a [k, size, size] broadcast
        sl = slice(lo, lo + 64)
        d2 = (xx[None] - cx[sl, None, None]) ** 2 + (yy[None] - cy[sl, None, None]) ** 2
        spots = np.maximum(spots, (depth[sl, None, None] * np.exp(-0.5 * d2 / radius[sl, None, None] ** 2)).max(0))
    detail *= 1.0 - spots[None] * np.array([0.8, 1.0, 1.1])[:, None, None]
    return detail.astype(np.float32)


def _over(colour: torch.Tensor, cover: torch.Tensor, layer: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite ``layer`` with coverage ``mask`` over premultiplied ``colour`` / ``cover``."""
    return colour * (1.0 - mask) + layer * mask, cover * (1.0 - mask) + mask


# -------------------------------------------------------------------------- the renderer
class FrameSynthesizer:
    """Renders one person's frames from their per-frame coefficients.

    Args:
        model: the (shared) face model; ``attributes``: its :class:`FaceAttributes`
            (computed once per model when omitted).
        person: whose appearance to use. ``crop_size``: output size (224).
        seed: seeds the camera noise (with the first frame index of each call: frames are
            reproducible for the same chunking, which :mod:`.world` keeps fixed).
    """

    def __init__(self, model: MorphableModel, person: Person, crop_size: int = 224,
                 attributes: FaceAttributes | None = None, seed: int = 0, renderer: str = "torch"):
        self.model = model
        self.person = person
        self.camera = Camera(crop_size)
        self.size = crop_size
        self.attributes = attributes or FaceAttributes.from_model(model)
        self.renderer = get_renderer(renderer)
        self.seed = int(seed)
        look = person.appearance
        self.background = torch.from_numpy(make_background(look.background_seed, crop_size)).permute(2, 0, 1)  # [3, S, S]
        self.hair_colour = torch.tensor(look.hair_colour)
        self.shirt_colour = torch.tensor(look.shirt_colour)
        hair_rng = np.random.default_rng(look.hair_seed)
        self.phase = torch.tensor(hair_rng.uniform(0, 2 * np.pi, 4), dtype=torch.float32)  # hair, light drift, flicker
        self.hair_freq = torch.tensor(hair_rng.integers(3, 9, 4), dtype=torch.float32)
        self.collar = float(hair_rng.uniform(-1.3, -1.05))
        self.albedo = model.albedo(torch.from_numpy(person.texture)[None])  # [1, N, 3]
        skin = model.skin_mask
        self.skin_colour = self.albedo[0, skin].mean(0) * 0.9  # the neck's colour
        forehead = skin & (self.attributes.uv[:, 1] > 0.45)
        self.face_texture = self._face_texture(self.albedo[0, forehead].mean(0))  # [1, 3, T, T]
        half = crop_size // 2  # the layers behind the face are computed at half resolution
        v, u = torch.meshgrid(2.0 * torch.arange(half) + 1.0, 2.0 * torch.arange(half) + 1.0, indexing="ij")
        self.layer_pixels = torch.stack([u, v], -1)  # [S/2, S/2, 2] centres in full-size pixels (u, v)

    # -------------------------------------------------------------------- plain render
    @torch.no_grad()
    def plain(self, coeffs: torch.Tensor) -> torch.Tensor:
        """The plain 3DMM render ``[B, 4, S, S]`` (SH-shaded colour + alpha) of ``coeffs [B, 257]``."""
        geo = self.model(coeffs, self.camera)
        return self.renderer.render(geo.vertices, self.model.triangles, geo.colours, self.camera).rgba.clamp(0, 1)

    # --------------------------------------------------------------------- real frames
    @torch.no_grad()
    def real(self, coeffs: torch.Tensor, frame_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real frames of ``coeffs [B, 257]`` at frames ``frame_index [B]`` -> (uint8
        ``[B, S, S, 3]``, landmarks ``[B, 68, 2]`` in pixels)."""
        c = split_coeffs(coeffs)
        model, B = self.model, len(coeffs)
        vertices = pose_vertices(model.shape(c.identity, c.expression), c.angles, c.translation)  # [B, N, 3]
        normals = model.vertex_normals(vertices)
        same_texture = bool((c.texture == torch.from_numpy(self.person.texture)).all())
        albedo = self.albedo.expand(B, -1, -1) if same_texture else model.albedo(c.texture)
        landmarks = self.camera.project(vertices[:, model.landmark_indices])[0]  # [B, 68, 2]
        t = frame_index.to(torch.float32) / 25.0  # [B] seconds
        colours = self._vertex_colours(albedo, normals, c.lighting, t)
        attrs = torch.cat([colours, self.attributes.uv.expand(B, -1, 2)], -1)  # [B, N, 5]
        out = self.renderer.render(vertices, model.triangles, attrs, self.camera)
        px = out.rgba  # [B, 6, S, S]: colour 3, uv 2, alpha
        face = self._face_pixels(px[:, 0:3], px[:, 3:5])
        alpha = px[:, 5:6]
        under = self._hair_neck_background(c.angles, c.translation)
        img = face * alpha + under * (1.0 - alpha)
        img = self._camera(img, frame_index)
        frames = (img.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return frames, landmarks

    def _vertex_colours(self, albedo: torch.Tensor, normal: torch.Tensor, lighting: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """Richly lit vertex colours ``[B, N, 3]`` from albedo and unit world normals ``[B, N, 3]``:
        SH light plus a drifting key light with a Blinn-Phong highlight on skin and teeth;
        lower teeth and a dark cavity depth."""
        look, attr = self.person.appearance, self.attributes
        teeth = attr.teeth.view(1, -1, 1)
        albedo = albedo * (1.0 - teeth) + teeth * torch.tensor([0.82, 0.8, 0.74])
        key = self._key_light(t).unsqueeze(1)  # [B, 1, 3]
        n_dot_l = (normal * key).sum(-1, keepdim=True)
        half = key + torch.tensor([0.0, 0.0, 1.0])
        half = half / half.square().sum(-1, keepdim=True).sqrt()
        spec = (normal * half).sum(-1, keepdim=True).clamp_min(0.0) ** look.shininess * (n_dot_l > 0)
        light = 0.8 * irradiance(normal, lighting) + look.key_strength * (n_dot_l.clamp_min(0.0) - 0.15)
        shine = look.specular * spec * (attr.skin + 0.6 * attr.teeth).view(1, -1, 1)
        return albedo * light * attr.cavity_shade.view(1, -1, 1) + shine

    def _face_texture(self, forehead_albedo: torch.Tensor) -> torch.Tensor:
        """The person's multiplicative face texture ``[1, 3, T, T]`` over the face coordinates:
        skin detail on the skin, catch lights on the eyeballs, and above the hairline the hair
        (as hair colour / forehead albedo, so that it is lit like the face)."""
        look, attr = self.person.appearance, self.attributes
        detail = torch.from_numpy(make_skin_detail(look.detail_seed, look.skin_detail, look.freckles))  # [3, T, T]
        texture = 1.0 + (detail - 1.0) * attr.skin_texels
        uv = attr.texel_uv.permute(2, 0, 1)  # [2, T, T]
        offset = torch.tensor([0.012 * look.key_light[0] + 0.006, 0.01])  # up and toward the key light
        for pupil in attr.pupils:  # only eyeball vertices have uv near the pupils (lids cover them in a blink)
            d2 = (uv - (pupil + offset).view(2, 1, 1)).square().sum(0)
            texture = texture * (1.0 + 3.5 * torch.exp(-0.5 * d2 / 0.011**2) * (1.0 - attr.skin_texels))
        x, y = uv[0:1], uv[1:2]
        hairline = look.hairline + 0.12 * x**2 + 0.02 * torch.sin(x * 9.0 + self.phase[0])
        fringe = torch.sigmoid((y - hairline) / 0.012) * attr.skin_texels
        hair = self._hair_texture(x[None] * 30.0, y[None])[0] / forehead_albedo.clamp_min(0.05).view(3, 1, 1)
        return (texture * (1.0 - fringe) + hair * fringe)[None]

    def _face_pixels(self, colour: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """The face texture applied to the interpolated colour ``[B, 3, S, S]``, looked up at
        the interpolated face coordinates ``uv [B, 2, S, S]`` (attached to the face)."""
        grid = torch.stack([uv[:, 0] / _UV_X, (_UV_Y1 + _UV_Y0 - 2 * uv[:, 1]) / (_UV_Y1 - _UV_Y0)], -1)  # [B, S, S, 2]
        texture = F.grid_sample(self.face_texture.expand(len(uv), -1, -1, -1), grid, align_corners=False,
                                padding_mode="border")
        return colour * texture

    def _key_light(self, t: torch.Tensor) -> torch.Tensor:
        """Key light direction ``[B, 3]`` drifting slowly (a few degrees) over time."""
        base = torch.tensor(self.person.appearance.key_light)
        drift = torch.stack([0.08 * torch.sin(0.21 * t + self.phase[1]),
                             0.06 * torch.sin(0.17 * t + self.phase[2]), torch.zeros_like(t)], -1)
        return F.normalize(base + drift, dim=-1)

    def _hair_texture(self, angle: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Hair colour ``[B, 3, ...]`` with strands along ``angle`` (any scale) and some shading."""
        strands = (0.8 + 0.12 * torch.sin(angle * self.hair_freq[0] + self.phase[0])
                   + 0.08 * torch.sin(angle * self.hair_freq[1] * 3.1 + self.phase[1] + 2.0 * radius))
        return self.hair_colour.view(1, 3, 1, 1) * strands

    def _project(self, points: torch.Tensor, angles: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """Model-space points ``[P, 3]`` posed per frame -> pixels ``[B, P, 2]``."""
        posed = pose_vertices(points.expand(angles.shape[0], -1, -1), angles, translation)
        return self.camera.project(posed)[0]

    def _hair_neck_background(self, angles: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """What lies behind the face ``[B, 3, S, S]``: the background, and over it neck and
        collar, the head's sides and hair (these smooth layers are computed at half
        resolution, premultiplied, then upsampled)."""
        look = self.person.appearance
        B, H = angles.shape[0], self.layer_pixels.shape[0]
        p = self.layer_pixels.view(1, H, H, 2)
        img = torch.zeros(B, 3, H, H)  # premultiplied colour of the layers
        cover = torch.zeros(B, 1, H, H)
        # neck: from behind the jaw (moves with the head) straight down to the body (translation only)
        top = self._project(torch.tensor([[0.0, -0.55, -0.4]]), angles, translation)[:, 0]  # [B, 2]
        bottom = self.camera.project(torch.tensor([0.0, -2.2, -0.4]) + translation)[0]  # [B, 2]
        axis = bottom - top
        rel = p - top.view(B, 1, 1, 2)
        lam = (rel * axis.view(B, 1, 1, 2)).sum(-1) / (axis**2).sum(-1).view(B, 1, 1)  # along the neck
        across = (rel - lam[..., None] * axis.view(B, 1, 1, 2)).square().sum(-1).sqrt()
        scale = self.camera.focal_px / (self.camera.camera_z - translation[:, 2]).view(B, 1, 1)  # px per unit
        half_width = 0.5 * look.neck_width * scale * (1.0 + 0.25 * lam.clamp(0, 1))
        neck = torch.sigmoid((half_width - across) / 1.0) * (lam > 0)
        shade = 0.55 + 0.35 * (lam * 3.0).clamp(0, 1) - 0.15 * (across / half_width) ** 2
        neck_colour = self.skin_colour.view(1, 3, 1, 1) * shade[:, None]
        collar_v = self.camera.project(torch.tensor([0.0, self.collar, -0.4]) + translation)[0][:, 1]  # [B]
        collar = torch.sigmoid((p[..., 1] - collar_v.view(B, 1, 1) - 0.02 * (p[..., 0] - bottom[:, 0].view(B, 1, 1)) ** 2 / scale) / 1.0)
        body = self.shirt_colour.view(1, 3, 1, 1) * (0.75 + 0.25 * torch.cos((p[..., 0] - bottom[:, 0].view(B, 1, 1)) / scale * 1.5)[:, None])
        neck_colour = neck_colour * (1 - collar[:, None]) + body * collar[:, None]
        neck_mask = torch.maximum(neck, collar * (across < 2.5 * half_width).float())
        img, cover = _over(img, cover, neck_colour, neck_mask[:, None])
        # the head behind the face: an ellipse around a point behind the forehead, posed with
        # the head (so it shows parallax); skin at the sides down to the jaw, hair on top (and
        # down the sides for long hair)
        centre = torch.tensor([[0.0, 0.05, -0.5], [0.92 * look.hair_width, 0.05, -0.5],
                               [0.0, 0.05 + 1.1 * look.hair_height, -0.5]])
        c, a, b = self._project(centre, angles, translation).unbind(1)  # [B, 2] each
        inverse = torch.linalg.inv(torch.stack([a - c, b - c], -1))  # [B, 2 (s, t), 2 (u, v)]
        rel = p - c.view(B, 1, 1, 2)  # [B, S, S, 2]
        s_ = rel[..., 0] * inverse[:, 0, 0].view(B, 1, 1) + rel[..., 1] * inverse[:, 0, 1].view(B, 1, 1)
        t_ = rel[..., 0] * inverse[:, 1, 0].view(B, 1, 1) + rel[..., 1] * inverse[:, 1, 1].view(B, 1, 1)
        radius = torch.sqrt(s_**2 + t_**2 + 1e-12)
        soft = 1.5 / (a - c).square().sum(-1).sqrt().view(B, 1, 1)  # 1.5 px in ellipse-radius units
        head = torch.sigmoid((1.0 - radius) / soft) * torch.sigmoid((t_ + 0.55) / 0.06)
        side = s_.abs()
        ear = torch.exp(-0.5 * (((side - 0.93) / 0.06) ** 2 + ((t_ + 0.15) / 0.18) ** 2))
        head_colour = self.skin_colour.view(1, 3, 1, 1) * (0.95 - 0.4 * side[:, None] ** 2 + 0.1 * ear[:, None])
        img, cover = _over(img, cover, head_colour, head[:, None])
        theta = torch.atan2(s_, t_)
        edge = 1.06 + 0.05 * look.hair_wave * torch.sin(theta * self.hair_freq[2] + self.phase[3])
        cap = torch.sigmoid((t_ - 0.25 + 0.25 * side**2) / 0.05)  # the top of the head
        curtain = torch.sigmoid((side - 0.78) / 0.04) * torch.sigmoid((t_ + look.hair_length) / 0.05)  # long hair
        hair_mask = torch.sigmoid((edge - radius) / soft) * torch.maximum(cap, curtain)
        hair = self._hair_texture(theta[:, None] * 12.0, radius[:, None]) * (1.05 - 0.35 * radius[:, None] ** 2)
        img, cover = _over(img, cover, hair, hair_mask[:, None])
        layers = F.interpolate(torch.cat([img, cover], 1), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.background * (1.0 - layers[:, 3:4]) + layers[:, :3]

    def _camera(self, img: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        """White balance, per-frame exposure flicker, slight blur and sensor noise."""
        look = self.person.appearance
        B = img.shape[0]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(frame_index[0]))
        t = frame_index.to(torch.float32)
        flicker = 1.0 + 0.02 * torch.sin(0.7 * t + self.phase[0]) + 0.01 * torch.rand(B, generator=gen)
        img = img * torch.tensor(look.white_balance).view(1, 3, 1, 1) * flicker.view(B, 1, 1, 1)
        if look.blur > 0:  # separable [b/2, 1, b/2] blur, as shifted sums
            w = look.blur / 2
            p = F.pad(img, (1, 1, 1, 1), mode="replicate")
            img = (p[..., :, :-2] * w + p[..., :, 1:-1] + p[..., :, 2:] * w) / (1 + 2 * w)
            img = (img[..., :-2, :] * w + img[..., 1:-1, :] + img[..., 2:, :] * w) / (1 + 2 * w)
        return img + torch.randn(img.shape, generator=gen) * (look.noise_std / 255.0)
