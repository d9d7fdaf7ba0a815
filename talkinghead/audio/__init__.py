"""Audio: loading/resampling to 16 kHz mono, MFCC, and per-video-frame MFCC windows."""

from talkinghead.audio.features import (
    FPS,
    NUM_FEATURES,
    PAD_SECONDS,
    SAMPLE_RATE,
    WINDOW_ROWS,
    frame_windows,
    iter_frame_windows,
    mel_filterbank,
    mfcc,
    num_mfcc_rows,
    num_video_frames,
)
from talkinghead.audio.io import check_not_silent, load_audio, peak_dbfs, save_wav

__all__ = [
    "FPS",
    "NUM_FEATURES",
    "PAD_SECONDS",
    "SAMPLE_RATE",
    "WINDOW_ROWS",
    "check_not_silent",
    "frame_windows",
    "iter_frame_windows",
    "load_audio",
    "mel_filterbank",
    "mfcc",
    "num_mfcc_rows",
    "num_video_frames",
    "peak_dbfs",
    "save_wav",
]
