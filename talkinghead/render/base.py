"""The renderer interface shared by every backend.

A renderer turns a batch of coloured triangle meshes in world space (face/camera.py
conventions: x right, y up, camera at z = ``camera.camera_z`` looking down -z) into RGBA
images. Which triangle covers a pixel is decided by hard rasterization (not differentiable);
the colour at a covered pixel is the perspective-correct barycentric interpolation of the
triangle's vertex colours, which *is* differentiable with respect to the vertex colours and,
through the barycentrics, the vertex positions (like pytorch3d's hard rasterizer).

Backends (chosen by the ``renderer`` config group, or by name with
:func:`talkinghead.render.select.get_renderer`):

* ``"torch"``: :class:`talkinghead.render.rasterizer.TorchRenderer`, pure torch, CPU and
  CUDA; the reference the tests pin down.
* ``"pytorch3d"``: :class:`talkinghead.render.pytorch3d_backend.PyTorch3DRenderer`, on
  pytorch3d's ``MeshRasterizer`` (imported lazily; must agree with the reference).
* ``"auto"``: pytorch3d when it imports and CUDA is available, else torch.

The pipeline only ever talks to :class:`Renderer`, :class:`RenderOutput` and :func:`interpolate`;
the backends live in their own modules and import this one (never the other way round).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from talkinghead.errors import InputError
from talkinghead.face.camera import Camera
from talkinghead.face.planar import vertex_planes

#: What ``background=`` accepts: a grey level, one value per colour channel, or a tensor
#: broadcastable to ``[B, C, H, W]`` (e.g. a background image batch).
Background = float | Sequence[float] | torch.Tensor | None


@dataclass
class CoveredPixels:
    """The per-covered-pixel results a renderer computes, from which :class:`RenderOutput`
    builds its images: ``P`` covered pixels of a ``[B, H, W]`` batch."""

    shape: tuple[int, int, int]  # (B, H, W)
    pixel_index: torch.Tensor  # [P] ascending flat indices into [B, H, W]
    triangle_index: torch.Tensor  # [P] long: the visible triangle
    bary: torch.Tensor  # [3, P] perspective-correct barycentrics (differentiable)
    depth: torch.Tensor  # [P] camera depth (differentiable)


class RenderOutput:
    """What every renderer returns for a batch of ``B`` images of ``H x W`` pixels.

    A pixel is *covered* when the centre of the pixel lies inside a (visible) triangle.
    ``rgba`` is always computed; ``depth``, ``triangle_id`` and ``bary`` are scattered into full
    images the first time they are read (most callers only want the colour), from the
    :class:`CoveredPixels` the renderer keeps in ``covered``.

    * ``rgba`` ``[B, C + 1, H, W]`` (``[B, 4, H, W]`` for RGB vertex colours): interpolated
      vertex colour, then alpha (1 where covered, else 0). Empty pixels hold the background.
    * ``depth`` ``[B, 1, H, W]``: camera depth (``camera_z - z``) of the visible surface, 0
      where empty.
    * ``triangle_id`` ``[B, H, W]`` long: index into ``triangles`` of the visible triangle, -1
      where empty.
    * ``bary`` ``[B, H, W, 3]``: perspective-correct barycentrics of the pixel centre in the
      visible triangle (weights of its vertices ``triangles[id, 0..2]``), 0 where empty; None
      for a backend that has none.
    """

    def __init__(
        self,
        rgba: torch.Tensor,
        depth: torch.Tensor | None = None,
        triangle_id: torch.Tensor | None = None,
        bary: torch.Tensor | None = None,
        *,
        covered: CoveredPixels | None = None,
    ):
        if covered is None and (depth is None or triangle_id is None):
            raise ValueError("RenderOutput needs depth and triangle_id images, or the covered pixels to make them")
        self.rgba = rgba
        self.covered = covered
        self._images = {"depth": depth, "triangle_id": triangle_id, "bary": bary}

    def _image(self, name: str) -> torch.Tensor | None:
        if self._images[name] is None and self.covered is not None:
            c = self.covered
            n_pixels = c.shape[0] * c.shape[1] * c.shape[2]
            if name == "depth":
                image = c.depth.new_zeros(n_pixels).index_copy(0, c.pixel_index, c.depth).view(c.shape[0], 1, *c.shape[1:])
            elif name == "triangle_id":
                image = torch.full((n_pixels,), -1, dtype=torch.long, device=c.pixel_index.device)
                image = image.index_copy_(0, c.pixel_index, c.triangle_index).view(c.shape)
            else:
                image = c.bary.new_zeros(n_pixels, 3).index_copy(0, c.pixel_index, c.bary.T).view(*c.shape, 3)
            self._images[name] = image
        return self._images[name]

    @property
    def depth(self) -> torch.Tensor:
        """``[B, 1, H, W]`` camera depth of the visible surface, 0 where empty."""
        return self._image("depth")

    @property
    def triangle_id(self) -> torch.Tensor:
        """``[B, H, W]`` long index of the visible triangle, -1 where empty."""
        return self._image("triangle_id")

    @property
    def bary(self) -> torch.Tensor | None:
        """``[B, H, W, 3]`` perspective-correct barycentrics, 0 where empty (None if unknown)."""
        return self._image("bary")

    @property
    def rgb(self) -> torch.Tensor:
        """``[B, C, H, W]`` colour channels."""
        return self.rgba[:, :-1]

    @property
    def alpha(self) -> torch.Tensor:
        """``[B, 1, H, W]`` coverage (1 covered, 0 empty)."""
        return self.rgba[:, -1:]

    @property
    def mask(self) -> torch.Tensor:
        """``[B, H, W]`` bool coverage."""
        return self.alpha[:, 0] > 0

    def __repr__(self) -> str:
        return f"RenderOutput(rgba={tuple(self.rgba.shape)}, covered={None if self.covered is None else self.covered.pixel_index.numel()})"


@runtime_checkable
class Renderer(Protocol):
    """Anything that renders meshes into a :class:`RenderOutput`."""

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
        """Render ``vertices [B, N, 3]`` (world space) joined by ``triangles [F, 3]`` (long,
        shared by the batch) with per-vertex ``colours [B, N, C]`` through ``camera``.

        ``image_size`` overrides ``camera.image_size`` (intrinsics scale with it, see
        :meth:`Camera.with_size`). ``background`` sets the colour of empty pixels (default 0).
        """
        ...


# --------------------------------------------------------------------------------------
# Input checks shared by the backends
# --------------------------------------------------------------------------------------


_VALIDATED: dict[str, object] = {}


def check_render_inputs(vertices: torch.Tensor, triangles: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Validate the shapes of a render call; return ``triangles`` as a long tensor on the
    vertices' device. Raises :class:`InputError` naming the argument and the fix."""
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 3 or vertices.shape[-1] != 3:
        shape = tuple(vertices.shape) if isinstance(vertices, torch.Tensor) else type(vertices).__name__
        raise InputError(
            f"render: vertices must be a [B, N, 3] tensor, got {shape}; add a batch dimension with vertices[None]"
        )
    if not vertices.is_floating_point():
        raise InputError(f"render: vertices must be floating point, got {vertices.dtype}; pass vertices.float()")
    if not isinstance(triangles, torch.Tensor) or triangles.dim() != 2 or triangles.shape[-1] != 3:
        shape = tuple(triangles.shape) if isinstance(triangles, torch.Tensor) else type(triangles).__name__
        raise InputError(f"render: triangles must be an [F, 3] integer tensor shared by the batch, got {shape}")
    if triangles.is_floating_point() or triangles.dtype == torch.bool:
        raise InputError(f"render: triangles must be an integer tensor, got {triangles.dtype}; pass triangles.long()")
    if not isinstance(colours, torch.Tensor) or colours.dim() != 3 or colours.shape[:2] != vertices.shape[:2]:
        shape = tuple(colours.shape) if isinstance(colours, torch.Tensor) else type(colours).__name__
        raise InputError(
            f"render: colours must be [B, N, C] = [{vertices.shape[0]}, {vertices.shape[1]}, C] like the vertices, got {shape}"
        )
    triangles = triangles.to(device=vertices.device, dtype=torch.long)
    n_vertices = vertices.shape[1]
    cached = _VALIDATED.get("key")  # the last valid mesh: skip re-checking the same tensor
    if triangles.numel() and not (cached and cached[0] is triangles and cached[1:] == (triangles._version, n_vertices)):
        low, high = (int(x) for x in torch.aminmax(triangles))
        if low < 0 or high >= n_vertices:
            raise InputError(
                f"render: triangles index vertices outside [0, {n_vertices}) (min {low}, max {high}); "
                "check the mesh's triangle list"
            )
        _VALIDATED["key"] = (triangles, triangles._version, n_vertices)
    return triangles


def resolve_camera(camera: Camera, image_size: int | None) -> Camera:
    """``camera`` at ``image_size`` pixels when given (intrinsics scaled), else as is."""
    if image_size is None or image_size == camera.image_size:
        return camera
    if int(image_size) <= 0:
        raise InputError(f"render: image_size must be a positive number of pixels, got {image_size}")
    return camera.with_size(int(image_size))


# --------------------------------------------------------------------------------------
# Interpolation and output assembly (shared by the backends; differentiable)
# --------------------------------------------------------------------------------------


_COLUMNS_CACHE: dict[str, object] = {}


def triangle_columns(triangles: torch.Tensor) -> torch.Tensor:
    """``triangles [F, 3]`` as a contiguous ``[3, F]`` tensor (row k = corner k).

    The last result is cached for the same tensor object (unchanged since), as a renderer is
    called with the same mesh again and again; ``stack(unbind)`` is also much faster than a
    strided copy on CPU."""
    cached = _COLUMNS_CACHE.get("key")
    if cached is not None and cached[0] is triangles and cached[1] == triangles._version:
        return _COLUMNS_CACHE["value"]  # type: ignore[return-value]
    columns = torch.stack(triangles.unbind(1))
    _COLUMNS_CACHE.update(key=(triangles, triangles._version), value=columns)
    return columns


def corner_vertex_ids(
    triangles: torch.Tensor, batch: int, batch_index: torch.Tensor, triangle_index: torch.Tensor
) -> torch.Tensor:
    """Flat vertex indices ``[3, P]`` into :func:`vertex_planes` (``n * batch + b``) of the
    corners of ``P`` (batch element, triangle) pairs, for ``triangles [F, 3]`` shared by a
    batch of ``batch`` meshes."""
    corners = torch.stack([row.index_select(0, triangle_index) for row in triangle_columns(triangles)])  # [3, P]
    return corners.mul_(batch).add_(batch_index.unsqueeze(0))


def interpolate_corners(attrs: torch.Tensor, corner_ids: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """Vertex attributes ``attrs [B, N, C]`` interpolated at ``P`` pixels with corner ids
    ``[3, P]`` (:func:`corner_vertex_ids`) and barycentrics ``bary [3, P]`` -> ``[C, P]``.
    Differentiable w.r.t. ``attrs`` and ``bary``."""
    planes = vertex_planes(attrs)  # [C, N*B]
    corner_values = planes.index_select(1, corner_ids.reshape(-1)).view(planes.shape[0], 3, -1)  # [C, 3, P]
    return (corner_values * bary.to(corner_values.dtype)).sum(1)


def interpolate(attrs: torch.Tensor, triangles: torch.Tensor, out: RenderOutput) -> torch.Tensor:
    """Interpolate any per-vertex attribute ``attrs [B, N, C]`` with the visibility and
    barycentrics of a render ``out`` -> ``[B, C, H, W]`` (0 where empty).

    Differentiable w.r.t. ``attrs`` and, through ``out.bary``, the vertex positions of the
    render (use it for normals, a second colour set, landmark indicators, ...)."""
    if out.covered is None and out.bary is None:
        raise InputError(
            "interpolate: this RenderOutput has no barycentrics (bary is None); render with a backend that returns them"
        )
    B, H, W = out.covered.shape if out.covered is not None else out.triangle_id.shape
    if attrs.dim() != 3 or attrs.shape[0] != B:
        raise InputError(f"interpolate: attrs must be [B={B}, N, C] like the rendered vertices, got {tuple(attrs.shape)}")
    triangles = triangles.to(device=attrs.device, dtype=torch.long)
    if out.covered is not None:  # the renderer's own per-pixel results: nothing to search
        pixel_index, triangle_index, bary = out.covered.pixel_index, out.covered.triangle_index, out.covered.bary
    else:
        flat_ids = out.triangle_id.reshape(-1)
        pixel_index = (flat_ids >= 0).nonzero().squeeze(1)  # [P]
        triangle_index = flat_ids.index_select(0, pixel_index)
        bary = out.bary.reshape(-1, 3).index_select(0, pixel_index).T  # [3, P]
    corner_ids = corner_vertex_ids(triangles, B, pixel_index // (H * W), triangle_index)
    values = interpolate_corners(attrs, corner_ids, bary)  # [C, P]
    image = values.new_zeros(values.shape[0], B * H * W).index_copy(1, pixel_index, values)
    return image.view(-1, B, H, W).transpose(0, 1).contiguous()


def background_image(
    background: Background, batch: int, channels: int, height: int, width: int, like: torch.Tensor
) -> torch.Tensor:
    """``background`` as a channel-first ``[C, B, H, W]`` tensor (dtype/device of ``like``)."""
    if background is None:
        return like.new_zeros(()).expand(channels, batch, height, width)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.dim() <= 1:  # a grey level or one value per channel
        if bg.numel() not in (1, channels):
            raise InputError(f"render: background must have 1 or {channels} values (one per colour channel), got {bg.numel()}")
        return bg.reshape(-1, 1, 1, 1).expand(channels, batch, height, width)
    try:  # an image or a batch of images [..., C, H, W]
        return bg.expand(batch, channels, height, width).transpose(0, 1)
    except RuntimeError:
        raise InputError(
            f"render: a background tensor must broadcast to [B, C, H, W] = [{batch}, {channels}, {height}, {width}], "
            f"got {tuple(bg.shape)}"
        ) from None


def assemble_output(
    batch: int,
    height: int,
    width: int,
    pixel_index: torch.Tensor,
    triangle_index: torch.Tensor,
    bary: torch.Tensor,
    depth: torch.Tensor,
    colour: torch.Tensor,
    background: Background = None,
) -> RenderOutput:
    """Scatter per-covered-pixel results into full images.

    ``pixel_index [P]`` are flat indices into ``[B, H, W]``; ``triangle_index [P]``,
    ``bary [3, P]``, ``depth [P]`` and ``colour [C, P]`` belong to those pixels. The RGBA image
    is made now; depth, triangle ids and barycentrics when first read. Gradients flow from the
    images back to ``bary``, ``depth`` and ``colour``.
    """
    n_pixels = batch * height * width
    channels = colour.shape[0]
    # One [C + 1, B*H*W] buffer: background, then the covered pixels written in place
    # (autograd tracks in-place writes into a fresh tensor).
    rgba = colour.new_empty(channels + 1, batch, height, width)
    rgba[:channels].copy_(background_image(background, batch, channels, height, width, colour))
    rgba[channels].zero_()
    flat = rgba.view(channels + 1, n_pixels)
    flat[:channels].index_copy_(1, pixel_index, colour)
    flat[channels].index_fill_(0, pixel_index, 1.0)
    rgba = rgba.transpose(0, 1)  # [B, C + 1, H, W]
    rgba = rgba if batch == 1 else rgba.contiguous()
    covered = CoveredPixels((batch, height, width), pixel_index, triangle_index, bary, depth)
    return RenderOutput(rgba, covered=covered)
