"""Reading and writing video with the ffmpeg binary that imageio-ffmpeg ships.

- :func:`probe_media` parses ffmpeg's stream report (imageio-ffmpeg ships no ffprobe).
- :func:`read_video` / :func:`iter_video` decode RGB uint8 frames resampled to a constant frame
  rate (``-vf fps=25`` by default: frames are duplicated/dropped to the nearest timestamps, as
  method.md section 2 asks for inputs that are not 25 fps). Rotation metadata (phone videos) is
  applied by ffmpeg, so frames come out upright.
- :func:`read_video_audio` returns the audio track as 16 kHz mono float32 (or ``None``).
- :class:`VideoWriter` / :func:`write_video` stream RGB frames to H.264 (yuv420p, CRF) in a
  temporary file next to the output, mux the audio (AAC) when given, and ``os.replace`` the
  result into place, so the output path only ever holds a complete file. The **video length is
  authoritative**: the audio is trimmed, or padded with silence, to exactly
  ``num_frames / fps`` seconds when muxing.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import imageio_ffmpeg
import numpy as np

from talkinghead.audio.io import ffmpeg_exe, last_error_line, load_audio, publish_file, run_ffmpeg, save_wav
from talkinghead.errors import InputError, require_file

log = logging.getLogger(__name__)

#: Containers that hold H.264 + AAC.
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv"})


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaInfo:
    """What ffmpeg reports about a media file (first video and first audio stream).

    ``num_frames`` is exact (a demux-only count of the video stream's frames) when
    :func:`probe_media` was called with ``count_frames=True``; otherwise it is the estimate
    ``round(duration * fps)``. Width/height are as decoded (after rotation metadata).
    """

    path: Path
    duration: float | None
    has_video: bool
    has_audio: bool
    fps: float | None = None
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    sample_rate: int | None = None
    audio_channels: int | None = None


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+.*?: (Video|Audio): (.*)$", re.MULTILINE)
_SIZE = re.compile(r"(?<![\w.])([1-9]\d*)x([1-9]\d*)(?![\w.])")
_FPS = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")
_SAMPLE_RATE = re.compile(r"(\d+) Hz")
_CHANNEL_LAYOUTS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6,
                    "6.1": 7, "7.1": 8}


def _parse_fps(description: str) -> float | None:
    rates = {kind: float(value) * (1000 if kilo else 1) for value, kilo, kind in _FPS.findall(description)}
    return rates.get("fps") or rates.get("tbr")


def _parse_channels(description: str) -> int | None:
    fields = [field.strip() for field in description.split(",")]
    for field in fields[2:4]:  # "<codec>, <rate> Hz, <layout>, <sample format>, ..."
        layout = field.split("(")[0]
        if layout in _CHANNEL_LAYOUTS:
            return _CHANNEL_LAYOUTS[layout]
        match = re.match(r"(\d+) channels", field)
        if match:
            return int(match.group(1))
    return None


def probe_media(path: str | os.PathLike, count_frames: bool = False) -> MediaInfo:
    """Describe a video/audio file from ffmpeg's report.

    Raises :class:`InputError` when the file is missing or ffmpeg cannot read it.
    """
    path = require_file(path, "media file", "check the path")
    report = run_ffmpeg(["-i", str(path)], check=False).stderr  # "no output file" exit is expected
    if "Input #0" not in report:
        reason = last_error_line(report) or "unknown format"
        raise InputError(f"{path} is not a readable video/audio file ({reason}); check that the file is a valid video")

    match = _DURATION.search(report)
    duration = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else None
    streams = [(kind, text) for kind, text in _STREAM.findall(report) if "(attached pic)" not in text]
    video = next((text for kind, text in streams if kind == "Video"), None)
    audio = next((text for kind, text in streams if kind == "Audio"), None)

    fields: dict = {"path": path, "duration": duration, "has_video": video is not None, "has_audio": audio is not None}
    if video is not None:
        size = _SIZE.search(video)
        width, height = (int(size[1]), int(size[2])) if size else (None, None)
        rotation = _ROTATION.search(report)
        if rotation and width and round(float(rotation[1])) % 180 == 90:
            width, height = height, width  # ffmpeg auto-rotates when decoding
        fps = _parse_fps(video)
        fields.update(width=width, height=height, fps=fps, video_codec=video.split()[0].strip(","))
        if count_frames:
            fields["num_frames"] = _count_video_frames(path)
        elif fps and duration is not None:
            fields["num_frames"] = int(np.floor(duration * fps + 0.5))
    if audio is not None:
        rate = _SAMPLE_RATE.search(audio)
        fields.update(
            audio_codec=audio.split()[0].strip(","),
            sample_rate=int(rate[1]) if rate else None,
            audio_channels=_parse_channels(audio),
        )
    return MediaInfo(**fields)


def _count_video_frames(path: Path) -> int | None:
    """Exact frame count of the first video stream (stream copy: demuxes, does not decode)."""
    proc = run_ffmpeg(["-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-",
                       "-progress", "pipe:1"], check=False)
    counts = re.findall(rb"^frame=(\d+)", proc.stdout, re.MULTILINE)
    return int(counts[-1]) if counts else None


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _iter_raw_frames(path: str | os.PathLike, fps: float | None, max_frames: int | None) -> Iterator[np.ndarray]:
    """Decoded read-only RGB frames ``[H, W, 3]`` uint8 (views on ffmpeg's output buffers)."""
    info = probe_media(path)
    if not info.has_video:
        raise InputError(f"{info.path} has no video stream; provide a video file")
    output_params: list[str] = []
    if fps:
        output_params += ["-vf", f"fps={_fraction(fps)}"]
    if max_frames is not None:
        output_params += ["-frames:v", str(int(max_frames))]
    frames = imageio_ffmpeg.read_frames(str(info.path), output_params=output_params)
    try:
        try:
            meta = next(frames)
        except (OSError, RuntimeError, StopIteration) as err:
            raise InputError(
                f"cannot decode video {info.path} ({_first_line(err)}); check that it is a valid video"
            ) from err
        width, height = meta["size"]
        try:
            for raw in frames:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        except RuntimeError as err:
            raise InputError(f"decoding {info.path} failed ({_first_line(err)}); the file may be truncated") from err
    finally:
        frames.close()  # stops ffmpeg


def iter_video(path: str | os.PathLike, fps: float | None = 25, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Stream RGB uint8 frames ``[H, W, 3]`` resampled to ``fps`` (``None``: the file's own rate).

    Memory stays at one frame; closing the generator stops ffmpeg.
    """
    for frame in _iter_raw_frames(path, fps, max_frames):
        yield frame.copy()


def read_video(path: str | os.PathLike, fps: float | None = 25, max_frames: int | None = None) -> np.ndarray:
    """Decode a whole video (or its first ``max_frames``) as uint8 ``[N, H, W, 3]`` at ``fps``."""
    frames = list(_iter_raw_frames(path, fps, max_frames))
    if not frames:
        raise InputError(f"no frames could be decoded from {path}; check that it is a valid video")
    return np.stack(frames)


def read_video_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray | None:
    """The file's audio track as mono float32 ``[S]`` at ``sample_rate``; ``None`` without audio."""
    info = probe_media(path)
    if not info.has_audio:
        return None
    return load_audio(info.path, sample_rate, min_duration=0.0)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def check_output_path(path: str | os.PathLike, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> Path:
    """Check up front that ``path`` can be written: known extension, existing writable directory."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in extensions:
        raise InputError(f"output {path} must end in one of {', '.join(sorted(extensions))}; change the file name")
    directory = path.parent
    if not directory.is_dir():
        blocker = next((p for p in directory.parents if p.exists()), None) if not directory.exists() else directory
        if blocker is not None and not blocker.is_dir():  # out=notes.txt/video.mp4
            raise InputError(f"output directory {directory}: {blocker} is a file, not a folder; choose another output path")
        raise InputError(f"output directory {directory} does not exist; create it first (mkdir -p {directory})")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".probe", dir=directory)
    except OSError as err:
        raise InputError(
            f"output directory {directory} is not writable ({err.strerror}); choose another output path"
        ) from err
    os.close(fd)
    os.unlink(probe)
    return path


class VideoWriter:
    """Stream RGB uint8 frames into an H.264 video with optional AAC audio; atomic on close.

    Usage::

        with VideoWriter("out.mp4", fps=25, audio=audio_16k) as writer:
            for batch in batches:          # [n, H, W, 3] or [H, W, 3], uint8 RGB
                writer.write(batch)

    Frames go to ``ffmpeg`` (libx264, ``crf``, ``preset``, yuv420p) writing a hidden temporary
    file in the output directory. On a clean exit the audio (``None``, a float array ``[S]`` at
    ``sample_rate``, or a path to any audio/video file) is muxed as AAC, trimmed or padded with
    silence to exactly ``num_frames / fps`` seconds, and the result is ``os.replace``-d onto the
    output path. On an exception inside the ``with`` block (or :meth:`abort`) ffmpeg is stopped
    and no file is left behind. yuv420p needs even sizes: odd widths/heights are padded by one
    edge-replicated column/row (the output is then one pixel larger).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float = 25,
        audio: np.ndarray | str | os.PathLike | None = None,
        sample_rate: int = 16000,
        crf: int = 18,
        preset: str = "veryfast",
        audio_bitrate: str = "128k",
    ):
        self.path = check_output_path(path)
        if fps <= 0:
            raise InputError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.sample_rate = int(sample_rate)
        self.crf, self.preset, self.audio_bitrate = int(crf), str(preset), str(audio_bitrate)
        self.audio = self._check_audio(audio)
        self.num_frames = 0
        self.frame_size: tuple[int, int] | None = None  # (height, width) of the input frames
        self._process: subprocess.Popen | None = None  # the encoder, started by the first write
        self._encoded: Path | None = None  # its output (a temporary file)
        self._stderr = None
        self._temp_files: list[Path] = []
        self._finished = False

    # -- public -------------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> None:
        """Append one frame ``[H, W, 3]`` or a batch ``[n, H, W, 3]`` of RGB uint8 frames."""
        if self._finished:
            raise InputError(f"VideoWriter for {self.path} is already closed; open a new one")
        batch = np.asarray(frames)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise InputError(
                f"frames for {self.path} must be uint8 RGB [H, W, 3] or [n, H, W, 3], "
                f"got {batch.dtype} {tuple(batch.shape)}; convert with (x * 255).clip(0, 255).astype(np.uint8)"
            )
        if len(batch) == 0:
            return
        if self._process is None:
            self._start(batch.shape[1], batch.shape[2])
        if batch.shape[1:3] != self.frame_size:
            raise InputError(
                f"frame size {batch.shape[2]}x{batch.shape[1]} differs from the first frame's "
                f"{self.frame_size[1]}x{self.frame_size[0]} in {self.path}; resize frames to one size"
            )
        height, width = self.frame_size
        if height % 2 or width % 2:
            batch = np.pad(batch, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        try:
            self._process.stdin.write(np.ascontiguousarray(batch).data)
        except (BrokenPipeError, OSError) as err:
            raise InputError(f"encoding {self.path} failed ({self._ffmpeg_error() or err}); check disk space") from err
        self.num_frames += len(batch)

    def close(self) -> Path:
        """Finish encoding, mux the audio and move the file into place. Returns the output path."""
        if self._finished:
            return self.path
        try:
            if self.num_frames == 0:
                raise InputError(f"no frames were written to {self.path}; write at least one frame")
            encoded = self._finish_encoding()
            final = self._mux_audio(encoded) if self.audio is not None else encoded
            publish_file(final, self.path)
        except BaseException:
            self.abort()
            raise
        self._remove_temp_files()
        self._finished = True
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete every temporary file; the output path is left untouched."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._close_pipes()
        self._remove_temp_files()
        self._finished = True

    @property
    def duration(self) -> float:
        """Seconds of video written so far (``num_frames / fps``)."""
        return self.num_frames / self.fps

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):  # best effort if neither close() nor abort() ran
        if not getattr(self, "_finished", True):
            self.abort()

    # -- internals ----------------------------------------------------------------------------
    def _check_audio(self, audio):
        if audio is None:
            return None
        if isinstance(audio, (str, os.PathLike)):
            info = probe_media(audio)
            if not info.has_audio:
                raise InputError(f"{info.path} has no audio track; pass an audio file or audio=None")
            return info.path
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1 or samples.size == 0:
            raise InputError(
                f"audio for {self.path} must be a non-empty mono array [S] at {self.sample_rate} Hz, "
                f"got shape {tuple(samples.shape)}"
            )
        return samples

    def _temp_path(self, tag: str) -> Path:
        suffix = f".{tag}{self.path.suffix}"
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        self._temp_files.append(Path(name))
        return Path(name)

    def _start(self, height: int, width: int) -> None:
        self.frame_size = (height, width)
        if height % 2 or width % 2:
            log.warning("%s: %dx%d is odd; padding to even size for yuv420p", self.path, width, height)
        target = self._temp_path("video")
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: ffmpeg can never block on it
        cmd = [
            ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width + width % 2}x{height + height % 2}",
            "-r", _fraction(self.fps), "-i", "-",
            "-an", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            *self._container_flags(), str(target),
        ]  # fmt: skip
        self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self._encoded = target

    def _finish_encoding(self) -> Path:
        self._process.stdin.close()
        code = self._process.wait()
        if code != 0:
            raise InputError(f"encoding {self.path} failed ({self._ffmpeg_error() or f'ffmpeg exit {code}'})")
        self._close_pipes()
        return self._encoded

    def _mux_audio(self, encoded: Path) -> Path:
        """Mux the audio as AAC, padded with silence / trimmed to the video's duration."""
        source = self.audio
        if isinstance(source, np.ndarray):
            fd, name = tempfile.mkstemp(suffix=".wav", prefix="talkinghead_mux_")
            os.close(fd)
            source = Path(name)
            self._temp_files.append(source)
            save_wav(source, self.audio, self.sample_rate, subtype="FLOAT")
        muxed = self._temp_path("muxed")
        try:
            run_ffmpeg([
                "-v", "error", "-y", "-i", str(encoded), "-i", str(source),
                "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-c:a", "aac", "-b:a", self.audio_bitrate, "-af", "apad", "-t", f"{self.duration:.6f}",
                *self._container_flags(), str(muxed),
            ])  # fmt: skip
        except RuntimeError as err:
            raise InputError(f"muxing audio into {self.path} failed ({err}); check the audio input") from err
        return muxed

    def _container_flags(self) -> list[str]:
        return ["-movflags", "+faststart"] if self.path.suffix.lower() in {".mp4", ".m4v", ".mov"} else []

    def _ffmpeg_error(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return last_error_line(self._stderr.read().decode("utf-8", errors="replace"))

    def _close_pipes(self) -> None:
        if self._process is not None and self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.close()

    def _remove_temp_files(self) -> None:
        for temp in self._temp_files:
            temp.unlink(missing_ok=True)
        self._temp_files.clear()


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 25,
    audio: np.ndarray | str | os.PathLike | None = None,
    sample_rate: int = 16000,
    **options,
) -> Path:
    """Write ``frames`` (uint8 ``[N, H, W, 3]`` or an iterable of frames/batches) to ``path``.

    Same behaviour and options (``crf``, ``preset``, ``audio_bitrate``) as :class:`VideoWriter`.
    """
    with VideoWriter(path, fps=fps, audio=audio, sample_rate=sample_rate, **options) as writer:
        if isinstance(frames, np.ndarray):
            batches = [frames] if frames.ndim != 4 else (frames[i : i + 64] for i in range(0, len(frames), 64))
            for batch in batches:
                writer.write(batch)
        else:
            for frame in frames:
                writer.write(frame)
    return writer.path


# --------------------------------------------------------------------------------------------
def _fraction(value: float) -> str:
    """A frame rate as ffmpeg's exact rational string (``25``, ``30000/1001``)."""
    return str(Fraction(value).limit_denominator(100000))


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("===")]
    return lines[-1] if lines else type(err).__name__
