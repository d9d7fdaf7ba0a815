"""Preprocess a person's video into a person clip.

    python scripts/preprocess.py video=FILE out=DIR [detector=mediapipe|face_alignment|ground_truth]
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.preprocess.pipeline import preprocess_from_config  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    return preprocess_from_config(cfg)


if __name__ == "__main__":
    run_cli("preprocess", main)
