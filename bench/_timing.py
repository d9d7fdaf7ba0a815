"""Timing helpers shared by the ``bench/`` scripts (imported as ``_timing``: the scripts run as
``python bench/NAME.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_second(step, device: torch.device, seconds: float, min_iters: int, warmup: int = 1, blocks: int = 1) -> float:
    """Calls per second of ``step()`` (wall clock, synchronised after each call) after
    ``warmup`` calls, iterating until ``seconds`` have passed and at least ``min_iters`` calls.

    With ``blocks > 1`` the time is split into that many blocks and the median block's rate is
    returned: on a shared or noisy machine one slow stretch then does not set the figure."""
    for _ in range(warmup):
        step()
    synchronize(device)
    blocks = max(1, blocks)
    rates = []
    for _ in range(blocks):
        start, iters = time.perf_counter(), 0
        while iters < min_iters or time.perf_counter() - start < seconds / blocks:
            step()
            iters += 1
            synchronize(device)
        rates.append(iters / (time.perf_counter() - start))
    return statistics.median(rates)
