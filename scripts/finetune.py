"""Personal fine-tuning: (preprocess the video if needed, then) fine-tune Stage 1 and Stage 2.

    python scripts/finetune.py person=DIR [video=FILE] [stage=both|audio2coeff|refiner]
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.pipeline.finetune import finetune_from_config  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    return finetune_from_config(cfg)


if __name__ == "__main__":
    run_cli("finetune", main)
