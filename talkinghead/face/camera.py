"""Rotation convention and the perspective camera (method.md section 1). Defined here once.

World (model) space: x right, y up, z toward the viewer. The camera sits at z = 10 looking
down -z. A vertex ``v`` (row vector) is posed as ``v @ R + t`` with ``R = (Rz @ Ry @ Rx)^T``
(i.e. the column-vector rotation ``Rz Ry Rx`` applied to ``v``). Camera depth is
``10 - z``. Pixel coordinates are continuous with the origin at the top-left corner of the
image, u to the right and v downward; pixel (row i, column j) has its centre at
``(u, v) = (j + 0.5, i + 0.5)``. For the 224 crop the focal length is 1015 px and the
principal point (112, 112); other image sizes scale both by ``image_size / 224``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from talkinghead.face.planar import widened

FOCAL = 1015.0
CROP_SIZE = 224
PRINCIPAL = 112.0
CAMERA_Z = 10.0


def euler_to_rotation(angles: torch.Tensor) -> torch.Tensor:
    """Euler angles ``[..., 3]`` (x, y, z radians) -> row-vector rotation ``R = (Rz Ry Rx)^T``
    ``[..., 3, 3]``; pose a vertex with ``v @ R``."""
    x, y, z = angles.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return (rz @ ry @ rx).transpose(-1, -2)


def rotation_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_to_rotation` (for |y| < pi/2): ``[..., 3, 3]`` -> ``[..., 3]``."""
    m = rotation.transpose(-1, -2)  # M = Rz Ry Rx
    y = torch.asin((-m[..., 2, 0]).clamp(-1.0, 1.0))
    x = torch.atan2(m[..., 2, 1], m[..., 2, 2])
    z = torch.atan2(m[..., 1, 0], m[..., 0, 0])
    return torch.stack([x, y, z], -1)


def pose_vertices(vertices: torch.Tensor, angles: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Rigidly pose ``[B, N, 3]`` model-space vertices with angles ``[B, 3]`` and translation
    ``[B, 3]`` -> world-space ``[B, N, 3]``."""
    return vertices @ euler_to_rotation(angles) + translation.unsqueeze(-2)


def pose_planes(planes: torch.Tensor, angles: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """:func:`pose_vertices` in the face model's planar layout: ``[3, N, B]`` (coordinate,
    vertex, batch) model-space vertices -> world-space ``[3, N, B]``, as
    ``out_i = t_i + sum_j v_j R[j, i]`` with per-batch ``R`` and ``t`` (multiply-adds along
    the batch axis: on CPU faster than a batched product with a 3 x 3 inner dimension)."""
    rows, r = widened(planes.contiguous())
    x, y, z = rows  # [N / r, r * B] each
    rotation = euler_to_rotation(angles).to(planes.dtype).permute(1, 2, 0).repeat(1, 1, r)  # [3, 3, r * B]: R[j, i] tiled
    translation = translation.to(planes.dtype).T.repeat(1, r)  # [3, r * B]
    return torch.stack(
        [
            torch.addcmul(translation[i], x, rotation[0, i]).addcmul_(y, rotation[1, i]).addcmul_(z, rotation[2, i])
            for i in range(3)
        ]
    ).view(planes.shape)


def rotate_normals(normals: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate ``[B, N, 3]`` normals like :func:`pose_vertices` (no translation)."""
    return normals @ euler_to_rotation(angles)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera of method.md: focal 1015 px and principal point 112 for a 224 crop,
    camera at z = ``camera_z`` looking down -z. ``image_size`` rescales the intrinsics."""

    image_size: int = CROP_SIZE
    focal: float = FOCAL
    principal: float = PRINCIPAL
    camera_z: float = CAMERA_Z
    znear: float = 0.1

    @property
    def scale(self) -> float:
        return self.image_size / CROP_SIZE

    @property
    def focal_px(self) -> float:
        return self.focal * self.scale

    @property
    def principal_px(self) -> float:
        return self.principal * self.scale

    @property
    def fov_degrees(self) -> float:
        """Full vertical/horizontal field of view (about 12.59 degrees)."""
        return math.degrees(2 * math.atan(self.image_size / 2 / self.focal_px))

    def with_size(self, image_size: int) -> "Camera":
        return Camera(image_size, self.focal, self.principal, self.camera_z, self.znear)

    def depth(self, vertices: torch.Tensor) -> torch.Tensor:
        """World ``[..., 3]`` -> positive depth in front of the camera ``[...]``."""
        return self.camera_z - vertices[..., 2]

    def project(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space ``[..., 3]`` -> (pixel ``[..., 2]`` as (u, v), depth ``[...]``)."""
        u, v, depth = self.project_coords(*vertices.unbind(-1))
        return torch.stack([u, v], -1), depth

    def project_coords(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`project` on separate coordinate tensors of one shape (e.g. the ``[N, B]``
        planes of the face model's planar layout) -> ``(u, v, depth)`` of that shape."""
        depth = self.camera_z - z
        safe = depth.clamp_min(1e-6)
        u = self.focal_px * x / safe + self.principal_px
        v_up = self.focal_px * y / safe + self.principal_px
        return u, self.image_size - v_up, depth

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`project`: pixel ``[..., 2]`` and depth ``[...]`` -> world ``[..., 3]``."""
        x = (pixels[..., 0] - self.principal_px) * depth / self.focal_px
        y = (self.image_size - pixels[..., 1] - self.principal_px) * depth / self.focal_px
        return torch.stack([x, y, self.camera_z - depth], -1)

    def intrinsics(self) -> torch.Tensor:
        """3x3 K for the camera frame (x right, y down, z forward) in pixels."""
        f, c = self.focal_px, self.principal_px
        return torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])
