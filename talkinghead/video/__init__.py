"""Video: reading at 25 fps, probing, writing H.264 + AAC atomically, paste-back of face crops."""

from talkinghead.video.io import (
    MediaInfo,
    VideoWriter,
    check_output_path,
    iter_video,
    probe_media,
    read_video,
    read_video_audio,
    write_video,
)
from talkinghead.video.paste import invert_affine, paste_back

__all__ = [
    "MediaInfo",
    "VideoWriter",
    "check_output_path",
    "invert_affine",
    "iter_video",
    "paste_back",
    "probe_media",
    "read_video",
    "read_video_audio",
    "write_video",
]
