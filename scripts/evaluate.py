"""Evaluate a fine-tuned person on its held-out frames (HS, LMD, lip sync, PSNR/SSIM).

    python scripts/evaluate.py person=DIR
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.pipeline.evaluate import evaluate_from_config

    return evaluate_from_config(cfg)


if __name__ == "__main__":
    run_cli("evaluate", main)
