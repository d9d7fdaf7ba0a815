"""Spherical-harmonics shading, as in the 3DMM fitting code the paper used (Deng et al. 2019).

A vertex colour is its albedo times the irradiance of 9 second-order SH bands evaluated on
its (world-space, i.e. already rotated) unit normal::

    colour_c = albedo_c * (Y(n) @ gamma_c),   c in (r, g, b)

``gamma`` is the 27-value lighting slice of the coefficient vector viewed as
``[3 channels, 9 bands]`` (channel-major), with :data:`~talkinghead.face.coeffs.SH_DC_INIT`
(0.8) added to band 0 of every channel, so all-zero lighting coefficients mean a uniform
ambient light. The band constants fold the Lambertian kernel (``a``) into the SH
normalisation (``c``), exactly like Deng et al.'s ``compute_color``.
"""

from __future__ import annotations

import math

import torch

from talkinghead.face.coeffs import SH_DC_INIT, SH_DIM
from talkinghead.face.planar import widened

#: Lambertian kernel factors for SH bands 0, 1, 2.
SH_A = (math.pi, 2.0 * math.pi / math.sqrt(3.0), 2.0 * math.pi / math.sqrt(8.0))
#: SH normalisation constants for bands 0, 1, 2.
SH_C = (
    1.0 / math.sqrt(4.0 * math.pi),
    math.sqrt(3.0) / math.sqrt(4.0 * math.pi),
    3.0 * math.sqrt(5.0) / math.sqrt(12.0 * math.pi),
)
NUM_SH_BANDS = 9


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """SH irradiance basis on unit normals: ``[..., 3]`` -> ``[..., 9]``."""
    nx, ny, nz = normals.unbind(-1)
    a0c0 = SH_A[0] * SH_C[0]
    a1c1 = SH_A[1] * SH_C[1]
    a2c2 = SH_A[2] * SH_C[2]
    return torch.stack(
        [
            torch.full_like(nx, a0c0),
            -a1c1 * ny,
            a1c1 * nz,
            -a1c1 * nx,
            a2c2 * nx * ny,
            -a2c2 * ny * nz,
            a2c2 * 0.5 / math.sqrt(3.0) * (3.0 * nz * nz - 1.0),
            -a2c2 * nx * nz,
            a2c2 * 0.5 * (nx * nx - ny * ny),
        ],
        dim=-1,
    )


def lighting_matrix(lighting: torch.Tensor) -> torch.Tensor:
    """Lighting coefficients ``[B, 27]`` -> per-band, per-channel gains ``[B, 9, 3]`` with the
    ambient start value :data:`SH_DC_INIT` added to band 0."""
    if lighting.shape[-1] != SH_DIM:
        raise ValueError(f"expected {SH_DIM} lighting coefficients, got shape {tuple(lighting.shape)}")
    gamma = lighting.unflatten(-1, (3, NUM_SH_BANDS))  # [B, 3, 9]
    dc = torch.zeros(NUM_SH_BANDS, dtype=gamma.dtype, device=gamma.device)
    dc[0] = SH_DC_INIT
    return (gamma + dc).transpose(-1, -2)  # [B, 9, 3]


def _polynomial_weights(lighting: torch.Tensor) -> torch.Tensor:
    """``[B, 27]`` lighting -> ``[B, 9, 3]`` weights of the irradiance polynomial's terms
    ``(1, nx, ny, nz, nx ny, ny nz, nz^2, nx nz, nx^2 - ny^2)`` per colour channel: the 9 SH
    bands are a constant, the 3 coordinates and 5 quadratic monomials (bands 0 and 6 share the
    constant, as band 6 = k6 (3 nz^2 - 1))."""
    gains = lighting_matrix(lighting).unbind(-2)  # 9 x [B, 3]
    k0, k1, k2 = SH_A[0] * SH_C[0], SH_A[1] * SH_C[1], SH_A[2] * SH_C[2]
    k6 = k2 * 0.5 / math.sqrt(3.0)
    return torch.stack(
        [k0 * gains[0] - k6 * gains[6], -k1 * gains[3], -k1 * gains[1], k1 * gains[2],
         k2 * gains[4], -k2 * gains[5], 3.0 * k6 * gains[6], -k2 * gains[7], 0.5 * k2 * gains[8]], -2
    )


def irradiance_planes(normals: torch.Tensor, lighting: torch.Tensor) -> torch.Tensor:
    """Per-vertex RGB irradiance in the face model's planar layout: unit normals
    ``[3, N, B]`` (coordinate, vertex, batch), lighting ``[B, 27]`` -> ``[3, N, B]``.

    Equal to ``sh_basis(n) @ lighting_matrix(lighting)`` per vertex, evaluated as the
    polynomial it is (:func:`_polynomial_weights`): 8 monomial planes, then per channel a chain
    of multiply-adds by per-batch weights (faster on CPU than a batched ``[N, 9] @ [9, 3]``
    product, whose inner dimensions are tiny)."""
    rows, r = widened(normals.contiguous())
    nx, ny, nz = rows  # [N / r, r * B] each
    weights = _polynomial_weights(lighting).to(normals.dtype).permute(2, 1, 0).repeat(1, 1, r)  # [3, 9, r * B]
    terms = (nx, ny, nz, nx * ny, ny * nz, nz * nz, nx * nz, nx * nx - ny * ny)
    channels = []
    for w in weights:  # [9, r * B] per colour channel
        acc = torch.addcmul(w[0], terms[0], w[1])
        for k, term in enumerate(terms[1:], start=2):
            acc.addcmul_(term, w[k])  # in place on a fresh tensor: autograd-safe
        channels.append(acc)
    return torch.stack(channels).view(normals.shape)


def irradiance(normals: torch.Tensor, lighting: torch.Tensor) -> torch.Tensor:
    """Per-vertex RGB irradiance: normals ``[B, N, 3]``, lighting ``[B, 27]`` -> ``[B, N, 3]``
    (also unbatched: ``[N, 3]`` and ``[27]``). See :func:`irradiance_planes`; the result is
    a view of its planes."""
    if normals.dim() == 2:
        return irradiance(normals[None], lighting.reshape(1, -1))[0]
    return irradiance_planes(normals.permute(2, 1, 0), lighting).permute(2, 1, 0)


def shade(albedo: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor) -> torch.Tensor:
    """Shaded vertex colours ``[B, N, 3]`` = albedo ``[B, N, 3]`` x SH irradiance of the unit
    world-space normals ``[B, N, 3]`` under lighting ``[B, 27]``."""
    return albedo * irradiance(normals, lighting)
