"""Data: the person-clip format (clip.py), the datasets of both stages, the synthetic world."""
