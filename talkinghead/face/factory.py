"""Build the face model a config or a clip's ``meta.face_model`` names (one place for this)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from talkinghead.errors import ConfigError


def face_model_spec(cfg: Mapping[str, Any]) -> dict:
    """A plain, hashable-friendly spec dict from a config node / meta entry."""
    spec = {k: v for k, v in dict(cfg).items() if v is not None}
    if "kind" not in spec:
        raise ConfigError("face_model.kind is missing; use face_model=procedural or face_model=bfm09")
    return spec


@lru_cache(maxsize=8)
def _build(items: tuple):
    spec = dict(items)
    kind = spec.pop("kind")
    if kind == "procedural":
        from talkinghead.face.procedural import make_procedural_model

        return make_procedural_model(seed=int(spec.get("seed", 0)), resolution=int(spec.get("resolution", 64)))
    if kind == "bfm09":
        from talkinghead.face.bfm import load_face_model

        if "path" not in spec:
            raise ConfigError("face_model.path is missing for face_model=bfm09")
        return load_face_model(spec["path"])
    raise ConfigError(f"unknown face_model.kind {kind!r}; use procedural or bfm09")


def make_face_model(cfg: Mapping[str, Any]):
    """Return the (cached, shared) :class:`MorphableModel` for a spec such as
    ``{"kind": "procedural", "seed": 0, "resolution": 64}`` or ``{"kind": "bfm09", "path": ...}``.
    Do not modify the returned module in place (it is shared); ``.to(device)`` returns a copy
    only for a device change."""
    spec = face_model_spec(cfg)
    return _build(tuple(sorted(spec.items())))
