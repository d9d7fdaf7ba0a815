"""Choosing a renderer backend.

Scripts build the renderer from the ``renderer`` config group (``configs/renderer/*.yaml``:
``_target_`` is a backend class or :func:`auto_renderer`, built by
:func:`talkinghead.instantiate.build`); library callers and tests may name one instead
(:func:`get_renderer`), or pass a :class:`Renderer` they made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from talkinghead.errors import ConfigError
from talkinghead.instantiate import build
from talkinghead.render import pytorch3d_backend
from talkinghead.render.base import Renderer
from talkinghead.render.pytorch3d_backend import PyTorch3DRenderer
from talkinghead.render.rasterizer import TorchRenderer


def auto_renderer(**options: Any) -> Renderer:
    """pytorch3d when it imports and CUDA is available, else the pure-torch rasterizer
    (``options`` go to the backend's constructor; both take ``cull_backfaces``)."""
    if torch.cuda.is_available() and pytorch3d_backend.pytorch3d_available():
        return PyTorch3DRenderer(**options)
    return TorchRenderer(**options)


#: The backends by name (the ``renderer=`` choices of configs/renderer/).
RENDERERS = {"auto": auto_renderer, "torch": TorchRenderer, "pytorch3d": PyTorch3DRenderer}
RENDERER_NAMES = tuple(RENDERERS)


def get_renderer(renderer: str | Mapping[str, Any] | Renderer = "auto", **options: Any) -> Renderer:
    """A renderer from a name (``"torch"``: pure-torch reference, ``"pytorch3d"``: raises
    :class:`ConfigError` saying how to install it when it does not import, ``"auto"``), a
    ``renderer`` config node (``_target_`` + options), or a renderer (returned as it is)."""
    if isinstance(renderer, Renderer):
        return renderer
    if isinstance(renderer, str):
        key = renderer.lower()
        if key not in RENDERERS:
            raise ConfigError(f"renderer={renderer!r} is not a renderer; use one of {', '.join(RENDERER_NAMES)}")
        return RENDERERS[key](**options)
    return build(renderer, "renderer", **options)
