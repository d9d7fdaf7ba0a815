"""Timing helpers shared by the ``bench/`` scripts (imported as ``_timing``: the scripts run as
``python bench/NAME.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_second(step, device: torch.device, seconds: float, min_iters: int, warmup: int = 1) -> float:
    """Calls per second of ``step()`` (wall clock, synchronised after each call) after
    ``warmup`` calls, iterating until ``seconds`` have passed and at least ``min_iters`` calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start, iters = time.perf_counter(), 0
    while iters < min_iters or time.perf_counter() - start < seconds:
        step()
        iters += 1
        synchronize(device)
    return iters / (time.perf_counter() - start)
