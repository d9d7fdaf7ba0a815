"""Audio: loading/resampling to 16 kHz mono, MFCC, phone posteriors, and per-video-frame windows of them."""

from talkinghead.audio.features import (
    AUDIO_FEATURES,
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
from talkinghead.audio.phones import phone_log_posteriors

__all__ = [
    "AUDIO_FEATURES",
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
    "phone_log_posteriors",
    "save_wav",
]
