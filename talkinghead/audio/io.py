"""Loading, checking and saving audio.

Everything downstream works on 16 kHz mono float32 in [-1, 1] (method.md section 3).
:func:`load_audio` gets any input there:

- ``.wav/.flac/.ogg/.oga/.aiff/.aif`` are read with soundfile (libsndfile);
- anything else (mp3, m4a, aac, opus, or the audio track of a video container), and any of the
  above that libsndfile cannot parse, is decoded by the ffmpeg binary that imageio-ffmpeg ships
  (``imageio_ffmpeg.get_ffmpeg_exe()``) into a temporary float WAV at the file's own rate and
  channel count, which is then read like the rest.

Channels are averaged (ffmpeg's own ``-ac 1`` down-mix is not an average: it weights stereo
channels by 1/sqrt(2) each), then the signal is resampled with librosa's soxr backend
(:func:`resample`; where librosa is not installed, scipy's polyphase filter). The
ffmpeg helpers here (:func:`ffmpeg_exe`, :func:`run_ffmpeg`) are shared with
:mod:`talkinghead.video.io`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from math import gcd
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile

from talkinghead.errors import InputError, require_file

#: Extensions read directly with soundfile; everything else goes through ffmpeg.
SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"})


# --------------------------------------------------------------------------------------------
# ffmpeg (shared with talkinghead.video.io)
# --------------------------------------------------------------------------------------------
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by imageio-ffmpeg (no system ffmpeg needed)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ffmpeg -nostdin -hide_banner <args>`` and capture stdout (bytes) and stderr (text).

    With ``check``, a non-zero exit raises :class:`RuntimeError` carrying ffmpeg's last error
    line; callers translate it into an :class:`InputError` that names their file.
    """
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", *map(str, args)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = proc.stderr.decode("utf-8", errors="replace")
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, stderr)
    if check and proc.returncode != 0:
        raise RuntimeError(last_error_line(stderr) or f"ffmpeg exited with code {proc.returncode}")
    return proc


def last_error_line(stderr: str) -> str:
    """The last non-empty line of an ffmpeg log (usually the reason it failed)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def publish_file(temp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a finished temporary file onto ``final`` atomically, with normal permissions.

    ``tempfile.mkstemp`` creates files readable by the owner only; the published file gets
    ``0o666`` minus the umask, like any newly created file.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    os.replace(temp, final)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def resample(audio: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    """Mono ``[S]`` from ``native_rate`` to ``sample_rate``: librosa's soxr (high quality) where
    librosa is installed, else ``scipy.signal.resample_poly`` (Kaiser-windowed polyphase; same
    length ``ceil(S * sample_rate / native_rate)``, differences far below the MFCCs' resolution),
    so that loading audio does not need librosa (a GPU image may lack it)."""
    try:
        import librosa  # optional dependency
    except ImportError:
        from scipy.signal import resample_poly  # local: scipy.signal costs 0.9 s, only this fallback needs it

        native_rate, sample_rate = int(native_rate), int(sample_rate)
        g = gcd(native_rate, sample_rate)
        return resample_poly(audio, sample_rate // g, native_rate // g).astype(np.float32)
    return librosa.resample(audio, orig_sr=native_rate, target_sr=sample_rate, res_type="soxr_hq")


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    min_duration: float = 1.0 / 25.0,
) -> np.ndarray:
    """Load an audio (or video) file as mono float32 in [-1, 1] at ``sample_rate``.

    Args:
        path: audio file, or a video container with an audio track.
        sample_rate: target rate in Hz (16 kHz for the features).
        min_duration: shortest accepted duration in seconds (default one 25 fps video frame).

    Returns:
        ``np.ndarray`` float32 ``[S]``.

    Raises:
        InputError: the file is missing, unreadable/corrupt, has no audio track, or holds fewer
            samples than ``min_duration``.
    """
    path = require_file(path, "audio file", "check the path")
    audio, native_rate = _read_any(path)  # [S, C] float32
    if audio.shape[0] == 0:
        raise InputError(f"audio file {path} contains no samples; provide a non-empty recording")

    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if native_rate != sample_rate:
        mono = resample(mono, native_rate, sample_rate)
    mono = np.clip(np.ascontiguousarray(mono, dtype=np.float32), -1.0, 1.0)

    if mono.shape[0] < max(1, int(round(min_duration * sample_rate))):
        raise InputError(
            f"audio file {path} is too short ({mono.shape[0] / sample_rate * 1000:.0f} ms, "
            f"need at least {min_duration * 1000:.0f} ms); provide a longer recording"
        )
    return mono


def _read_any(path: Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` to ``([S, C] float32, native sample rate)``: soundfile first, else ffmpeg."""
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return audio, int(rate)
        except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError):
            pass  # unusual codec inside a known container: let ffmpeg try
    return _decode_with_ffmpeg(path)


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of ``path`` with ffmpeg into ``([S, C] float32, rate)``.

    ffmpeg writes a temporary float WAV (native rate and channels) that soundfile reads back, so
    channel averaging and resampling stay in :func:`load_audio` for every format.
    """
    fd, tmp_name = tempfile.mkstemp(suffix=".wav", prefix="talkinghead_decode_")
    os.close(fd)
    try:
        proc = run_ffmpeg(
            ["-v", "error", "-y", "-i", str(path), "-map", "0:a:0", "-vn", "-c:a", "pcm_f32le",
             "-f", "wav", tmp_name],
            check=False,
        )
        if proc.returncode != 0:
            reason = last_error_line(proc.stderr)
            if "matches no streams" in proc.stderr:
                raise InputError(f"{path} has no audio track; provide a file that contains audio")
            raise InputError(
                f"cannot decode audio file {path} ({reason or 'ffmpeg failed'}); "
                "check that it is a valid audio/video file"
            )
        audio, rate = soundfile.read(tmp_name, dtype="float32", always_2d=True)
        return audio, int(rate)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Checks and saving
# --------------------------------------------------------------------------------------------
def peak_dbfs(audio: np.ndarray) -> float:
    """Peak level in dBFS (``-inf`` for all-zero or empty audio)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")


def check_not_silent(audio: np.ndarray, path: str | os.PathLike = "audio", threshold_db: float = -60.0) -> None:
    """Raise :class:`InputError` if the peak level of ``audio`` is below ``threshold_db`` dBFS.

    Kept separate from :func:`load_audio` so callers decide whether silence is an error (it is for
    driving a talking head; it is not for a background track).
    """
    bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
    if bad:  # NaN samples would otherwise read as "silent (peak -inf dBFS)"
        raise InputError(f"{path} has {bad} NaN or infinite samples of {np.size(audio)}; re-export it as "
                         "ordinary PCM audio (e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav)")
    level = peak_dbfs(audio)
    if level < threshold_db:
        shown = "-inf" if np.isinf(level) else f"{level:.1f}"
        raise InputError(
            f"{path} is silent (peak {shown} dBFS); provide audio with speech "
            f"(peak above {threshold_db:g} dBFS)"
        )


def save_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = 16000, subtype: str = "PCM_16") -> Path:
    """Write mono ``audio [S]`` (or ``[S, C]``) as WAV atomically (temp file + ``os.replace``).

    Values are clipped to [-1, 1]. ``subtype`` is a soundfile subtype (``"PCM_16"``, ``"FLOAT"``).
    Returns the final path.
    """
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"output directory {path.parent} does not exist; create it first")
    data = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    try:
        fd, tmp_name = tempfile.mkstemp(suffix=".wav", prefix=f".{path.stem}.", dir=path.parent)
    except OSError as err:
        raise InputError(f"cannot write to {path.parent} ({err.strerror}); choose a writable directory") from err
    os.close(fd)
    try:
        soundfile.write(tmp_name, data, int(sample_rate), subtype=subtype, format="WAV")
        publish_file(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
