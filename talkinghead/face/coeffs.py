"""The per-frame 257-d coefficient layout (method.md section 1). Defined here once.

Layout of one frame's vector ``c`` (float32)::

    c[  0: 80]  identity     (shape basis weights)
    c[ 80:144]  expression   (expression basis weights)
    c[144:224]  texture      (albedo basis weights)
    c[224:227]  angles       Euler x, y, z in radians (rotation convention: face/camera.py)
    c[227:254]  lighting     spherical harmonics, 3 colour channels x 9 bands, channel-major
    c[254:257]  translation  x, y, z in model units (camera at z = 10, face/camera.py)

Functions work on torch tensors and numpy arrays alike, with any leading batch shape.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

ID_DIM = 80
EXP_DIM = 64
TEX_DIM = 80
ANGLE_DIM = 3
SH_DIM = 27  # 3 channels x 9 SH bands
TRANS_DIM = 3
COEFF_DIM = ID_DIM + EXP_DIM + TEX_DIM + ANGLE_DIM + SH_DIM + TRANS_DIM  # 257
POSE_DIM = ANGLE_DIM + TRANS_DIM  # 6: what Stage 1 predicts besides expression

#: Name -> slice into the 257-d vector, in order.
SLICES: dict[str, slice] = {}
_start = 0
for _name, _dim in (
    ("identity", ID_DIM),
    ("expression", EXP_DIM),
    ("texture", TEX_DIM),
    ("angles", ANGLE_DIM),
    ("lighting", SH_DIM),
    ("translation", TRANS_DIM),
):
    SLICES[_name] = slice(_start, _start + _dim)
    _start += _dim
assert _start == COEFF_DIM == 257

#: Added to the first SH band of every colour channel at shading time (ambient start value).
SH_DC_INIT = 0.8
#: Stage-1 targets shift translation z by this much (method.md section 4).
STAGE1_TRANSLATION_Z_SHIFT = -0.5


def _cat(parts: list[Any]):
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts, dim=-1)
    return np.concatenate(parts, axis=-1)


@dataclass
class FaceCoeffs:
    """The six named parts of a coefficient vector (each ``[..., dim]``)."""

    identity: Any
    expression: Any
    texture: Any
    angles: Any
    lighting: Any
    translation: Any

    @classmethod
    def split(cls, coeffs) -> "FaceCoeffs":
        if coeffs.shape[-1] != COEFF_DIM:
            raise ValueError(f"expected a last dimension of {COEFF_DIM} coefficients, got {tuple(coeffs.shape)}")
        return cls(**{name: coeffs[..., s] for name, s in SLICES.items()})

    def join(self):
        return _cat([getattr(self, f.name) for f in fields(self)])

    @property
    def pose(self):
        """Angles and translation, ``[..., 6]``."""
        return _cat([self.angles, self.translation])


def split_coeffs(coeffs) -> FaceCoeffs:
    """``[..., 257]`` -> :class:`FaceCoeffs`."""
    return FaceCoeffs.split(coeffs)


def join_coeffs(identity, expression, texture, angles, lighting, translation):
    """Named parts -> ``[..., 257]`` (torch or numpy, following the inputs)."""
    return FaceCoeffs(identity, expression, texture, angles, lighting, translation).join()


def neutral_coeffs(batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """Zero identity/expression/texture/pose at translation 0: the mean face, front-facing."""
    return torch.zeros(batch, COEFF_DIM, dtype=dtype, device=device)


def with_parts(coeffs, **parts):
    """Copy of ``coeffs`` with some named parts replaced (e.g. ``expression=exp``)."""
    out = coeffs.clone() if isinstance(coeffs, torch.Tensor) else coeffs.copy()
    for name, value in parts.items():
        if name not in SLICES:
            raise KeyError(f"unknown coefficient part {name!r}; known: {list(SLICES)}")
        out[..., SLICES[name]] = value
    return out


def stage1_target(coeffs):
    """``[..., 257]`` -> Stage-1 target ``[..., 70]`` = expression 64 + angles 3 + translation 3
    (translation z shifted by ``STAGE1_TRANSLATION_Z_SHIFT``)."""
    c = split_coeffs(coeffs)
    trans = c.translation.clone() if isinstance(coeffs, torch.Tensor) else c.translation.copy()
    trans[..., 2] = trans[..., 2] + STAGE1_TRANSLATION_Z_SHIFT
    return _cat([c.expression, c.angles, trans])


def from_stage1_output(pred):
    """Inverse of :func:`stage1_target`: ``[..., 70]`` -> (expression [..., 64], pose [..., 6])
    with the translation shift undone."""
    exp = pred[..., :EXP_DIM]
    pose = pred[..., EXP_DIM:EXP_DIM + POSE_DIM]
    pose = pose.clone() if isinstance(pose, torch.Tensor) else pose.copy()
    pose[..., 5] = pose[..., 5] - STAGE1_TRANSLATION_Z_SHIFT
    return exp, pose
