"""The planar layout of per-vertex tensors shared by the face model and the renderer.

A batch of meshes is held as ``[C, N, B]`` planes (channel, vertex, batch: the batch innermost),
so that gathering the vertices of triangle corners copies ``B`` contiguous values per corner
(one row of an ``[N, B]`` plane), and ``[B, N, C]`` tensors are the views ``permute(2, 1, 0)``.
"""

from __future__ import annotations

import torch


def gather_rows(plane: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index [K]`` of one ``[N, B]`` plane -> ``[K, B]``. For ``B == 1`` the plane is
    gathered as a flat vector (about 4x faster on CPU than gathering 1-value rows)."""
    if plane.shape[1] == 1:
        return plane.reshape(-1).index_select(0, index).unsqueeze(1)
    return plane.index_select(0, index)


def widened(planes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Contiguous ``[C, N, B]`` planes viewed as ``[C, N / r, r * B]`` rows, and ``r``: the
    smallest power of two that makes a row at least 16 values long and divides ``N`` (1 if none
    does). Ops that broadcast per-batch values ``[B]`` along the vertices (pose, lighting) then
    run over rows of ``r * B`` with the values tiled ``r`` times (``values.repeat(r)``): on CPU
    an 8-value inner loop is about 3x slower than a 16-value one."""
    channels, n, batch = planes.shape
    r = 1
    while r * batch < 16 and n % (2 * r) == 0:
        r *= 2
    return planes.view(channels, n // r, r * batch), r


def vertex_planes(attrs: torch.Tensor) -> torch.Tensor:
    """Per-vertex values ``attrs [B, N, C]`` as ``[C, N*B]`` planes, vertex-major with the batch
    innermost (vertex n of batch element b at flat index ``n * B + b``): the face model's own
    layout, so its outputs come through without a copy (other layouts are copied once)."""
    return attrs.permute(2, 1, 0).reshape(attrs.shape[-1], -1)
