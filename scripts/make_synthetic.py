"""Build the synthetic talking-head corpus (the built-in default world).

    python scripts/make_synthetic.py out=data/synthetic persons=20 frames=400 seed=0 [preview=true] [workers=0]

Writes one person clip per person (talkinghead/data/clip.py format) and ``OUT/corpus.json``
with each person's split (the last ``heldout`` persons are held out); ``preview=true`` also
writes the contact sheet ``OUT/preview.png`` (plain 3DMM renders vs real frames).
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.data.synthetic.world import main as make_synthetic  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    return make_synthetic(cfg)


if __name__ == "__main__":
    run_cli("make_synthetic", main)
