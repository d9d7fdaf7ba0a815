"""Feature providers of the Stage-2 refiner (method.md section 7).

Two roles:

* **Identity features** -- the 512-d vector that conditions the generator's AdaIN layers and is
  the *value* stored in the identity memory. The paper used ArcFace on the real target frame.
  :class:`ArcFaceFeature` loads insightface's ``arcface_torch`` IResNet backbone from a local
  ``backbone.pth``; :class:`CoeffIdentityFeature` is the offline default: a fixed projection of
  the person's 3DMM identity and texture coefficients (no weights needed).
* **Key encoders** -- image networks whose features (projected and L2-normalised by the
  refiner) are the memory's *keys*. The paper used a frozen ImageNet ResNet-18
  (:class:`ResNet18Encoder`, needs torchvision and a local weights file); the offline default is
  :class:`SmallImageEncoder`, a small CNN trained with the memory's margin loss.

Every provider says what it consumes in ``input_kind`` (``"coeffs"`` or ``"image"``) and how big
its output is in ``out_dim``. :func:`make_identity_feature` and :func:`make_key_encoder` build them
from their config nodes (``_target_`` + arguments, ``refiner.model.identity_feature`` and
``refiner.model.key_encoder``) with Hydra's instantiate. Images everywhere are ``[B, 3, H, W]`` RGB in ``[-1, 1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talkinghead.errors import ConfigError, InputError, MissingWeightsError
from talkinghead.face.coeffs import COEFF_DIM, ID_DIM, SLICES, TEX_DIM
from talkinghead.instantiate import build, target_from_kind, to_plain
from talkinghead.render.blend import to_unit

__all__ = [
    "CoeffIdentityFeature",
    "IResNet",
    "ArcFaceFeature",
    "SmallImageEncoder",
    "ResNet18Encoder",
    "identity_feature_spec",
    "key_encoder_spec",
    "make_identity_feature",
    "make_key_encoder",
]

IDENTITY_CFG_KEY = "refiner.model.identity_feature"
KEY_ENCODER_CFG_KEY = "refiner.model.key_encoder"
ARCFACE_SOURCE = ("the insightface arcface_torch model zoo (github.com/deepinsight/insightface, "
                  "recognition/arcface_torch), e.g. ms1mv3_arcface_r50_fp16/backbone.pth")
RESNET18_SOURCE = "torchvision's ImageNet weights https://download.pytorch.org/models/resnet18-f37072fd.pth"


def _check_images(images: torch.Tensor, who: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"{who} expects images [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")


# ---------------------------------------------------------------------------------------------
# Identity features
# ---------------------------------------------------------------------------------------------
class CoeffIdentityFeature(nn.Module):
    """Offline identity feature: a fixed orthonormal projection of 3DMM identity + texture.

    ``[B, 257]`` coefficient vectors (or ``[B, 160]`` = identity 80 + texture 80) are mapped by a
    seeded matrix with orthonormal rows ``[160, out_dim]`` and L2-normalised. The projection is an
    isometry, so the cosine of two features equals the cosine of the two persons' 160-d
    coefficient vectors: identical for the same person, near 0 (``~N(0, 1/160)``) for independent
    N(0, 1)-scale draws -- far below the memory's 0.98 same-identity threshold. Not trainable;
    the matrix is a buffer (saved with the model, so a checkpoint keeps its own projection).
    """

    input_kind = "coeffs"

    def __init__(self, id_dim: int = ID_DIM, tex_dim: int = TEX_DIM, out_dim: int = 512, seed: int = 0):
        super().__init__()
        in_dim = id_dim + tex_dim
        if out_dim < in_dim:
            raise ConfigError(f"{IDENTITY_CFG_KEY}.out_dim={out_dim} must be >= {in_dim} (identity + texture dims)")
        self.id_dim, self.tex_dim, self.out_dim = id_dim, tex_dim, out_dim
        generator = torch.Generator().manual_seed(int(seed))
        gaussian = torch.randn(out_dim, in_dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)  # q: [out_dim, in_dim], orthonormal columns
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique (sign-fixed) factorisation
        self.register_buffer("projection", q.t().contiguous().to(torch.float32))  # [in_dim, out_dim]

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``[B, 257]`` or ``[B, id_dim + tex_dim]`` -> unit-norm ``[B, out_dim]``."""
        in_dim = self.id_dim + self.tex_dim
        if coeffs.dim() == 2 and coeffs.shape[1] == COEFF_DIM and (self.id_dim, self.tex_dim) == (ID_DIM, TEX_DIM):
            coeffs = torch.cat([coeffs[:, SLICES["identity"]], coeffs[:, SLICES["texture"]]], dim=1)
        elif coeffs.dim() != 2 or coeffs.shape[1] != in_dim:
            raise InputError(f"CoeffIdentityFeature expects coefficients [B, {COEFF_DIM}] or [B, {in_dim}], "
                             f"got {tuple(coeffs.shape)}")
        return F.normalize(coeffs.to(self.projection.dtype) @ self.projection, dim=1)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class _IBasicBlock(nn.Module):
    """arcface_torch's pre-activation-style residual block: BN, conv, BN, PReLU, conv(stride), BN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=1e-5)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """The IResNet backbone of insightface's ``arcface_torch`` (same module names, so its
    ``backbone.pth`` state_dicts load). ``[B, 3, 112, 112]`` RGB in [-1, 1] -> ``[B, 512]``
    (not normalised)."""

    LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
    INPUT_SIZE = 112

    def __init__(self, arch: str = "r50", num_features: int = 512):
        super().__init__()
        if arch not in self.LAYERS:
            raise ConfigError(f"{IDENTITY_CFG_KEY}.arch={arch!r} is unknown; use one of {sorted(self.LAYERS)}")
        blocks = self.LAYERS[arch]
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        in_ch = 64
        for index, (width, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=1, stride=2, bias=False),
                nn.BatchNorm2d(width, eps=1e-5),
            )
            layer = [_IBasicBlock(in_ch, width, stride=2, downsample=downsample)]
            layer += [_IBasicBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            in_ch = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)  # 112 / 2^4 = 7
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 512, 7, 7]
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` a state_dict (tensors only), unwrapping ``{"state_dict": ...}`` and
    DataParallel's ``module.`` prefixes."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise MissingWeightsError(f"{path} does not hold a state_dict; expected a PyTorch backbone.pth")
    return {k.removeprefix("module."): v for k, v in state.items()}


class ArcFaceFeature(nn.Module):
    """ArcFace identity feature (the paper's choice) from a local arcface_torch ``backbone.pth``.

    ``forward(images [B, 3, H, W] in [-1, 1]) -> [B, 512]`` unit-norm. Images are resized to
    112 x 112 (bilinear, antialiased); ArcFace expects its own 5-point alignment template, which
    our aligned face crops approximate (same landmarks, similar scale). Always frozen and in eval
    mode. A missing file raises :class:`MissingWeightsError` naming the path and where to get it.
    """

    input_kind = "image"
    out_dim = 512

    def __init__(self, weights: str | Path | None = None, arch: str = "r50", out_dim: int = 512):
        super().__init__()
        if int(out_dim) != self.out_dim:
            raise ConfigError(f"ArcFace features are {self.out_dim}-d, not {out_dim}; set refiner.model.identity_dim={self.out_dim}")
        path = _weights_file(weights, IDENTITY_CFG_KEY, ARCFACE_SOURCE)
        if not path.is_file():
            raise MissingWeightsError(
                f"ArcFace weights not found: {path}; download backbone.pth from {ARCFACE_SOURCE} and set "
                f"{IDENTITY_CFG_KEY}.weights to its path (or use {IDENTITY_CFG_KEY}._target_={COEFFS_TARGET}, "
                "no weights needed)")
        self.backbone = IResNet(arch)
        state = _load_state_dict(path)
        try:
            self.backbone.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else "mismatch"
            raise MissingWeightsError(f"{path} is not an arcface_torch IResNet ({arch}) state_dict ({first}); "
                                      f"set {IDENTITY_CFG_KEY}.arch to the file's architecture") from None
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "ArcFaceFeature":
        super().train(mode)
        self.backbone.eval()  # frozen batch-norm statistics, always
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "ArcFaceFeature")
        size = IResNet.INPUT_SIZE
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(self.backbone(images), dim=1)


# ---------------------------------------------------------------------------------------------
# Key encoders
# ---------------------------------------------------------------------------------------------
class SmallImageEncoder(nn.Module):
    """Offline default key network: four stride-2 4x4 convolutions (width, 2w, 4w, 8w channels;
    GroupNorm, LeakyReLU 0.2), global average pooling, a linear map to ``out_dim``. Trainable;
    any input size >= 16. ``[B, 3, H, W]`` -> ``[B, out_dim]``."""

    input_kind = "image"

    def __init__(self, out_dim: int = 256, width: int = 32):
        super().__init__()
        self.out_dim = int(out_dim)
        layers: list[nn.Module] = []
        in_ch = 3
        for mult in (1, 2, 4, 8):
            out_ch = width * mult
            layers += [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.GroupNorm(min(8, out_ch), out_ch),
                       nn.LeakyReLU(0.2)]
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, self.out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "SmallImageEncoder")
        return self.head(self.body(images).mean(dim=(2, 3)))


class ResNet18Encoder(nn.Module):
    """The paper's key network: a frozen ImageNet ResNet-18 (torchvision) without its classifier.
    ``[B, 3, H, W]`` in [-1, 1] -> ImageNet normalisation, resize to 224 -> ``[B, 512]``.

    torchvision is imported lazily; without it, :class:`ConfigError` says how to install it (or to
    switch to the offline ``small`` encoder). A missing weights file raises
    :class:`MissingWeightsError` naming it.
    """

    input_kind = "image"
    out_dim = 512
    INPUT_SIZE = 224

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        try:
            import torchvision  # noqa: PLC0415 -- optional dependency, imported only when chosen
        except Exception as err:  # ImportError, or a broken install raising something else
            raise ConfigError(
                f"the resnet18 key encoder needs torchvision ({type(err).__name__}: {err}); install the "
                f"build matching your torch (pip install torchvision, or pip install -e .[gpu]) or set "
                f"{KEY_ENCODER_CFG_KEY}._target_={SMALL_TARGET}") from None
        path = _weights_file(weights, KEY_ENCODER_CFG_KEY, RESNET18_SOURCE)
        if not path.is_file():
            raise MissingWeightsError(f"ResNet-18 weights not found: {path}; download {RESNET18_SOURCE} and set "
                                      f"{KEY_ENCODER_CFG_KEY}.weights to its path (or {KEY_ENCODER_CFG_KEY}._target_="
                                      f"{SMALL_TARGET})")
        net = torchvision.models.resnet18(weights=None)
        net.load_state_dict(_load_state_dict(path))
        net.fc = nn.Identity()
        self.net = net.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ResNet18Encoder":
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "ResNet18Encoder")
        x = ((images + 1) * 0.5 - self.mean) / self.std
        if x.shape[-2:] != (self.INPUT_SIZE, self.INPUT_SIZE):
            x = F.interpolate(x, size=(self.INPUT_SIZE, self.INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# Building them from their config nodes
# ---------------------------------------------------------------------------------------------
def _weights_file(weights: str | Path | None, cfg_key: str, source: str) -> Path:
    if not weights:
        raise ConfigError(f"{cfg_key}.weights is not set; point it at a local file from {source}")
    return Path(weights).expanduser()


COEFFS_TARGET = f"{__name__}.CoeffIdentityFeature"
SMALL_TARGET = f"{__name__}.SmallImageEncoder"
#: ``kind`` of refiner models saved before the configs named ``_target_`` -> its ``_target_``
#: (the first of each is the default).
LEGACY_IDENTITY_KINDS = {"coeffs": COEFFS_TARGET, "arcface": f"{__name__}.ArcFaceFeature"}
LEGACY_KEY_ENCODER_KINDS = {"small": SMALL_TARGET, "resnet18": f"{__name__}.ResNet18Encoder"}


def _spec(cfg: Mapping[str, Any] | None, cfg_key: str, legacy: Mapping[str, str]) -> dict:
    spec = {} if cfg is None else {k: v for k, v in to_plain(cfg).items() if v is not None}
    return target_from_kind(spec, cfg_key, legacy, default=next(iter(legacy)))


def identity_feature_spec(cfg: Mapping[str, Any] | None = None) -> dict:
    """The plain ``_target_`` spec of an identity-feature node (``None``: the coefficient
    feature; old ``{"kind": ...}`` specs of saved models are read too)."""
    return _spec(cfg, IDENTITY_CFG_KEY, LEGACY_IDENTITY_KINDS)


def key_encoder_spec(cfg: Mapping[str, Any] | None = None) -> dict:
    """The plain ``_target_`` spec of a key-encoder node (``None``: the small CNN)."""
    return _spec(cfg, KEY_ENCODER_CFG_KEY, LEGACY_KEY_ENCODER_KINDS)


def make_identity_feature(cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """The identity-feature provider of ``refiner.model.identity_feature`` (built with Hydra's
    instantiate; a bad ``_target_`` or argument -> one-line :class:`ConfigError`)."""
    return build(identity_feature_spec(cfg), IDENTITY_CFG_KEY)


def make_key_encoder(cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """The key (image) encoder of ``refiner.model.key_encoder`` (as :func:`make_identity_feature`)."""
    return build(key_encoder_spec(cfg), KEY_ENCODER_CFG_KEY)


@torch.no_grad()
def clip_identity(identity_feature: nn.Module, clip) -> torch.Tensor:
    """The identity feature ``[D]`` of a person clip, as used to train the refiner.

    Coefficient providers (``input_kind == "coeffs"``, the offline default) use frame 0's
    identity and texture coefficients (method.md section 6 takes the identity from frame 0);
    image providers (ArcFace) average the L2-normalised features of every 25th aligned crop of
    the training frames and re-normalise.
    """
    device = next(iter(identity_feature.buffers()), torch.zeros(())).device
    if getattr(identity_feature, "input_kind", "coeffs") == "coeffs":
        coeffs = torch.as_tensor(np.asarray(clip.coeffs[:1]), dtype=torch.float32, device=device)
        return identity_feature(coeffs)[0].cpu()
    train = clip.train_slice
    picks = np.arange(train.start, min(train.stop, clip.num_frames), 25)
    images = to_unit(np.array(clip.aligned[picks]), device=device) * 2 - 1  # [k, 3, H, W] in [-1, 1]
    features = F.normalize(identity_feature(images), dim=1)
    return F.normalize(features.mean(dim=0), dim=0).cpu()
