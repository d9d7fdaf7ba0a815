"""The README's main job: synthetic corpus -> general models -> fine-tune a held-out person -> talking mp4 + metrics.

    python scripts/demo.py
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.pipeline.demo import demo_from_config  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    return demo_from_config(cfg)


if __name__ == "__main__":
    run_cli("demo", main)
