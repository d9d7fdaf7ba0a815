"""Rendering: one :class:`Renderer` interface, a pure-torch z-buffer rasterizer (the
reference, CPU and CUDA) and a pytorch3d backend (lazily imported).

Scripts build the backend from the ``renderer`` config group; library code and tests use
:func:`get_renderer` (``"auto"``, ``"torch"`` or ``"pytorch3d"``, a config node, or a renderer).
"""

from talkinghead.render.base import Renderer, RenderOutput, interpolate
from talkinghead.render.rasterizer import TorchRenderer, perspective_barycentrics, rasterize
from talkinghead.render.select import RENDERER_NAMES, auto_renderer, get_renderer

__all__ = [
    "RENDERER_NAMES",
    "Renderer",
    "RenderOutput",
    "TorchRenderer",
    "auto_renderer",
    "get_renderer",
    "interpolate",
    "perspective_barycentrics",
    "rasterize",
]
