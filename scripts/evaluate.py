"""Evaluate a fine-tuned person on its held-out frames (HS, LMD, lip sync, PSNR/SSIM).

    python scripts/evaluate.py person=DIR
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.pipeline.evaluate import evaluate_from_config  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    return evaluate_from_config(cfg)


if __name__ == "__main__":
    run_cli("evaluate", main)
