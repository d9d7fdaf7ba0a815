"""Render a person saying any audio, as an mp4 with sound.

    python scripts/infer.py person=DIR audio=FILE out=FILE.mp4 [pose.mode=matched|predicted|still] [paste_back=true]
    python scripts/infer.py manifest=FILE.csv   (columns: person,audio,out; models loaded once)
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.pipeline.infer import infer_from_config  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    return infer_from_config(cfg)


if __name__ == "__main__":
    run_cli("infer", main)
