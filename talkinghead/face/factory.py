"""Build the face model a config or a clip's ``meta.face_model`` names (one place for this).

A spec is a ``configs/face_model/*.yaml`` node: ``_target_`` (the function that makes the
:class:`MorphableModel`) and its arguments, built by :func:`talkinghead.instantiate.build`.
Clips written before the configs named ``_target_`` record ``{"kind": "procedural" | "bfm09", ...}``;
:func:`face_model_spec` reads those as the same models.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from talkinghead.instantiate import build, plain_spec, target_from_kind

PROCEDURAL_TARGET = "talkinghead.face.procedural.make_procedural_model"
#: The face model used where none is configured (the same as configs/face_model/procedural.yaml).
DEFAULT_FACE_MODEL = {"_target_": PROCEDURAL_TARGET, "seed": 0, "resolution": 64}
#: ``kind`` of clips written before the ``_target_`` configs -> its ``_target_``.
LEGACY_KINDS = {"procedural": PROCEDURAL_TARGET, "bfm09": "talkinghead.face.bfm.load_face_model"}


def face_model_spec(cfg: Mapping[str, Any]) -> dict:
    """A plain spec dict (``_target_`` + arguments, ``None`` values dropped) from a config node
    or a clip's ``meta.face_model`` (old ``kind`` specs included)."""
    spec = {k: v for k, v in dict(cfg).items() if v is not None}
    return plain_spec(target_from_kind(spec, "face_model", LEGACY_KINDS), "face_model")


def is_procedural(spec: Mapping[str, Any]) -> bool:
    """Whether ``spec`` names the generated (procedural) face model."""
    return face_model_spec(spec)["_target_"] == PROCEDURAL_TARGET


@lru_cache(maxsize=8)
def _build(items: tuple):
    return build(dict(items), "face_model")


def make_face_model(cfg: Mapping[str, Any]):
    """Return the (cached, shared) :class:`MorphableModel` for a spec such as
    :data:`DEFAULT_FACE_MODEL` or ``configs/face_model/bfm09.yaml``.
    Do not modify the returned module in place (it is shared); ``.to(device)`` returns a copy
    only for a device change."""
    spec = face_model_spec(cfg)
    return _build(tuple(sorted(spec.items())))
