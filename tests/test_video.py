"""Tests for talkinghead.video: probing, reading at 25 fps, atomic writing with audio, paste-back."""

from __future__ import annotations

import os
import subprocess

import cv2
import numpy as np
import pytest

from talkinghead.audio import save_wav
from talkinghead.audio.io import ffmpeg_exe
from talkinghead.errors import InputError
from talkinghead.video import (
    VideoWriter,
    invert_affine,
    iter_video,
    paste_back,
    probe_media,
    read_video,
    read_video_audio,
    write_video,
)

SR = 16000


def _pattern(num_frames: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Smooth moving colour pattern, uint8 [N, H, W, 3]."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    red = 127 + 90 * np.sin(x / 17 + t / 5)
    green = 127 + 90 * np.cos(y / 13 - t / 7)
    blue = 60 + 40 * np.sin((x + y) / 23) + t
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def _tone(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 330 * np.arange(int(round(seconds * SR))) / SR)).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_frames", [37, 50])
def test_write_read_round_trip_with_audio(tmp_path, num_frames):
    frames = _pattern(num_frames)
    audio = _tone(num_frames / 25)  # frames = round(audio_seconds * 25)
    out = write_video(tmp_path / "out.mp4", frames, fps=25, audio=audio)
    assert out == tmp_path / "out.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0o600

    info = probe_media(out, count_frames=True)
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.fps, info.num_frames) == (128, 96, 25.0, num_frames)
    assert info.video_codec == "h264" and info.audio_codec == "aac"

    decoded = read_video(out)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert _psnr(decoded, frames) > 30.0

    track = read_video_audio(out)
    assert track is not None
    assert abs(len(track) / SR - num_frames / 25) <= 0.04
    middle = slice(len(track) // 4, 3 * len(track) // 4)
    assert np.corrcoef(track[middle], audio[middle])[0, 1] > 0.95  # same tone, in sync


@pytest.mark.parametrize("audio_seconds", [0.9, 3.0])
def test_audio_is_padded_or_trimmed_to_video_length(tmp_path, audio_seconds):
    frames = _pattern(40)  # 1.6 s
    save_wav(tmp_path / "speech.wav", _tone(audio_seconds), SR)
    out = write_video(tmp_path / "out.mp4", frames, audio=tmp_path / "speech.wav")  # audio given as a path
    track = read_video_audio(out)
    assert abs(len(track) / SR - 1.6) <= 0.04
    if audio_seconds < 1.6:  # padded with silence
        assert np.abs(track[int(1.0 * SR) :]).max() < 0.01
        assert np.abs(track[: int(0.8 * SR)]).max() > 0.2


def test_writer_streams_single_frames_and_batches(tmp_path):
    frames = _pattern(20)
    with VideoWriter(tmp_path / "s.mp4", fps=25) as writer:
        writer.write(frames[0])
        writer.write(frames[1:12])
        for frame in frames[12:]:
            writer.write(frame)
        assert writer.num_frames == 20
    assert read_video_audio(tmp_path / "s.mp4") is None  # no audio track
    streamed = list(iter_video(tmp_path / "s.mp4"))
    assert len(streamed) == 20 and streamed[0].shape == (96, 128, 3)
    assert _psnr(np.stack(streamed), frames) > 30.0
    assert read_video(tmp_path / "s.mp4", max_frames=7).shape == (7, 96, 128, 3)


def test_odd_size_is_padded_to_even(tmp_path):
    frames = _pattern(5, height=31, width=45)
    decoded = read_video(write_video(tmp_path / "odd.mp4", frames))
    assert decoded.shape == (5, 32, 46, 3)
    assert _psnr(decoded[:, :31, :45], frames) > 30.0


def test_30fps_input_is_resampled_to_25(tmp_path):
    levels = (np.arange(60) * 4).astype(np.uint8)  # frame i is uniformly grey 4 * i
    frames = np.broadcast_to(levels[:, None, None, None], (60, 32, 32, 3)).copy()
    path = write_video(tmp_path / "thirty.mp4", frames, fps=30)
    info = probe_media(path)
    assert info.fps == 30.0 and info.num_frames == 60 and abs(info.duration - 2.0) < 0.02
    assert read_video(path, fps=None).shape[0] == 60
    resampled = read_video(path, fps=25)
    assert resampled.shape[0] == 50
    source_index = resampled.reshape(50, -1).mean(axis=1) / 4  # which 30 fps frame each one shows
    expected = np.arange(50) * 30 / 25
    assert np.abs(source_index - expected).max() <= 1.1
    assert np.all(np.diff(source_index) > 0)


def test_rotation_metadata_is_applied(tmp_path):
    write_video(tmp_path / "landscape.mp4", _pattern(5, height=32, width=64))
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-display_rotation", "90", "-i",
                    str(tmp_path / "landscape.mp4"), "-c", "copy", str(tmp_path / "rotated.mp4")], check=True)
    info = probe_media(tmp_path / "rotated.mp4")
    assert (info.width, info.height) == (32, 64)
    assert read_video(tmp_path / "rotated.mp4").shape == (5, 64, 32, 3)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def _message(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    for reader in (read_video, probe_media, read_video_audio):
        with pytest.raises(InputError) as err:
            reader(tmp_path / "missing.mp4")
        assert "missing.mp4" in _message(err) and "not found" in str(err.value)


def test_text_file_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(InputError) as err:
        read_video(path)
    assert "notes.mp4" in _message(err) and "not a readable" in str(err.value)


def test_audio_only_file_has_no_video(tmp_path):
    save_wav(tmp_path / "a.wav", _tone(0.5), SR)
    info = probe_media(tmp_path / "a.wav")
    assert info.has_audio and not info.has_video and info.sample_rate == SR and info.audio_channels == 1
    with pytest.raises(InputError, match="no video stream"):
        read_video(tmp_path / "a.wav")


def test_output_directory_missing(tmp_path):
    with pytest.raises(InputError) as err:
        VideoWriter(tmp_path / "no_such_dir" / "out.mp4")
    assert "does not exist" in _message(err) and "no_such_dir" in str(err.value)
    with pytest.raises(InputError, match="must end in"):
        VideoWriter(tmp_path / "out.avi")


def test_unwritable_directory_is_reported_before_work(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # A read-only folder, simulated: chmod does not stop root (CI runs as root), so a chmod-based
    # test would always skip there.
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(InputError) as err:
        VideoWriter(tmp_path / "out.mp4")
    assert "not writable" in _message(err) and str(tmp_path) in str(err.value)


def test_failure_midway_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "out.mp4", audio=_tone(2.0)) as writer:
            writer.write(_pattern(10))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "keep.mp4").write_bytes(b"old")  # an existing output is not clobbered either
    with pytest.raises(InputError, match="uint8"):
        with VideoWriter(tmp_path / "keep.mp4") as writer:
            writer.write(_pattern(4))
            writer.write(np.zeros((96, 128, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]
    assert (tmp_path / "keep.mp4").read_bytes() == b"old"


def test_bad_frames_and_empty_writer(tmp_path):
    with pytest.raises(InputError, match="differs from the first frame"):
        with VideoWriter(tmp_path / "out.mp4") as writer:
            writer.write(_pattern(2))
            writer.write(_pattern(2, height=64))
    with pytest.raises(InputError, match="no frames"):
        with VideoWriter(tmp_path / "out.mp4"):
            pass
    with pytest.raises(InputError, match="mono array"):
        VideoWriter(tmp_path / "out.mp4", audio=np.zeros((100, 2), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_video_without_audio_returns_none(tmp_path):
    path = tmp_path / "mute.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=blue:s=32x32:r=25:d=0.4",
                    "-c:v", "libx264", str(path)], check=True)
    assert read_video_audio(path) is None
    assert read_video(path).shape == (10, 32, 32, 3)


# --------------------------------------------------------------------------------------------
# Paste-back
# --------------------------------------------------------------------------------------------
def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


@pytest.mark.parametrize("seamless", [True, False])
def test_paste_back_puts_square_where_transform_says(seamless):
    grey = (120, 120, 120)
    frame = np.full((200, 240, 3), grey, np.uint8)
    crop = np.full((64, 64, 3), grey, np.uint8)
    crop[22:42, 22:42] = (230, 30, 30)  # red square, centre (31.5, 31.5)
    crop_to_frame = _similarity(30, 1.5, 140, 40)

    out = paste_back(frame, crop, crop_to_frame, seamless=seamless)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, frame) and np.all(frame == 120)

    centre = crop_to_frame @ np.array([31.5, 31.5, 1.0])
    assert tuple(out[int(centre[1]), int(centre[0])]) == pytest.approx((230, 30, 30), abs=8)
    # The red region is the warped square.
    square = np.zeros((64, 64), np.uint8)
    square[22:42, 22:42] = 1
    expected = cv2.warpAffine(square, crop_to_frame, (240, 200), flags=cv2.INTER_NEAREST).astype(bool)
    red = (out[..., 0] > 175) & (out[..., 1] < 75)
    iou = (red & expected).sum() / (red | expected).sum()
    assert iou > 0.9
    # Outside the pasted crop the frame is untouched.
    footprint = cv2.warpAffine(np.ones((64, 64), np.uint8), crop_to_frame, (240, 200)).astype(bool)
    assert np.all(out[~footprint] == 120)


def test_crop_then_paste_restores_frame():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (180, 220, 3), dtype=np.uint8), (0, 0), 3)
    frame_to_crop = invert_affine(_similarity(-12, 1.3, 60, 30))
    crop = cv2.warpAffine(frame, frame_to_crop, (96, 96), flags=cv2.INTER_LINEAR)
    for seamless in (True, False):
        restored = paste_back(frame, crop, invert_affine(frame_to_crop), seamless=seamless)
        assert _psnr(restored, frame) > 35.0


def test_paste_back_partly_outside_and_bad_input():
    frame = np.full((100, 100, 3), 50, np.uint8)
    crop = np.full((40, 40, 3), 50, np.uint8)
    crop[15:35, 5:25] = 200  # bright patch at crop x 5..24, y 15..34
    half_out = _similarity(0, 1.0, 80, -10)  # crop covers frame x 80..119, y -10..29
    for seamless in (True, False):
        out = paste_back(frame, crop, half_out, seamless=seamless)
        assert out[15, 95].mean() > 150  # patch centre lands at frame (x 95, y 15)
        assert np.all(out[40:] == 50) and np.all(out[:, :75] == 50)
    far_away = _similarity(0, 1.0, 500, 500)
    np.testing.assert_array_equal(paste_back(frame, crop, far_away), frame)
    with pytest.raises(InputError, match="uint8 image"):
        paste_back(frame.astype(np.float32), crop, half_out)
    with pytest.raises(InputError, match="mask"):
        paste_back(frame, crop, half_out, mask=np.ones((10, 10), bool))
    with pytest.raises(InputError, match="affine"):
        paste_back(frame, crop, np.eye(3))


@pytest.mark.parametrize("seamless", [True, False])
def test_paste_back_respects_mask(seamless):
    frame = np.full((120, 120, 3), 120, np.uint8)
    crop = np.zeros((60, 60, 3), np.uint8)  # black background that must not be pasted
    crop[10:50, 10:50] = (40, 200, 40)
    crop[25:35, 25:35] = (200, 40, 40)
    mask = np.zeros((60, 60), bool)
    mask[15:45, 15:45] = True
    out = paste_back(frame, crop, _similarity(0, 1.0, 30, 30), mask=mask, seamless=seamless)
    assert out[60, 60, 0] > out[60, 60, 1] + 60  # the red centre arrived at (30 + 29.5) px
    outside_mask = np.ones((120, 120), bool)
    outside_mask[44:76, 44:76] = False  # mask [15, 45) shifted by 30, plus a pixel of slack
    assert np.all(out[outside_mask] == 120)  # black crop background and green rim not pasted
