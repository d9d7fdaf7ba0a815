"""Preprocessing a person's video into a person clip: landmarks, alignment, 3DMM fitting."""
