"""Inference: audio + person clip -> video, and the head-pose modes (:mod:`talkinghead.pipeline.pose`)."""
