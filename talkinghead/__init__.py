"""talkinghead: audio-driven talking-face video with learning-based personalized head pose."""

__version__ = "0.1.0"
