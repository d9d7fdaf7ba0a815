"""User-facing errors.

Anything a user can fix (a missing file, a bad config key, audio that is silent) raises
:class:`TalkingHeadError` with a message that fits on one line and names the file or key and
the fix. The CLI wrapper (:mod:`talkinghead.cli`) prints that line and exits non-zero; a
traceback is shown only with ``verbose=true``.
"""

from __future__ import annotations

from pathlib import Path


class TalkingHeadError(Exception):
    """An error the user can fix; ``str(err)`` is a single line naming the file/key and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force a single line


class InputError(TalkingHeadError):
    """Bad or missing input data (file, video, audio, clip)."""


class ConfigError(TalkingHeadError):
    """A config key or value is wrong."""


class MissingWeightsError(TalkingHeadError):
    """Pretrained weights or model files that cannot be downloaded here are absent."""


class TrainingError(TalkingHeadError):
    """Training cannot continue (NaN/inf loss, missing checkpoint, ...)."""


def require_file(path, what: str, fix: str = "") -> Path:
    """Return ``Path(path)`` if it is an existing file, else raise :class:`InputError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        hint = f"; {fix}" if fix else ""
        raise InputError(f"{what} not found: {p}{hint}")
    return p
