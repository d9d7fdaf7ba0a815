"""Which torch device a job runs on (the one home of ``device=auto|cpu|cuda|cuda:N``) and in
which arithmetic (``precision=fp32|bf16|auto``)."""

from __future__ import annotations

import contextlib

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


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The generator's arithmetic at inference: ``fp32``, ``bf16`` (autocast; the memory read
    and the output stay float32) or ``auto`` = ``bf16`` where the hardware has native bf16
    (CUDA with bf16 support, or a CPU whose oneDNN reports bf16 support, e.g. AVX512-BF16 or
    AMX) and ``fp32`` elsewhere (emulated bf16 is slower than fp32).

    Why: on this project's 2-core AVX512-BF16 CPU, bf16 autocast runs the paper-size U-Net at
    256 px about 1.9x faster than fp32 (``bench/stage2.py``); outputs differ from fp32 by far
    less than the refiner's error (README)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
        except (AttributeError, RuntimeError):
            return "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """``torch.autocast`` to bfloat16 for ``precision="bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
