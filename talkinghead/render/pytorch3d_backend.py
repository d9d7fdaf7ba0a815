"""The ``"pytorch3d"`` renderer: the same interface on pytorch3d's ``MeshRasterizer``.

pytorch3d is imported lazily (it has no wheel on PyPI for most platforms: build it from
source on a CUDA machine). Rasterization uses one face per pixel, no blur and
perspective-correct barycentrics; the colour interpolation is ours (``base.interpolate_corners``),
so both backends shade identically and differ only in which triangle covers which pixel
centre (edge ties; the parity test allows 0.5 % of pixels).

Camera conversion (face/camera.py -> pytorch3d):

* our world: x right, y up, camera at ``z = camera_z`` looking down -z; pixels: u right,
  v down, principal point ``(c, H - c)`` in those pixel coordinates (``c = principal_px``);
* pytorch3d view space: +X left, +Y up, +Z into the screen, ``X_view = X_world @ R + T``.
  So ``R = diag(-1, 1, -1)``, ``T = (0, 0, camera_z)``: ``(x, y, z) -> (-x, y, camera_z - z)``;
  view Z is exactly our camera depth;
* ``PerspectiveCameras(in_ndc=False)`` takes focal length and principal point in pixels with
  the principal point in image coordinates (+x right, +y down). Following pytorch3d's
  screen -> NDC transform, a view point projects to pixel
  ``u = p_x - f X / Z = c + f x / depth`` and ``v = p_y - f Y / Z = (H - c) - f y / depth``,
  which is :meth:`Camera.project`. pytorch3d's pixel (i, j) centre is also at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import torch

from talkinghead.errors import ConfigError
from talkinghead.face.camera import Camera
from talkinghead.render.base import (
    Background,
    RenderOutput,
    assemble_output,
    check_render_inputs,
    corner_vertex_ids,
    interpolate_corners,
    resolve_camera,
)

INSTALL_HINT = (
    "install pytorch3d on a CUDA machine (pip install 'git+https://github.com/facebookresearch/pytorch3d.git', "
    "see the README) or use renderer=torch"
)


def pytorch3d_available() -> bool:
    """Whether pytorch3d's mesh rasterizer imports here."""
    try:
        _import_pytorch3d()
    except ConfigError:
        return False
    return True


def _import_pytorch3d():
    """``(Meshes, PerspectiveCameras, RasterizationSettings, MeshRasterizer)`` or a one-line
    :class:`ConfigError` naming how to install pytorch3d."""
    try:
        from pytorch3d.renderer import MeshRasterizer, PerspectiveCameras, RasterizationSettings
        from pytorch3d.structures import Meshes
    except Exception as err:  # ImportError, or a broken build raising at import time
        reason = f"{type(err).__name__}: {err}"
        raise ConfigError(f"renderer=pytorch3d: pytorch3d does not import ({reason}); {INSTALL_HINT}") from None
    return Meshes, PerspectiveCameras, RasterizationSettings, MeshRasterizer


def pytorch3d_camera(camera: Camera, batch: int, device: torch.device):
    """A batch of pytorch3d ``PerspectiveCameras`` (screen space) equal to ``camera``."""
    _, PerspectiveCameras, _, _ = _import_pytorch3d()
    size = camera.image_size
    focal = camera.focal_px
    principal = (camera.principal_px, size - camera.principal_px)  # image coordinates, +y down
    rotation = torch.diag(torch.tensor([-1.0, 1.0, -1.0], device=device)).expand(batch, 3, 3)
    translation = torch.tensor([[0.0, 0.0, camera.camera_z]], device=device).expand(batch, 3)
    return PerspectiveCameras(
        focal_length=torch.tensor([[focal, focal]], device=device).expand(batch, 2),
        principal_point=torch.tensor([principal], device=device).expand(batch, 2),
        R=rotation,
        T=translation,
        in_ndc=False,
        image_size=torch.tensor([[size, size]], device=device).expand(batch, 2),
        device=device,
    )


class PyTorch3DRenderer:
    """Renderer on pytorch3d's ``MeshRasterizer`` (hard rasterization, 1 face per pixel).

    Args:
        cull_backfaces: skip faces pointing away from the camera (front faces are
            counter-clockwise seen from the camera, as in the torch backend).
        bin_size, max_faces_per_bin: pytorch3d's coarse-to-fine binning (None: its
            heuristics; ``bin_size=0`` forces naive rasterization if bins overflow).
    """

    name = "pytorch3d"

    def __init__(self, cull_backfaces: bool = False, bin_size: int | None = None, max_faces_per_bin: int | None = None):
        _import_pytorch3d()  # fail early with the install hint
        self.cull_backfaces = bool(cull_backfaces)
        self.bin_size = bin_size
        self.max_faces_per_bin = max_faces_per_bin

    def render(
        self,
        vertices: torch.Tensor,
        triangles: torch.Tensor,
        colours: torch.Tensor,
        camera: Camera,
        image_size: int | None = None,
        *,
        background: Background = None,
    ) -> RenderOutput:
        """See :class:`talkinghead.render.base.Renderer`."""
        Meshes, _, RasterizationSettings, MeshRasterizer = _import_pytorch3d()
        triangles = check_render_inputs(vertices, triangles, colours)
        camera = resolve_camera(camera, image_size)
        size = camera.image_size
        batch = vertices.shape[0]
        n_triangles = triangles.shape[0]
        if n_triangles == 0:  # pytorch3d does not take empty meshes
            empty = torch.zeros(0, dtype=torch.long, device=vertices.device)
            return assemble_output(
                batch, size, size, empty, empty, vertices.new_zeros(3, 0), vertices.new_zeros(0),
                colours.new_zeros(colours.shape[-1], 0), background,
            )  # fmt: skip

        settings = RasterizationSettings(
            image_size=size,
            blur_radius=0.0,
            faces_per_pixel=1,
            bin_size=self.bin_size,
            max_faces_per_bin=self.max_faces_per_bin,
            perspective_correct=True,
            cull_backfaces=self.cull_backfaces,
        )
        rasterizer = MeshRasterizer(cameras=pytorch3d_camera(camera, batch, vertices.device), raster_settings=settings)
        meshes = Meshes(verts=vertices.float().contiguous(), faces=triangles.unsqueeze(0).repeat(batch, 1, 1))
        fragments = rasterizer(meshes)

        face = fragments.pix_to_face[..., 0].reshape(-1)  # [B*H*W], packed index, -1 empty
        covered = face >= 0
        pixel_index = torch.arange(face.shape[0], device=face.device).masked_select(covered)
        batch_index = pixel_index // (size * size)
        triangle_index = face.masked_select(covered) - batch_index * n_triangles  # unpack per mesh
        bary = fragments.bary_coords[..., 0, :].reshape(-1, 3).index_select(0, pixel_index).T  # [3, P]
        depth = fragments.zbuf[..., 0].reshape(-1).index_select(0, pixel_index)  # view Z = our depth
        corner_ids = corner_vertex_ids(triangles, batch, batch_index, triangle_index)
        colour = interpolate_corners(colours, corner_ids, bary)
        return assemble_output(batch, size, size, pixel_index, triangle_index, bary, depth, colour, background)
