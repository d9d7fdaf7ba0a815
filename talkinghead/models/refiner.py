"""Stage 2: the memory-augmented refinement GAN (method.md section 7).

The generator turns three blended renders (frames t-2, t-1, t stacked on channels: 9 channels in
[-1, 1]) into a photo-real frame t. It is a pix2pix U-Net whose normalisation layers are AdaIN,
driven by a 512-d identity feature, with two full-resolution heads: a colour image and an
attention mask; the output keeps the render where the mask is 1::

    image = mask * frame_t + (1 - mask) * colour

The discriminator is pix2pix's conditional 70x70 PatchGAN on ``cat([inputs, image])``.
:class:`MemoryAugmentedGenerator` adds the identity memory: during training the generator gets
the true identity feature (teacher forcing) while the key network learns to find it in the
memory; at test time the feature is read from the memory by a key computed from frame t.

Layout follows the authors' ``unet_generator_ac_adain`` (checked against their public code):
no normalisation after the first down convolution nor the innermost one; AdaIN everywhere
else, including the outermost up convolution, which is followed by ReLU and the two 7x7 heads.
Skip connections carry the LeakyReLU-activated encoder features (the authors' in-place
activation has the same effect). Where this module differs: the AdaIN scale is ``1 + gamma``
(initialised near 1) instead of a raw MLP output, the style MLP is shared with one linear head
per AdaIN layer instead of one wide output layer, and the identity feature is rescaled to unit
RMS before the MLP (so unit-norm features drive it at a sensible scale).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from talkinghead.errors import ConfigError, InputError
from talkinghead.models.features import SmallImageEncoder, make_key_encoder
from talkinghead.models.memory import IdentityMemory

__all__ = [
    "AdaIN",
    "RefinerOutput",
    "UNetAdaINGenerator",
    "PatchDiscriminator",
    "MemoryAugmentedGenerator",
    "generator_loss",
    "discriminator_loss",
    "init_pix2pix_weights",
    "mask_total_variation",
]


def init_pix2pix_weights(module: nn.Module, gain: float = 0.02) -> None:
    """pix2pix initialisation: conv / transposed-conv weights N(0, gain), biases 0; batch-norm
    weights N(1, gain), biases 0. Linear layers keep their own initialisation."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------
class AdaIN(nn.Module):
    """Adaptive instance normalisation: ``instance_norm(x) * (1 + gamma(s)) + beta(s)``.

    ``gamma`` and ``beta`` (per channel) come from one linear map of the style vector ``s``;
    its weights start small (N(0, 0.02)) so the scale starts around 1 and the shift around 0.
    """

    def __init__(self, num_features: int, style_dim: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = nn.Linear(style_dim, 2 * num_features)
        nn.init.normal_(self.affine.weight, 0.0, 0.02)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``x``: [B, C, H, W]; ``style``: [B, style_dim] -> [B, C, H, W]."""
        gamma, beta = self.affine(style).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)  # [B, C, 1, 1] each
        return F.instance_norm(x, eps=self.eps) * (1 + gamma) + beta


class _DownBlock(nn.Module):
    """4x4 stride-2 convolution, optional AdaIN, optional LeakyReLU(0.2)."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, norm: bool, activate: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not norm)
        self.norm = AdaIN(out_ch, style_dim) if norm else None
        self.activate = activate

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x, style)
        return F.leaky_relu(x, 0.2) if self.activate else x


class _UpBlock(nn.Module):
    """ReLU, 4x4 stride-2 transposed convolution, AdaIN, optional dropout."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, dropout: float):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False)
        self.norm = AdaIN(out_ch, style_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.conv(F.relu(x)), style))


class RefinerOutput(NamedTuple):
    """What the generator returns (all ``[B, C, H, W]``)."""

    image: torch.Tensor  # [B, 3, H, W] in [-1, 1]: mask * frame_t + (1 - mask) * colour
    colour: torch.Tensor  # [B, 3, H, W] in [-1, 1]: the colour head
    mask: torch.Tensor  # [B, 1, H, W] in [0, 1]: the attention head (1 = keep the render)


class UNetAdaINGenerator(nn.Module):
    """pix2pix U-Net with AdaIN normalisation driven by an identity feature, plus colour and
    attention heads.

    ``log2(image_size)`` down convolutions (channels ``min(ngf * 2^i, ngf * max_mult)``: 64, 128,
    256, 512, 512, 512, 512, 512 for 256 / ngf 64) down to 1 x 1, as many transposed up
    convolutions with skip connections, dropout on the first three up layers (never on the
    outermost one). The identity feature passes a shared MLP (``identity_dim -> style_dim ->
    style_dim``, ReLU) whose output feeds one linear AdaIN head per normalised layer.
    The frame kept by the mask is the last 3 input channels (frame t).
    """

    def __init__(
        self,
        in_channels: int = 9,
        image_size: int = 256,
        ngf: int = 64,
        max_mult: int = 8,
        identity_dim: int = 512,
        style_dim: int = 256,
        dropout: float = 0.5,
    ):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ConfigError(f"refiner.image_size={image_size} must be a power of two >= 8 (e.g. 64, 128, 256)")
        if in_channels < 3:
            raise ConfigError(f"refiner in_channels={in_channels} must hold at least frame t (3 channels)")
        self.in_channels = in_channels
        self.image_size = image_size
        self.identity_dim = identity_dim
        num_downs = int(math.log2(image_size))
        widths = [ngf * min(2**i, max_mult) for i in range(num_downs)]  # [64, 128, ..., 512] for 256

        self.style_mlp = nn.Sequential(
            nn.Linear(identity_dim, style_dim), nn.ReLU(),
            nn.Linear(style_dim, style_dim), nn.ReLU(),
        )
        self.downs = nn.ModuleList()
        for i, width in enumerate(widths):
            outermost, innermost = i == 0, i == num_downs - 1
            self.downs.append(_DownBlock(in_channels if outermost else widths[i - 1], width, style_dim,
                                         norm=not (outermost or innermost), activate=not innermost))
        self.ups = nn.ModuleList()
        for j in range(num_downs):
            level = num_downs - 1 - j  # the down level this up layer mirrors
            in_ch = widths[level] * (1 if j == 0 else 2)  # innermost takes no skip
            out_ch = widths[level - 1] if level > 0 else ngf
            use_dropout = dropout if (j < 3 and level > 0) else 0.0
            self.ups.append(_UpBlock(in_ch, out_ch, style_dim, use_dropout))
        self.colour_conv = nn.Conv2d(ngf, 3, 7, 1, 3)
        self.attention_conv = nn.Conv2d(ngf, 1, 7, 1, 3)
        init_pix2pix_weights(self)

    def style(self, identity: torch.Tensor) -> torch.Tensor:
        """Identity feature ``[B, identity_dim]`` -> style vector ``[B, style_dim]``."""
        if identity.dim() != 2 or identity.shape[1] != self.identity_dim:
            raise InputError(f"identity feature must be [B, {self.identity_dim}], got {tuple(identity.shape)}; "
                             "check refiner.identity_dim against the identity feature provider")
        scaled = F.normalize(identity, dim=1) * math.sqrt(self.identity_dim)  # unit RMS entries
        return self.style_mlp(scaled)

    def forward(self, inputs: torch.Tensor, identity: torch.Tensor) -> RefinerOutput:
        """``inputs`` [B, in_channels, H, W] in [-1, 1], ``identity`` [B, identity_dim] -> RefinerOutput."""
        size = self.image_size
        if inputs.dim() != 4 or inputs.shape[1] != self.in_channels or inputs.shape[-2:] != (size, size):
            raise InputError(f"refiner inputs must be [B, {self.in_channels}, {size}, {size}], got {tuple(inputs.shape)}; "
                             "check refiner.image_size and the dataset's crop size")
        if identity.shape[0] != inputs.shape[0]:
            raise InputError(f"identity batch {identity.shape[0]} != inputs batch {inputs.shape[0]}")
        style = self.style(identity.to(inputs.dtype))
        skips = []
        x = inputs
        for down in self.downs:
            x = down(x, style)
            skips.append(x)
        x = self.ups[0](skips[-1], style)  # innermost: no skip
        for up, skip in zip(self.ups[1:], reversed(skips[:-1])):
            x = up(torch.cat([x, skip], dim=1), style)
        features = F.relu(x)  # [B, ngf, H, W]
        colour = torch.tanh(self.colour_conv(features))
        mask = torch.sigmoid(self.attention_conv(features))
        frame_t = inputs[:, -3:]
        image = mask * frame_t + (1 - mask) * colour
        return RefinerOutput(image=image, colour=colour, mask=mask)


# ---------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------
_NORMS = {"batch": nn.BatchNorm2d, "instance": lambda c: nn.InstanceNorm2d(c, affine=False), "none": None}


class PatchDiscriminator(nn.Module):
    """pix2pix's conditional PatchGAN (70 x 70 receptive field for ``n_layers=3``).

    ``[B, in_channels, H, W]`` (inputs 9 ch + image 3 ch) -> patch logits ``[B, 1, H', W']``
    (30 x 30 for 256). Convolutions 4x4: stride 2 for the first ``n_layers``, then two stride-1
    ones; channels ndf, 2ndf, 4ndf, 8ndf (capped at 8ndf), LeakyReLU 0.2; no norm on the first.
    """

    def __init__(self, in_channels: int = 12, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if norm not in _NORMS:
            raise ConfigError(f"refiner.discriminator.norm={norm!r} is unknown; use one of {sorted(_NORMS)}")
        make_norm = _NORMS[norm]
        use_bias = make_norm is not nn.BatchNorm2d  # batch norm's shift makes a bias redundant

        def block(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 4, stride, 1, bias=use_bias)]
            if make_norm is not None:
                layers.append(make_norm(out_ch))
            return layers + [nn.LeakyReLU(0.2, inplace=True)]

        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for n in range(1, n_layers):
            next_width = ndf * min(2**n, 8)
            layers += block(width, next_width, stride=2)
            width = next_width
        next_width = ndf * min(2**n_layers, 8)
        layers += block(width, next_width, stride=1)
        layers.append(nn.Conv2d(next_width, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        init_pix2pix_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---------------------------------------------------------------------------------------------
# Generator + identity memory
# ---------------------------------------------------------------------------------------------
class MemoryAugmentedGenerator(nn.Module):
    """The Stage-2 generator with its identity memory and key network.

    * ``forward(inputs, identity)``: teacher forcing with the true identity feature (training, or
      test with a known feature); ``forward(inputs)``: the identity is read from the memory with
      the key of frame t (test time).
    * ``query(inputs)``: the key, ``normalize(key_proj(key_encoder(frame_t)))`` [B, key_dim].
    * ``memory_loss(inputs, identity)``: the memory's margin loss on that key (trains the key
      network); ``update_memory(inputs, identity)``: the no-grad memory write after it.

    Args mirror :class:`UNetAdaINGenerator` and :class:`IdentityMemory`; ``key_encoder`` is any
    module mapping ``[B, 3, H, W]`` to ``[B, key_encoder.out_dim]`` (default: a fresh
    :class:`SmallImageEncoder`).
    """

    def __init__(
        self,
        in_channels: int = 9,
        image_size: int = 256,
        ngf: int = 64,
        identity_dim: int = 512,
        style_dim: int = 256,
        dropout: float = 0.5,
        key_encoder: nn.Module | None = None,
        key_dim: int = 512,
        memory_slots: int = 30000,
        top_k: int = 256,
        margin: float = 0.3,
        threshold: float = 0.98,
    ):
        super().__init__()
        self.key_encoder = key_encoder if key_encoder is not None else SmallImageEncoder()
        self.key_proj = nn.Linear(int(self.key_encoder.out_dim), key_dim)
        self.memory = IdentityMemory(slots=memory_slots, key_dim=key_dim, value_dim=identity_dim, top_k=top_k,
                                     margin=margin, threshold=threshold)
        self.generator = UNetAdaINGenerator(in_channels=in_channels, image_size=image_size, ngf=ngf,
                                            identity_dim=identity_dim, style_dim=style_dim, dropout=dropout)

    def key_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the key network (encoder + projection): the memory optimiser's."""
        return [p for p in (*self.key_encoder.parameters(), *self.key_proj.parameters()) if p.requires_grad]

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the U-Net (and its style MLP): the generator optimiser's."""
        return list(self.generator.parameters())

    def query(self, inputs: torch.Tensor) -> torch.Tensor:
        """Memory key of frame t (the last 3 channels): ``[B, C, H, W]`` -> unit-norm ``[B, key_dim]``."""
        return F.normalize(self.key_proj(self.key_encoder(inputs[:, -3:])), dim=1)

    def read_identity(self, inputs: torch.Tensor, top1: bool = True) -> torch.Tensor:
        """Identity feature recalled from the memory for each item: ``[B, identity_dim]``."""
        return self.memory.read(self.query(inputs), top1=top1)

    def memory_loss(self, inputs: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Margin loss of the memory for the key of frame t against the true identity (scalar)."""
        return self.memory.margin_loss(self.query(inputs), identity)

    @torch.no_grad()
    def update_memory(self, inputs: torch.Tensor, identity: torch.Tensor) -> dict[str, int]:
        """Write (key of frame t, true identity) into the memory; returns merge/write counts."""
        return self.memory.update(self.query(inputs), identity)

    def forward(self, inputs: torch.Tensor, identity: torch.Tensor | None = None) -> RefinerOutput:
        if identity is None:
            with torch.no_grad():
                identity = self.read_identity(inputs)
        return self.generator(inputs, identity)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def mask_total_variation(mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical neighbours plus that between horizontal ones."""
    dy = (mask[..., 1:, :] - mask[..., :-1, :]).abs().mean()
    dx = (mask[..., :, 1:] - mask[..., :, :-1]).abs().mean()
    return dx + dy


def generator_loss(
    d_fake_logits: torch.Tensor,
    output: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    lambda_l1: float = 100.0,
    lambda_mask: float = 0.1,
    lambda_tv: float = 1e-5,
) -> dict[str, torch.Tensor]:
    """Generator objective. ``output``: the generated image [B, 3, H, W]; ``target``: the real
    frame; ``mask``: the attention mask [B, 1, H, W].

    Returns the *weighted* terms and their sum: ``gan`` = BCE-with-logits of D's patches vs real,
    ``l1`` = lambda_l1 * mean |output - target|, ``mask`` = lambda_mask * mean(mask) (keeps the
    mask from saturating at 1), ``tv`` = lambda_tv * total variation of the mask (mean absolute
    neighbour differences; the authors' code summed them instead), ``total`` = their sum.
    """
    gan = F.binary_cross_entropy_with_logits(d_fake_logits, torch.ones_like(d_fake_logits))
    l1 = lambda_l1 * F.l1_loss(output, target)
    mask_term = lambda_mask * mask.mean()
    tv = lambda_tv * mask_total_variation(mask)
    return {"total": gan + l1 + mask_term + tv, "gan": gan, "l1": l1, "mask": mask_term, "tv": tv}


def discriminator_loss(d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Discriminator objective: ``total = 0.5 * (BCE(real, 1) + BCE(fake, 0))`` (pass fake logits
    computed on a detached generator output)."""
    real = F.binary_cross_entropy_with_logits(d_real_logits, torch.ones_like(d_real_logits))
    fake = F.binary_cross_entropy_with_logits(d_fake_logits, torch.zeros_like(d_fake_logits))
    return {"total": 0.5 * (real + fake), "real": real, "fake": fake}


def build_generator(spec: Mapping[str, Any]) -> MemoryAugmentedGenerator:
    """The generator (with key network and empty memory) described by a ``model.json`` dict:
    ``spec["generator"]`` holds :class:`MemoryAugmentedGenerator` keyword arguments and
    ``spec["key_encoder"]`` the key-encoder config (:func:`make_key_encoder`)."""
    try:
        return MemoryAugmentedGenerator(key_encoder=make_key_encoder(spec.get("key_encoder")), **spec["generator"])
    except TypeError as err:
        raise ConfigError(f"refiner model spec has a bad generator entry ({err}); re-create it by training again") from None
