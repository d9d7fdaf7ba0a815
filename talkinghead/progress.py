"""Progress bars for long steps (preprocessing, the synthetic corpus), shown in a terminal and in
a log file alike.

In a file (a log, CI, ``nohup``), a bar that redraws every 0.1 s writes one carriage-return
update per step: the 450 steps of one video's 3DMM fit came to 65 kB of them. There the bars
redraw every :data:`FILE_INTERVAL` seconds instead, and once more when they close. The
training loop prints its own lines when stderr is not a terminal
(:mod:`talkinghead.train.loop`).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm.auto import tqdm

#: Seconds between redraws when the bar's stream is not a terminal.
FILE_INTERVAL = 10.0


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed or odd stream
        return False


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, off when not ``enabled``; when its stream (``file``, default
    stderr) is not a terminal it redraws every :data:`FILE_INTERVAL` seconds (unless
    ``mininterval`` is given)."""
    if not _is_terminal(kwargs.get("file") or sys.stderr):
        kwargs.setdefault("mininterval", FILE_INTERVAL)
    return tqdm(iterable, disable=not enabled, **kwargs)
