"""Which torch device a job runs on: the one home of ``device=auto|cpu|cuda|cuda:N``."""

from __future__ import annotations

import torch

from talkinghead.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = None,
                   key: str = "device") -> torch.device:
    """``"auto"`` (or ``None``) -> CUDA when available, else CPU; ``"cuda"`` -> ``cuda:<local_rank>``
    when a rank is given (a torchrun process), else the current CUDA device; anything else is
    passed to :class:`torch.device`. An unknown name, or CUDA without CUDA, is a one-line
    :class:`ConfigError` naming the config ``key``."""
    if isinstance(device, torch.device):
        return device
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={device} but CUDA is not available; use {key}=cpu or {key}=auto")
    return resolved
