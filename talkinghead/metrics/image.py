"""Image quality: PSNR and SSIM, batched torch on ``[B, C, H, W]``.

SSIM is the standard definition of Wang et al. (2004): Gaussian window of 11 x 11 taps,
sigma 1.5, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``, population
(co)variances, computed per channel over the VALID region (window fully inside the image,
i.e. ``(H - 10) x (W - 10)`` positions) and averaged over positions and channels. This equals
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=L, channel_axis=...)``, which filters the whole image
and crops a 5-pixel border before averaging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from talkinghead.errors import InputError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor, min_size: int = 1) -> None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise InputError("psnr/ssim expect torch tensors [B, C, H, W]")
    if a.shape != b.shape or a.ndim != 4:
        raise InputError(f"psnr/ssim expect two images [B, C, H, W] of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < min_size:
        raise InputError(f"images must be at least {min_size} x {min_size} pixels for this metric, got {tuple(a.shape[-2:])}")


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``[B]`` in dB: ``10 log10(L^2 / MSE)`` with the MSE
    over channels and pixels; ``inf`` for identical images."""
    _check_pair(a, b)
    mse = (_float(a) - _float(b)).square().flatten(1).mean(dim=1)  # [B]
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``[size]`` centred on the middle tap."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, ``[B]`` (see the module docstring for the definition)."""
    _check_pair(a, b, SSIM_WINDOW)
    a, b = _float(a), _float(b)
    channels = a.shape[1]
    taps = gaussian_window(dtype=a.dtype, device=a.device)
    # Five maps filtered at once with a separable depthwise Gaussian (valid region only).
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)  # [B, 5C, H, W]
    groups = stack.shape[1]
    stack = F.conv2d(stack, taps.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    stack = F.conv2d(stack, taps.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    mu_a, mu_b, e_aa, e_bb, e_ab = stack.split(channels, dim=1)  # each [B, C, H-10, W-10]
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1)


def sharpness(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Detail of images ``[B, 3, H, W]`` in [0, 1]: the variance of the Laplacian of the grey
    image (ITU-R 601 luma, 0-255 scale) in the central half (``size/2`` square) after a resize
    to ``size`` x ``size`` px (area when the width is above ``size``, else bilinear: the crops
    compared are square, so both sides shrink or both grow), per image ``[B]``. Compare generated and real frames by the ratio
    of their sharpness: a blur lowers it, a resize to fewer pixels and back lowers it too."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"sharpness expects RGB images [B, 3, H, W], got {getattr(images, 'shape', type(images))}")
    x = _float(images)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear",
                          align_corners=None if x.shape[-1] > size else False)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1) * 255.0  # [B, 1, S, S]
    quarter = size // 4
    grey = grey[..., quarter - 1 : size - quarter + 1, quarter - 1 : size - quarter + 1]  # centre + a 1-px ring
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=grey.dtype, device=grey.device)
    laplacian = F.conv2d(grey, kernel.view(1, 1, 3, 3))  # valid: exactly the central size/2 square
    return laplacian.flatten(1).var(dim=1, unbiased=False)


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per image ``[B]`` over the pixels where ``mask [B, 1, H, W]`` (weights in [0, 1])
    is positive, weighted by it (e.g. the face region)."""
    _check_pair(a, b)
    weight = mask.to(_float(a).dtype).expand_as(a)
    mse = ((_float(a) - _float(b)).square() * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-12)
    return 10.0 * torch.log10(data_range**2 / mse)
