"""Pure-torch z-buffer rasterizer (CPU and CUDA, no compiled code) and the ``"torch"`` renderer.

How it works, for a batch of ``B`` meshes sharing ``F`` triangles (all steps are batched
tensor code over triangles, candidate pixels and the batch):

1. Project the vertices once (:meth:`Camera.project`) and compute, per triangle, the integer
   range of pixel columns/rows whose *centres* ``(j + 0.5, i + 0.5)`` can lie inside it,
   clipped to the image. Triangles that cover no pixel centre, lie off-screen, have a vertex
   at depth <= ``znear`` or are degenerate (or, optionally, face away from the camera) are
   dropped.
2. Candidate pixel tests, as edge functions (top-left fill rule, below) plus ``1 / depth``,
   which is affine in screen space and thus exact under perspective:

   * pass A handles every triangle whose range is a single pixel centre, all at once as
     ``[B*F]`` tensors; in a dense face mesh that is nearly every triangle that covers
     anything, so this is most of the work;
   * pass B takes the triangles with a larger range, buckets them by range size ``K``
     (``bucket_sizes``) and tests a ``K x K`` window per triangle as one tensor, in chunks of
     at most ``max_candidates`` tests; triangles larger than the largest bucket enumerate
     exactly their range (ragged, chunked), so a 200 x 200 px triangle is fine.

   Per-triangle tensors are laid out triangle-major with the batch innermost (``[F*B]``,
   flat index ``f * B + b``): the projected vertices are stored as ``[N, B]`` planes, so
   gathering a corner copies ``B`` contiguous values (one row) instead of making ``B``
   separate gathers (about 3x faster on CPU). On CPU very large batches are processed in
   groups of about a million triangles to bound the temporaries.
3. Visibility: ``scatter_reduce(amax)`` of packed int64 keys into one ``[B*H*W]`` buffer.
   High 32 bits: the float32 bit pattern of ``1 / depth`` (for positive floats the bit
   pattern orders like the value, so the max is the nearest surface); low 32 bits:
   ``2^31 - 1 - triangle`` (equal depth goes to the lower triangle index; F < 2^31).
4. For covered pixels only, the winning triangle's perspective-correct barycentrics are
   recomputed from the differentiable projected vertices and the vertex colours are
   interpolated. Which triangle covers a pixel is not differentiable; the colour is, w.r.t.
   the vertex colours and, through the barycentrics, the vertex positions (as in
   pytorch3d's hard rasterizer).

Fill rule: the edge function of the edge from corner ``p`` to corner ``q`` at a centre ``c``
is the cross product ``(p - c) x (q - c)``; the triangle sharing that edge computes
``(q - c) x (p - c)``, which is bit for bit its negation. A centre exactly on an edge
(``E == 0``) belongs to the triangle for which the edge is a *left* edge (inward normal
pointing to +u) or a *top* edge (horizontal, inward normal pointing down, +v). So triangles
sharing an edge leave no gaps and never both claim a pixel centre.

Back faces: both sides are rendered (the z-test decides) unless ``cull_backfaces=True``. A
front face is counter-clockwise as seen from the camera in world space (x right, y up), as in
OpenGL and pytorch3d: its normal ``(v1 - v0) x (v2 - v0)`` points towards the camera.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, fields

import torch

from talkinghead.face.camera import Camera
from talkinghead.face.planar import gather_rows
from talkinghead.render.base import (
    Background,
    RenderOutput,
    assemble_output,
    check_render_inputs,
    corner_vertex_ids,
    interpolate_corners,
    resolve_camera,
    triangle_columns,
)

#: Window sizes (pixels per side) of the pass-B buckets, increasing. Triangles whose pixel
#: range is larger than the last one enumerate their exact range instead.
DEFAULT_BUCKETS: tuple[int, ...] = (2, 4, 8, 16, 32)
#: Candidate pixel tests per chunk in pass B (peak memory is about 40 bytes per test).
DEFAULT_MAX_CANDIDATES = 1 << 20

#: On CPU, batch elements are rasterized in groups of about this many triangles (bounds the
#: temporaries; on the 2-core AMD VM one group of 8 x 70k triangles beat groups of 1-4 elements).
_CPU_TRIANGLES_PER_GROUP = 1 << 20

_LOW_BITS = 0x7FFFFFFF  # the low word of a key holds _LOW_BITS - triangle index
_COVERED = 1 << 32  # a key >= this has a positive 1/depth in its high word
# Added to an edge function that owns the centres on it: turns E == 0 into E > 0 and leaves
# every other value unchanged (our edge values are never subnormal).
_TIE_BIAS = torch.finfo(torch.float32).tiny
_LITTLE_ENDIAN = sys.byteorder == "little"


# --------------------------------------------------------------------------------------
# Edge functions
# --------------------------------------------------------------------------------------
#
# For corners p_k and a point c, with a_k = p_k - c, the edge function of the edge opposite
# corner k is  E_k(c) = a_{k+1} x a_{k+2} = cross(p_{k+2} - p_{k+1}, c - p_{k+1}).
# Its sign is the sign s of the doubled signed area (E_0 + E_1 + E_2) inside the triangle,
# and the triangle sharing the edge (traversed the other way) computes exactly -E_k, bit for
# bit (products commute, and fl(x - y) = -fl(y - x)). Inside means s * E_k > 0 for all k; a
# centre exactly on an edge (E_k == 0) is inside when the edge owns it (top-left rule).


def _cross_rows(au: torch.Tensor, av: torch.Tensor, k: int) -> torch.Tensor:
    """``E_k = a_{k+1} x a_{k+2}`` from corner offsets ``au``, ``av`` (first dim = corner)."""
    i, j = (k + 1) % 3, (k + 2) % 3
    return au[i] * av[j] - av[i] * au[j]


def _tie_bias(corner_u: torch.Tensor, corner_v: torch.Tensor, orientation: torch.Tensor) -> torch.Tensor:
    """``[3, M]``: ``_TIE_BIAS`` for edges that own the centres lying on them, else 0.

    The oriented edge ``d = s (p_{k+2} - p_{k+1})`` has the interior on the side of its
    inward normal ``(-d_v, d_u)``; the edge owns its centres when that normal points to +u
    (a left edge) or, for a horizontal edge, to +v (a top edge; v points down)."""
    dir_u = (corner_u.roll(1, 0) - corner_u.roll(-1, 0)) * orientation
    dir_v = (corner_v.roll(1, 0) - corner_v.roll(-1, 0)) * orientation
    owns = (dir_v < 0) | ((dir_v == 0) & (dir_u > 0))
    return torch.where(owns, _TIE_BIAS, 0.0)


@dataclass
class _Triangles:
    """Pass-B triangles with their setup: ``[M]`` or ``[3, M]`` (row = corner / opposite
    edge); float32 unless noted."""

    corner_u: torch.Tensor  # [3, M] pixel coordinates of the corners
    corner_v: torch.Tensor  # [3, M]
    orientation: torch.Tensor  # sign of the doubled signed area
    tie_bias: torch.Tensor  # [3, M] see _tie_bias
    col0: torch.Tensor  # first candidate pixel column (integral)
    row0: torch.Tensor  # first candidate pixel row
    cols: torch.Tensor  # candidate columns (>= 1)
    rows: torch.Tensor  # candidate rows (>= 1)
    inv_depth0: torch.Tensor  # 1/depth at the first candidate centre (affine in screen space)
    inv_depth_du: torch.Tensor  # d(1/depth)/du
    inv_depth_dv: torch.Tensor  # d(1/depth)/dv
    base: torch.Tensor  # long: flat index of pixel (row0, col0) in the [B*H*W] buffer
    low_word: torch.Tensor  # int32: _LOW_BITS - triangle index

    @classmethod
    def build(cls, corner_u, corner_v, corner_q, area, first_edges, col0, row0, cols, rows, base, low_word) -> "_Triangles":
        """Setup from the corners ``[3, M]`` (pixels, 1/depth), ``area [M]`` and the edge
        functions at the first candidate centre ``first_edges [3, M]``.

        ``1/depth(c) = sum_k q_k E_k(c) / area``, with ``dE_k/du = v_{k+1} - v_{k+2}`` and
        ``dE_k/dv = u_{k+2} - u_{k+1}``."""
        orientation = area.sign()
        weight = corner_q / area  # [3, M]
        return cls(
            corner_u=corner_u,
            corner_v=corner_v,
            orientation=orientation,
            tie_bias=_tie_bias(corner_u, corner_v, orientation),
            col0=col0,
            row0=row0,
            cols=cols,
            rows=rows,
            inv_depth0=(weight * first_edges).sum(0),
            inv_depth_du=(weight * (corner_v.roll(-1, 0) - corner_v.roll(1, 0))).sum(0),
            inv_depth_dv=(weight * (corner_u.roll(1, 0) - corner_u.roll(-1, 0))).sum(0),
            base=base,
            low_word=low_word,
        )

    def take(self, index: torch.Tensor) -> "_Triangles":
        return _Triangles(**{f.name: getattr(self, f.name).index_select(-1, index) for f in fields(self)})

    def slice(self, start: int, stop: int) -> "_Triangles":
        return _Triangles(**{f.name: getattr(self, f.name)[..., start:stop] for f in fields(self)})


@functools.lru_cache(maxsize=8)
def _low_words(n_triangles: int, batch: int, device: torch.device) -> torch.Tensor:
    """int32 ``[n_triangles * batch]`` (batch innermost): ``_LOW_BITS - triangle index``
    (cached: the same mesh and group size come back call after call; read only)."""
    return (_LOW_BITS - torch.arange(n_triangles, device=device, dtype=torch.int32)).repeat_interleave(batch)


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
    u, v = pixels.unbind(-1)
    return _rasterize_planes(u.T, v.T, depth.T, triangles, height, width, znear, cull_backfaces, bucket_sizes, max_candidates)


def _rasterize_planes(
    u: torch.Tensor,
    v: torch.Tensor,
    depth: torch.Tensor,
    triangles: torch.Tensor,
    height: int,
    width: int,
    znear: float,
    cull_backfaces: bool,
    bucket_sizes: tuple[int, ...],
    max_candidates: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rasterize` of vertices given as ``[N, B]`` planes ``u``, ``v``, ``depth``."""
    with torch.no_grad():
        batch = depth.shape[1]
        device = depth.device
        key_buffer = torch.zeros(batch * height * width, dtype=torch.long, device=device)
        n_triangles = triangles.shape[0]
        # On CPU, very large batches go in groups of about _CPU_TRIANGLES_PER_GROUP triangles
        # (bounds the temporaries); on GPUs one launch for the whole batch.
        group = batch if device.type != "cpu" else max(1, _CPU_TRIANGLES_PER_GROUP // max(n_triangles, 1))
        image = height * width
        # [3, N, B] planes of u, v and 1/depth (batch innermost), made once for all groups.
        planes = torch.stack([u.float(), v.float(), depth.float().reciprocal()])
        # A vertex not strictly in front of the near plane (0 < 1/depth < 1/znear fails, or NaN)
        # gets u = NaN: every triangle using it then has a NaN pixel range and is dropped. (A
        # per-vertex test, cheaper than testing the three corners of every triangle.)
        q = planes[2]
        planes[0].masked_fill_(~((q > 0) & (q < 1.0 / znear)), float("nan"))
        for start in range(0, batch if n_triangles else 0, group):
            stop = min(batch, start + group)
            _rasterize_into(
                key_buffer[start * image : stop * image],
                planes[..., start:stop].contiguous(),
                triangles,
                height,
                width,
                cull_backfaces,
                tuple(bucket_sizes),
                int(max_candidates),
            )
        pixel_index = (key_buffer >= _COVERED).nonzero().squeeze(1)  # ascending (~3x faster than masked_select)
        triangle_index = _LOW_BITS - (key_buffer.index_select(0, pixel_index) & 0xFFFFFFFF)
    return pixel_index, triangle_index


def _rasterize_into(
    key_buffer: torch.Tensor,
    planes: torch.Tensor,
    triangles: torch.Tensor,
    height: int,
    width: int,
    cull_backfaces: bool,
    bucket_sizes: tuple[int, ...],
    max_candidates: int,
) -> None:
    # planes: [3, N, B] pixel u, v (NaN for vertices behind the near plane) and 1/depth of the
    # vertices (batch innermost).
    batch = planes.shape[-1]
    n_triangles = triangles.shape[0]
    device = planes.device
    # Corners of every triangle of every batch element, [3, F*B] each (row k = corner k, batch
    # innermost): one row gather of B values per corner.
    # (index_select along dim 0 of each [N, B] plane: along dim 1 of [3, N, B] it is ~20x slower)
    corner_ids = triangle_columns(triangles).reshape(-1)
    corner_u, corner_v, corner_q = (gather_rows(plane, corner_ids).view(3, -1) for plane in planes.unbind(0))

    # Candidate pixel range: centres c + 0.5 within the corners' bounding box, in the image
    # (NaN for non-finite corners, which then compare false below).
    col0 = (corner_u.amin(0) - 0.5).ceil_().clamp_(0, width)
    cols = (corner_u.amax(0) - 0.5).floor_().clamp_(-1, width - 1).sub_(col0).add_(1)
    row0 = (corner_v.amin(0) - 0.5).ceil_().clamp_(0, height)
    rows = (corner_v.amax(0) - 0.5).floor_().clamp_(-1, height - 1).sub_(row0).add_(1)

    # Edge functions at the first candidate centre (col0 + 0.5, row0 + 0.5).
    au, av = corner_u - (col0 + 0.5), corner_v - (row0 + 0.5)  # [3, B*F]
    edges = [_cross_rows(au, av, k) for k in range(3)]  # 3 x [B*F]
    area = edges[0] + edges[1] + edges[2]  # doubled signed area; < 0: front face (v points down)

    # Kept: covers a candidate centre (False for NaN ranges: corners behind the near plane, see
    # rasterize), not degenerate.
    keep = (torch.minimum(cols, rows) > 0) & (area != 0)
    if cull_backfaces:
        keep &= area < 0
    size = torch.maximum(cols, rows)

    # Flat index of the first candidate (any valid index for dropped triangles: their keys are no-ops).
    if height * width <= 1 << 24:  # exact in float32
        base = torch.add(col0, row0, alpha=width).nan_to_num_(0.0).clamp_(max=height * width - 1).long()
    else:
        base = (col0.nan_to_num(0.0).long() + row0.nan_to_num(0.0).long() * width).clamp_(max=height * width - 1)
    if batch > 1:
        base = (base.view(-1, batch) + torch.arange(batch, device=device) * (height * width)).view(-1)
    low_word = _low_words(n_triangles, batch, device)

    # Pass A: triangles whose range is a single pixel centre.
    single = keep & (size == 1)
    orientation = area.sign()
    oriented = [e * orientation for e in edges]
    nearest_edge = torch.minimum(torch.minimum(oriented[0], oriented[1]), oriented[2])
    inside = single & (nearest_edge > 0)
    on_edge = (single & (nearest_edge == 0)).nonzero().squeeze(1)
    if on_edge.numel():  # centres exactly on an edge: apply the top-left rule
        bias = _tie_bias(corner_u[:, on_edge], corner_v[:, on_edge], orientation[on_edge])
        biased = torch.stack([e.index_select(0, on_edge) for e in oriented]) + bias
        inside.index_put_((on_edge,), biased.amin(0) > 0)
    first_inv_depth = (edges[0] * corner_q[0]).addcmul_(edges[1], corner_q[1]).addcmul_(edges[2], corner_q[2]).div_(area)
    # (Masking by multiplication: much faster than torch.where on CPU; NaN/inf of dropped
    # triangles are zeroed first.)
    keys = _pack_keys(first_inv_depth.nan_to_num_(0.0, 0.0, 0.0).mul_(inside), low_word)
    key_buffer.scatter_reduce_(0, base, keys, "amax")

    # Pass B: triangles whose range is larger, bucketed by range size.
    larger = (keep & (size > 1)).nonzero().squeeze(1)
    if larger.numel() == 0:
        return
    bounds = torch.tensor(bucket_sizes, dtype=size.dtype, device=device)
    bucket, order = torch.sort(torch.bucketize(size.index_select(0, larger), bounds))
    counts = torch.bincount(bucket, minlength=len(bucket_sizes) + 1).tolist()
    larger = larger.index_select(0, order)
    tris = _Triangles.build(
        *(x.index_select(1, larger) for x in (corner_u, corner_v, corner_q)),
        area.index_select(0, larger),
        torch.stack([e.index_select(0, larger) for e in edges]),
        *(x.index_select(0, larger) for x in (col0, row0, cols, rows, base, low_word)),
    )
    start = 0
    for window, count in zip(bucket_sizes, counts):
        if count:
            _splat_windows(key_buffer, tris.slice(start, start + count), window, width, max_candidates)
        start += count
    if counts[-1]:
        _splat_ranges(key_buffer, tris.slice(start, start + counts[-1]), width, max_candidates)


def _splat_windows(key_buffer: torch.Tensor, tris: _Triangles, window: int, width: int, max_candidates: int) -> None:
    """Pass B, bucketed: test a ``window x window`` block of centres per triangle.

    Tensors are laid out ``[K rows, K cols, M]`` so that every elementwise op runs along the
    long, contiguous triangle axis (short broadcast inner axes are slow on CPU)."""
    steps = torch.arange(window, device=key_buffer.device)[:, None]  # [K, 1]
    offsets = steps.float()
    chunk = max(1, max_candidates // (window * window))
    for start in range(0, tris.col0.shape[0], chunk):
        t = tris.slice(start, start + chunk)
        centre_u = t.col0 + offsets + 0.5  # [K, M] candidate centres
        centre_v = t.row0 + offsets + 0.5
        in_range = (offsets < t.rows)[:, None, :] & (offsets < t.cols)  # [K rows, K cols, M]
        au = t.corner_u[:, None, :] - centre_u  # [3, K cols, M]
        av = (t.corner_v[:, None, :] - centre_v).unsqueeze(2)  # [3, K rows, 1, M]
        au_s, av_s = au * t.orientation, av * t.orientation  # s folded in exactly
        nearest_edge = None
        for k in range(3):  # oriented E_k = s a_{k+1} x a_{k+2} (+ tie bias), [K rows, K cols, M]
            i, j = (k + 1) % 3, (k + 2) % 3
            edge = au_s[i] * av[j] - av_s[i] * au[j]
            edge += t.tie_bias[k]
            nearest_edge = edge if nearest_edge is None else torch.minimum(nearest_edge, edge, out=nearest_edge)
        row_inv_depth = t.inv_depth0 + t.inv_depth_dv * offsets  # [K rows, M]
        inv_depth = row_inv_depth[:, None, :] + t.inv_depth_du * offsets  # [K rows, K cols, M]
        keys = _pack_keys(inv_depth.mul_((nearest_edge > 0) & in_range), t.low_word)  # 1/depth, or 0 if outside
        # Pixel of each candidate, clamped into the triangle's range (masked ones are no-ops).
        row_step = torch.minimum(steps, t.rows.long() - 1)  # [K, M]
        col_step = torch.minimum(steps, t.cols.long() - 1)
        pixel_index = (t.base + row_step * width)[:, None, :] + col_step  # [K rows, K cols, M]
        key_buffer.scatter_reduce_(0, pixel_index.reshape(-1), keys.reshape(-1), "amax")


def _splat_ranges(key_buffer: torch.Tensor, tris: _Triangles, width: int, max_candidates: int) -> None:
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
        au = t.corner_u - (t.col0 + col + 0.5)  # [3, T]
        av = t.corner_v - (t.row0 + row + 0.5)
        oriented = torch.stack([_cross_rows(au * t.orientation, av, k) for k in range(3)]) + t.tie_bias
        inv_depth = t.inv_depth0 + t.inv_depth_du * col + t.inv_depth_dv * row
        keys = _pack_keys(inv_depth.mul_(oriented.amin(0) > 0), t.low_word)  # 1/depth, or 0 if outside
        key_buffer.scatter_reduce_(0, t.base + row * width + col, keys, "amax")
        start = stop


# --------------------------------------------------------------------------------------
# Differentiable part: barycentrics at the covered pixels
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
    ``corner_ids [3, P]`` index the vertex planes (``n * B + b``, :func:`vertex_planes`)
    of each pixel's triangle; ``centre_u``, ``centre_v`` are ``[P]``.

    Returns ``(bary [3, P], depth [P])``: screen-space barycentrics ``l_i`` reweighted by
    ``1 / z_i`` (``b_i = (l_i / z_i) / sum_j l_j / z_j``) and depth ``1 / sum_j l_j / z_j``.
    """
    planes = torch.stack([pixels[..., 0].T, pixels[..., 1].T, depth.T]).view(3, -1)  # [3, N*B]: u, v, depth
    return _perspective_barycentrics(planes, corner_ids, centre_u, centre_v)


def _perspective_barycentrics(
    planes: torch.Tensor, corner_ids: torch.Tensor, centre_u: torch.Tensor, centre_v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`perspective_barycentrics` of vertices given as ``[3, N*B]`` planes (u, v, depth)."""
    corners = planes.index_select(1, corner_ids.reshape(-1)).view(3, 3, -1)  # [u/v/z, corner, P]
    au, av = corners[0] - centre_u, corners[1] - centre_v  # [3, P] corner - centre
    weight = torch.stack([_cross_rows(au, av, k) for k in range(3)])  # = 2 area * l_k
    over_z = weight / corners[2]  # proportional to l_k / z_k
    total = over_z.sum(0)  # [P]
    return over_z / total, weight.sum(0) / total


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
        batch = vertices.shape[0]
        # Projected [N, B] planes (free views of the face model's planar outputs; see vertex_planes).
        u, v, depth = camera.project_coords(*vertices.permute(2, 1, 0))
        pixel_index, triangle_index = _rasterize_planes(
            u, v, depth, triangles, size, size, camera.znear, self.cull_backfaces, self.bucket_sizes, self.max_candidates
        )
        batch_index = pixel_index // (size * size)
        in_image = pixel_index - batch_index * (size * size)
        row = in_image // size
        col = in_image - row * size
        corner_ids = corner_vertex_ids(triangles, batch, batch_index, triangle_index)
        uvz = torch.stack([u, v, depth]).view(3, -1)  # [3, N*B], differentiable
        bary, pixel_depth = _perspective_barycentrics(uvz, corner_ids, col + 0.5, row + 0.5)
        colour = interpolate_corners(colours, corner_ids, bary)  # [C, P]
        return assemble_output(batch, size, size, pixel_index, triangle_index, bary, pixel_depth, colour, background)
