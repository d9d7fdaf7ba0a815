"""General training of one stage over a corpus of person clips.

    python scripts/train.py stage=audio2coeff|refiner data.root=DIR out=DIR [experiment=paper] [debug=tiny]
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.train.stages import train_from_config  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    return train_from_config(cfg)


if __name__ == "__main__":
    run_cli("train", main)
