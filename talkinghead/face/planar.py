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


def widened(plane: torch.Tensor) -> tuple[torch.Tensor, int]:
    """An ``[N, B]`` plane viewed as ``[N / r, r * B]`` rows (a view, contiguous planes only),
    and ``r``: the smallest power of two that makes a row at least 16 values long and divides
    ``N`` (1 if none does). Ops that broadcast per-batch values ``[B]`` along the vertices
    (pose, lighting) then run over rows of ``r * B`` with the values tiled ``r`` times
    (``values.repeat(r)``): on CPU an 8-value inner loop is about 3x slower than a 16-value one."""
    n, batch = plane.shape
    r = 1
    while r * batch < 16 and n % (2 * r) == 0:
        r *= 2
    return plane.view(n // r, r * batch), r
