"""Swappable parts built from their config group: ``_target_`` + arguments, through Hydra's
``instantiate`` (the one way a renderer, landmark detector, face model, identity feature or
key encoder is made from a config node).

A node such as ``configs/renderer/torch.yaml`` names the class (or function) in ``_target_``
and its keyword arguments beside it. Hydra's own errors are multi-line tracebacks; :func:`build`
turns them into one :class:`ConfigError` line naming the config key and the fix, and lets a
:class:`TalkingHeadError` raised by the part itself through unchanged.

:func:`config_default` reads a value from a config file: the dataclasses that mirror a config
group (``FittingConfig``, ``PoseControls``, ``MouthOptions``, ``InferenceOptions``) take their field
defaults from there, so each default is written once, in the YAML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from talkinghead.errors import ConfigError, TalkingHeadError


#: configs/ at the repository root (override with TALKINGHEAD_CONFIG_DIR).
CONFIG_DIR = Path(os.environ.get("TALKINGHEAD_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))


@lru_cache(maxsize=None)
def _config_file(relative: str) -> dict:
    path = CONFIG_DIR / relative
    if not path.is_file():
        raise ConfigError(f"{path} not found; set TALKINGHEAD_CONFIG_DIR to the repository's configs/")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def config_default(relative: str, key: str) -> Any:
    """The value of ``key`` (dotted) written in ``configs/<relative>``: the one place a default is
    written; the dataclasses that mirror a config group take their field defaults from here."""
    value: Any = _config_file(relative)
    for part in key.split("."):
        value = value[part]
    return value


def to_plain(node: Any) -> Any:
    """A config node as plain Python containers (interpolations resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def target_from_kind(spec: Mapping[str, Any], key: str, kinds: Mapping[str, str], default: str | None = None) -> dict:
    """``spec`` with its ``_target_`` taken from a short name ``kind`` when it has none: specs
    written before the configs named ``_target_`` (saved clips and models) and names such as
    ``detector="mediapipe"``. ``kinds`` maps each name to its ``_target_``; ``default`` is the
    name used when ``spec`` gives neither. An unknown name is a one-line :class:`ConfigError`."""
    spec = dict(spec)
    if "_target_" in spec:
        return spec
    kind = spec.pop("kind", default)
    if kind is None:
        return spec
    kind = str(kind).lower()
    if kind not in kinds:
        raise ConfigError(f"{key}.kind={kind!r} is not one of {', '.join(kinds)}; choose one of configs/"
                          f"{key.split('.')[0]}/ or give {key}._target_=module.Class")
    spec["_target_"] = kinds[kind]
    return spec


def plain_spec(node: Any, key: str) -> dict:
    """``node`` (a config node or mapping with ``_target_``) as a plain dict; a missing
    ``_target_`` raises :class:`ConfigError` naming ``key``."""
    spec = to_plain(node)
    if not isinstance(spec, Mapping) or not spec.get("_target_"):
        raise ConfigError(f"{key} has no _target_ (got {spec!r}); choose one of configs/{key.split('.')[0]}/ "
                          f"or give {key}._target_=module.Class")
    return dict(spec)


def build(node: Any, key: str, **overrides: Any) -> Any:
    """``hydra.utils.instantiate(node, **overrides)`` with one-line errors.

    ``key`` is where the node sits in the config (``"renderer"``, ``"refiner.model.key_encoder"``)
    and is named in the message; ``overrides`` replace or add arguments (``None`` values are
    dropped, so an unset option keeps the part's default)."""
    spec = plain_spec(node, key)
    spec.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return instantiate(spec, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, TalkingHeadError):
            raise cause from None
        target = spec["_target_"]
        if isinstance(cause, ImportError) or "Error locating target" in str(err):
            raise ConfigError(f"{key}._target_={target!r} does not import; choose one of configs/{key.split('.')[0]}/ "
                              f"or fix the module path") from None
        reason = " ".join(str(cause if cause is not None else err).split())[:200]
        raise ConfigError(f"bad arguments for {key} ({target}): {reason}; see its config and the class's "
                          f"arguments") from None
