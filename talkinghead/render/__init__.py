"""Rendering: one :class:`Renderer` interface, a pure-torch z-buffer rasterizer (the
reference, CPU and CUDA) and a pytorch3d backend (lazily imported).

Use :func:`get_renderer` (``"auto"``, ``"torch"`` or ``"pytorch3d"``) rather than importing a
backend directly.
"""

from talkinghead.render.base import (
    RENDERER_NAMES,
    Renderer,
    RenderOutput,
    get_renderer,
    interpolate,
)
from talkinghead.render.rasterizer import TorchRenderer, perspective_barycentrics, rasterize

__all__ = [
    "RENDERER_NAMES",
    "Renderer",
    "RenderOutput",
    "TorchRenderer",
    "get_renderer",
    "interpolate",
    "perspective_barycentrics",
    "rasterize",
]
