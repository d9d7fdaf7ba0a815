"""Pure-torch z-buffer rasterizer (CPU and CUDA, no compiled code) and the ``"torch"`` renderer.

How it works, for a batch of ``B`` meshes sharing ``F`` triangles (all steps are batched
tensor code over triangles, candidate pixels and the batch):

1. Project the vertices once (:meth:`Camera.project`) and compute, per triangle, the integer
   range of pixel columns/rows whose *centres* ``(j + 0.5, i + 0.5)`` can lie inside it,
   clipped to the image. Triangles that cover no pixel centre, lie off-screen, have a vertex
   at or in front of the near plane or are degenerate (or, optionally, face away from the
   camera) are dropped.
2. Candidate pixel tests, as edge functions (top-left fill rule, below) plus ``1 / depth``,
   which is affine in screen space and thus exact under perspective:

   * pass A tests the first candidate (top-left pixel of the range) of *every* triangle at
     once; in a dense face mesh most triangles have a 1 x 1 range, so this is nearly all the
     work, done without any gather;
   * pass B takes the triangles with a larger range, buckets them by range size ``K``
     (``bucket_sizes``) and tests a ``K x K`` window per triangle as one tensor, in chunks of
     at most ``max_candidates`` tests; triangles larger than the largest bucket enumerate
     exactly their range (ragged, chunked), so a 200 x 200 px triangle is fine.
3. Visibility: ``scatter_reduce(amax)`` of packed int64 keys into one ``[B*H*W]`` buffer.
   High 32 bits: the float32 bit pattern of ``1 / depth`` (for positive floats the bit
   pattern orders like the value, so the max is the nearest surface); low 32 bits:
   ``2^31 - 1 - triangle`` (equal depth goes to the lower triangle index).
4. For covered pixels only, the winning triangle's perspective-correct barycentrics are
   recomputed from the differentiable projected vertices and the vertex colours are
   interpolated. Which triangle covers a pixel is not differentiable; the colour is, w.r.t.
   the vertex colours and, through the barycentrics, the vertex positions (as in
   pytorch3d's hard rasterizer).

Fill rule: an edge function is ``E(p) = d x (p - m)`` with ``d`` the edge direction and ``m``
the edge midpoint ``(a + b) / 2``, which is bit-identical for the two triangles sharing the
edge (float addition commutes), while their ``d`` are exact negations. A pixel centre exactly
on an edge (``E == 0``) belongs to the triangle for which the edge is a *left* edge (inward
normal pointing to +u) or a *top* edge (horizontal, inward normal pointing down, +v). So
triangles sharing an edge leave no gaps and never both claim a pixel centre.

Back faces: both sides are rendered (the z-test decides) unless ``cull_backfaces=True``. A
front face is counter-clockwise as seen from the camera in world space (x right, y up), as in
OpenGL and pytorch3d: its normal ``(v1 - v0) x (v2 - v0)`` points towards the camera.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

import torch

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

#: Window sizes (pixels per side) of the pass-B buckets, increasing. Triangles whose pixel
#: range is larger than the last one enumerate their exact range instead.
DEFAULT_BUCKETS: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16, 24, 32)
#: Candidate pixel tests per chunk in pass B (peak memory is about 40 bytes per test).
DEFAULT_MAX_CANDIDATES = 1 << 21

_LOW_BITS = 0x7FFFFFFF  # the low word of a key holds _LOW_BITS - triangle index
_COVERED = 1 << 32  # a key >= this has a positive 1/depth in its high word
# Added to an edge function that owns the centres on it: turns E == 0 into E > 0 and leaves
# every other value unchanged (our edge values are never subnormal).
_TIE_BIAS = torch.finfo(torch.float32).tiny
_LITTLE_ENDIAN = sys.byteorder == "little"


# --------------------------------------------------------------------------------------
# Per-triangle setup
# --------------------------------------------------------------------------------------


@dataclass
class _Setup:
    """Raster setup of ``M`` triangles: ``[M]`` or ``[3, M]`` (one row per edge; edge ``i``
    is opposite vertex ``i``). Float32 unless noted."""

    col0: torch.Tensor  # first candidate pixel column (integral)
    row0: torch.Tensor  # first candidate pixel row
    cols: torch.Tensor  # candidate columns in range (>= 1 for kept triangles)
    rows: torch.Tensor  # candidate rows in range
    base: torch.Tensor  # long: flat index of pixel (row0, col0) in the [B*H*W] buffer
    low_word: torch.Tensor  # int32: _LOW_BITS - triangle index
    mid_u: torch.Tensor  # [3, M] edge midpoints
    mid_v: torch.Tensor  # [3, M]
    dir_u: torch.Tensor  # [3, M] edge directions, oriented so that the interior has E > 0
    dir_v: torch.Tensor  # [3, M]
    tie_bias: torch.Tensor  # [3, M] _TIE_BIAS where the edge owns centres lying on it, else 0
    inv_depth_weight: torch.Tensor  # [3, M] (1 / z_i) / |2 area|: 1/depth = sum_i weight_i E_i(p)

    def take(self, index: torch.Tensor) -> "_Setup":
        """The triangles at ``index`` (long ``[M']``)."""
        return _Setup(**{f.name: getattr(self, f.name).index_select(-1, index) for f in fields(self)})

    def slice(self, start: int, stop: int) -> "_Setup":
        return _Setup(**{f.name: getattr(self, f.name)[..., start:stop] for f in fields(self)})

    def edges_at(self, centre_u: torch.Tensor, centre_v: torch.Tensor) -> torch.Tensor:
        """Oriented edge functions ``[3, M]`` at one point per triangle (``[M]`` each)."""
        return self.dir_u * (centre_v - self.mid_v) - self.dir_v * (centre_u - self.mid_u)


def _transposed_triangles(triangles: torch.Tensor) -> torch.Tensor:
    """``[F, 3]`` -> contiguous ``[3, F]`` (``stack(unbind)`` is much faster than a strided copy)."""
    return torch.stack(triangles.unbind(1))


def _setup(
    corner_u: torch.Tensor,
    corner_v: torch.Tensor,
    corner_z: torch.Tensor,
    area: torch.Tensor,
    col0: torch.Tensor,
    row0: torch.Tensor,
    cols: torch.Tensor,
    rows: torch.Tensor,
    base: torch.Tensor,
    low_word: torch.Tensor,
) -> _Setup:
    """Edge functions, fill-rule ties and the 1/depth weights of triangles given their
    corners ``[3, M]`` (pixels and depth) and doubled signed pixel-space ``area [M]``."""
    start_u, end_u = corner_u.roll(-1, 0), corner_u.roll(1, 0)  # edge i: vertex i+1 -> i+2
    start_v, end_v = corner_v.roll(-1, 0), corner_v.roll(1, 0)
    orientation = area.sign()  # [M]: makes the interior positive for both windings
    dir_u = (end_u - start_u) * orientation
    dir_v = (end_v - start_v) * orientation
    mid_u = (start_u + end_u) * 0.5
    mid_v = (start_v + end_v) * 0.5
    # Top-left rule on the inward normal (-dir_v, dir_u): own the edge when it points to +u
    # (left edge) or, for a horizontal edge, to +v (top edge). score > 0 <=> owns.
    score = (-dir_v).sign() * 2 + dir_u.sign()
    tie_bias = score.clamp_(0, 1).mul_(_TIE_BIAS)
    inv_depth_weight = corner_z.reciprocal() / area.abs()
    return _Setup(col0, row0, cols, rows, base, low_word, mid_u, mid_v, dir_u, dir_v, tie_bias, inv_depth_weight)


def _pack_keys(inv_depth: torch.Tensor, low_word: torch.Tensor) -> torch.Tensor:
    """float32 ``inv_depth >= 0`` and broadcastable int32 ``low_word`` -> int64 keys (bits of
    ``inv_depth`` high, ``low_word`` low), same shape as ``inv_depth``."""
    high = inv_depth.contiguous().view(torch.int32)
    if _LITTLE_ENDIAN:
        return torch.stack([low_word.expand_as(high), high], -1).view(torch.int64).squeeze(-1)
    return (high.long() << 32) | low_word.long()


# --------------------------------------------------------------------------------------
# Rasterization
# --------------------------------------------------------------------------------------


def rasterize(
    pixels: torch.Tensor,
    depth: torch.Tensor,
    triangles: torch.Tensor,
    height: int,
    width: int,
    *,
    znear: float = 0.1,
    cull_backfaces: bool = False,
    bucket_sizes: tuple[int, ...] = DEFAULT_BUCKETS,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard z-buffer rasterization of projected meshes (no gradients).

    Args:
        pixels: ``[B, N, 2]`` projected vertices ``(u, v)`` in pixels (u right, v down; pixel
            (i, j) has its centre at ``(j + 0.5, i + 0.5)``).
        depth: ``[B, N]`` camera depth of the vertices (positive in front of the camera).
        triangles: ``[F, 3]`` long vertex indices, shared by the batch.
        height, width: image size in pixels.
        znear: triangles with a vertex at depth <= ``znear`` are dropped.
        cull_backfaces: drop triangles facing away from the camera (see the module doc).
        bucket_sizes: increasing window sizes (>= 2) for pass B.
        max_candidates: candidate pixel tests per chunk in pass B (bounds memory).

    Returns:
        ``(pixel_index [P], triangle_index [P])``: ascending flat indices into ``[B, H, W]``
        of the covered pixels and the index of the visible triangle at each.
    """
    with torch.no_grad():
        batch, n_vertices = depth.shape
        n_triangles = triangles.shape[0]
        device = depth.device
        key_buffer = torch.zeros(batch * height * width, dtype=torch.long, device=device)
        if batch and n_triangles:
            _rasterize_into(
                key_buffer,
                pixels.detach().float(),
                depth.detach().float(),
                triangles,
                height,
                width,
                znear,
                cull_backfaces,
                tuple(bucket_sizes),
                int(max_candidates),
            )
        covered = key_buffer >= _COVERED
        pixel_index = torch.arange(key_buffer.shape[0], device=device).masked_select(covered)
        triangle_index = _LOW_BITS - (key_buffer.masked_select(covered) & 0xFFFFFFFF)
    return pixel_index, triangle_index


def _rasterize_into(
    key_buffer: torch.Tensor,
    pixels: torch.Tensor,
    depth: torch.Tensor,
    triangles: torch.Tensor,
    height: int,
    width: int,
    znear: float,
    cull_backfaces: bool,
    bucket_sizes: tuple[int, ...],
    max_candidates: int,
) -> None:
    batch, n_vertices = depth.shape
    n_triangles = triangles.shape[0]
    device = depth.device

    # Corners of every triangle of every batch element, [3, B*F] (row k = corner k).
    corner_ids = _transposed_triangles(triangles)  # [3, F]
    if batch > 1:
        offsets = torch.arange(batch, device=device) * n_vertices
        corner_ids = (corner_ids.unsqueeze(1) + offsets[:, None]).reshape(3, -1)
    corner_ids = corner_ids.reshape(-1)
    corner_u = pixels[..., 0].reshape(-1).index_select(0, corner_ids).view(3, -1)
    corner_v = pixels[..., 1].reshape(-1).index_select(0, corner_ids).view(3, -1)
    corner_z = depth.reshape(-1).index_select(0, corner_ids).view(3, -1)
    u0, u1, u2 = corner_u
    v0, v1, v2 = corner_v

    # Candidate pixel range: centres c + 0.5 within the corners' bounding box, in the image.
    col0 = (corner_u.amin(0) - 0.5).ceil_().clamp_(0, width)
    cols = (corner_u.amax(0) - 0.5).floor_().clamp_(-1, width - 1) - col0 + 1  # NaN if not finite
    row0 = (corner_v.amin(0) - 0.5).ceil_().clamp_(0, height)
    rows = (corner_v.amax(0) - 0.5).floor_().clamp_(-1, height - 1) - row0 + 1
    # Doubled signed area in pixel space; negative = counter-clockwise in world = front face.
    area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
    keep = (cols > 0) & (rows > 0) & (corner_z.amin(0) > znear) & (area != 0) & area.isfinite()
    if cull_backfaces:
        keep &= area < 0

    base = (row0.clamp(max=height - 1) * width + col0.clamp(max=width - 1)).long()  # [B*F]
    low_word = (_LOW_BITS - torch.arange(n_triangles, device=device, dtype=torch.int32)).repeat(batch)
    if batch > 1:
        base = (base.view(batch, -1) + (torch.arange(batch, device=device) * (height * width))[:, None]).view(-1)
    tris = _setup(corner_u, corner_v, corner_z, area, col0, row0, cols, rows, base, low_word)

    # Pass A: the first candidate centre of every kept triangle.
    centre_u = torch.where(keep, col0 + 0.5, torch.nan)  # NaN fails every inside test
    edges = tris.edges_at(centre_u, row0 + 0.5)  # [3, B*F]
    inside = (edges + tris.tie_bias).amin(0) > 0
    inv_depth = (tris.inv_depth_weight * edges).sum(0)
    keys = _pack_keys(torch.where(inside, inv_depth, 0.0), low_word)
    key_buffer.scatter_reduce_(0, base, keys, "amax")

    # Pass B: the triangles whose range is more than one pixel, by bucket.
    size = torch.maximum(cols, rows)
    larger = (keep & (size > 1)).nonzero().squeeze(1)
    if larger.numel() == 0:
        return
    bounds = torch.tensor(bucket_sizes, dtype=size.dtype, device=device)
    bucket, order = torch.sort(torch.bucketize(size.index_select(0, larger), bounds))
    counts = torch.bincount(bucket, minlength=len(bucket_sizes) + 1).tolist()
    tris = tris.take(larger.index_select(0, order))
    start = 0
    for window, count in zip(bucket_sizes, counts):
        if count:
            _splat_windows(key_buffer, tris.slice(start, start + count), window, width, max_candidates)
        start += count
    if counts[-1]:
        _splat_ranges(key_buffer, tris.slice(start, start + counts[-1]), width, max_candidates)


def _splat_windows(key_buffer: torch.Tensor, tris: _Setup, window: int, width: int, max_candidates: int) -> None:
    """Pass B, bucketed: test a ``window x window`` block of centres per triangle."""
    steps = torch.arange(window, device=key_buffer.device)
    offsets = steps.float()  # [K]
    chunk = max(1, max_candidates // (3 * window * window))
    for start in range(0, tris.col0.shape[0], chunk):
        t = tris.slice(start, start + chunk)
        # Candidate centres [M, K]; beyond the triangle's range they are NaN so tests fail.
        centre_u = torch.where(offsets < t.cols[:, None], t.col0[:, None] + offsets + 0.5, torch.nan)
        centre_v = torch.where(offsets < t.rows[:, None], t.row0[:, None] + offsets + 0.5, torch.nan)
        # Edge functions are separable: dir_u * (v - mid_v) per row minus dir_v * (u - mid_u) per column.
        row_term = t.dir_u[:, :, None] * (centre_v - t.mid_v[:, :, None])  # [3, M, K]
        col_term = t.dir_v[:, :, None] * (centre_u - t.mid_u[:, :, None])  # [3, M, K]
        edges = row_term[:, :, :, None] - col_term[:, :, None, :]  # [3, M, K rows, K cols]
        inside = (edges + t.tie_bias[:, :, None, None]).amin(0) > 0  # [M, K, K]
        inv_depth = (t.inv_depth_weight[:, :, None, None] * edges).sum(0)  # [M, K, K]
        keys = _pack_keys(torch.where(inside, inv_depth, 0.0), t.low_word[:, None, None])
        # Pixel of each candidate, clamped into the triangle's range (masked ones are no-ops).
        row_step = torch.minimum(steps, t.rows.long()[:, None] - 1)  # [M, K]
        col_step = torch.minimum(steps, t.cols.long()[:, None] - 1)
        pixel_index = (t.base[:, None] + row_step * width)[:, :, None] + col_step[:, None, :]  # [M, K, K]
        key_buffer.scatter_reduce_(0, pixel_index.reshape(-1), keys.reshape(-1), "amax")


def _splat_ranges(key_buffer: torch.Tensor, tris: _Setup, width: int, max_candidates: int) -> None:
    """Pass B for big triangles: enumerate exactly each ``rows x cols`` range (ragged), in
    chunks of at most ``max_candidates`` tests (one triangle is at most one image)."""
    sizes = (tris.rows * tris.cols).long()
    sizes_list = sizes.tolist()
    start = 0
    while start < len(sizes_list):
        stop, total = start + 1, sizes_list[start]
        while stop < len(sizes_list) and total + sizes_list[stop] <= max_candidates:
            total += sizes_list[stop]
            stop += 1
        counts = sizes[start:stop]
        owner = torch.repeat_interleave(torch.arange(stop - start, device=key_buffer.device), counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(total, device=key_buffer.device) - first.index_select(0, owner)
        t = tris.slice(start, stop).take(owner)  # per-candidate copies of the triangle, [T] / [3, T]
        cols = t.cols.long()
        row = local // cols
        col = local - row * cols
        edges = t.edges_at(t.col0 + col + 0.5, t.row0 + row + 0.5)  # [3, T]
        inside = (edges + t.tie_bias).amin(0) > 0
        inv_depth = (t.inv_depth_weight * edges).sum(0)
        keys = _pack_keys(torch.where(inside, inv_depth, 0.0), t.low_word)
        key_buffer.scatter_reduce_(0, t.base + row * width + col, keys, "amax")
        start = stop


# --------------------------------------------------------------------------------------
# Differentiable part: barycentrics and interpolation at the covered pixels
# --------------------------------------------------------------------------------------


def perspective_barycentrics(
    pixels: torch.Tensor,
    depth: torch.Tensor,
    corner_ids: torch.Tensor,
    centre_u: torch.Tensor,
    centre_v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics and depth of ``P`` pixel centres.

    ``pixels [B, N, 2]`` and ``depth [B, N]`` are the projected vertices (differentiable);
    ``corner_ids [3, P]`` index the flattened ``[B*N]`` vertices of each pixel's triangle
    (:func:`corner_vertex_ids`); ``centre_u``, ``centre_v`` are ``[P]``.

    Returns ``(bary [3, P], depth [P])``: screen-space barycentrics ``l_i`` reweighted by
    ``1 / z_i`` (``b_i = (l_i / z_i) / sum_j l_j / z_j``) and depth ``1 / sum_j l_j / z_j``.
    """
    flat = corner_ids.reshape(-1)
    corner_u = pixels[..., 0].reshape(-1).index_select(0, flat).view(3, -1)  # [3, P]
    corner_v = pixels[..., 1].reshape(-1).index_select(0, flat).view(3, -1)
    corner_z = depth.reshape(-1).index_select(0, flat).view(3, -1)
    start_u, end_u = corner_u.roll(-1, 0), corner_u.roll(1, 0)  # edge opposite each corner
    start_v, end_v = corner_v.roll(-1, 0), corner_v.roll(1, 0)
    weight = (end_u - start_u) * (centre_v - start_v) - (end_v - start_v) * (centre_u - start_u)  # = 2 area * l_i
    perspective = weight / (weight.sum(0) * corner_z)  # l_i / z_i
    inv_depth = perspective.sum(0)  # [P]
    return perspective / inv_depth, inv_depth.reciprocal()


class TorchRenderer:
    """The pure-torch reference renderer (CPU and CUDA); see the module doc for the method.

    Args:
        cull_backfaces: skip triangles facing away from the camera (front faces are
            counter-clockwise seen from the camera); by default both sides are rendered.
        bucket_sizes, max_candidates: performance knobs of :func:`rasterize`.
    """

    name = "torch"

    def __init__(
        self,
        cull_backfaces: bool = False,
        bucket_sizes: tuple[int, ...] = DEFAULT_BUCKETS,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ):
        self.cull_backfaces = bool(cull_backfaces)
        self.bucket_sizes = tuple(int(s) for s in bucket_sizes)
        self.max_candidates = int(max_candidates)

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
        triangles = check_render_inputs(vertices, triangles, colours)
        camera = resolve_camera(camera, image_size)
        size = camera.image_size
        batch, n_vertices = vertices.shape[:2]
        pixels, depth = camera.project(vertices)  # [B, N, 2], [B, N]
        pixel_index, triangle_index = rasterize(
            pixels,
            depth,
            triangles,
            size,
            size,
            znear=camera.znear,
            cull_backfaces=self.cull_backfaces,
            bucket_sizes=self.bucket_sizes,
            max_candidates=self.max_candidates,
        )
        batch_index = pixel_index // (size * size)
        in_image = pixel_index - batch_index * (size * size)
        row = in_image // size
        col = in_image - row * size
        corner_ids = corner_vertex_ids(triangles, n_vertices, batch_index, triangle_index)
        bary, pixel_depth = perspective_barycentrics(pixels, depth, corner_ids, col + 0.5, row + 0.5)
        colour = interpolate_corners(colours, corner_ids, bary)  # [C, P]
        return assemble_output(batch, size, size, pixel_index, triangle_index, bary, pixel_depth, colour, background)
