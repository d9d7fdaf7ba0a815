"""The real-person benchmark (issue "Real people"): the paper's protocol on each real video.

    python bench/real.py [videos=../shared/real] [general=checkpoints/general] [out=runs/real]
                         [foreign=../shared/real/03Fsi1201.wav] [fresh=true] [cv=true] [any finetune.py override]

For every video: preprocess (cached in OUT/<name>), fine-tune both stages from GENERAL, evaluate
on the held-out frames with the clip's own audio, render the held-out audio and the foreign
speech (also pasted back into the full frame) to mp4, and a contact sheet OUT/<name>_sheet.png
(real held-out frames, above them the generated ones, below frames of the pasted-back foreign
render). Then each person's Stage 1 is driven by the other videos' speech and compared with their
real mouths (foreign speech with a ground truth). With cv=true (the default) the Stage-1
protocol is repeated with each block of every clip held out in turn (4 folds; models in
OUT/<name>/cv), for a less noisy figure than the one held-out block. Writes OUT/real.md (per
video and the mean) and OUT/real.json, and prints the tables.
Other key=value arguments go to the fine-tuning config (configs/finetune.yaml), e.g.
``audio2coeff.finetune.max_steps=100``. See talkinghead/pipeline/benchmark.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from talkinghead.cli import run_cli

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real"
KEYS = {"videos": str(REAL), "general": "checkpoints/general", "out": "runs/real",
        "foreign": str(REAL / "03Fsi1201.wav"), "fresh": "true", "cv": "true"}


def split_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(this benchmark's keys with their defaults filled in, the rest for the fine-tuning config)."""
    values, rest = dict(KEYS), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in values:
            values[key] = value
        else:
            rest.append(arg)
    return values, rest


def main(cfg, values: dict[str, str]) -> None:
    from talkinghead.pipeline.benchmark import (cross_speaker_sync, cross_validated_stage1, find_videos, format_tables,
                                                run_video, write_report)  # local: --help, --cfg and bad keys answer in 0.4 s, not 2.2 s

    out, general = Path(values["out"]), Path(values["general"])
    foreign = Path(values["foreign"]) if values["foreign"].lower() not in ("", "null", "none") else None
    if foreign is not None and not foreign.is_file():
        print(f"note: foreign={foreign} not found; rendering only the held-out audio", flush=True)
        foreign = None
    fresh = values["fresh"].lower() in ("1", "true", "yes")
    rows = []
    for video in find_videos(values["videos"]):
        print(f"== {video.name}", flush=True)
        rows.append(run_video(video, out, general, cfg, foreign=foreign, fresh=fresh, device=str(cfg.device)))
        write_report(rows, out)  # a partial report survives a later failure
    cross_speaker_sync(rows, out, general, device=str(cfg.device))
    write_report(rows, out)
    if values["cv"].lower() in ("1", "true", "yes"):
        print("== cross-validating Stage 1", flush=True)
        cross_validated_stage1(rows, out, general, cfg, fresh=fresh, device=str(cfg.device))
        write_report(rows, out)
    print(format_tables(rows))
    print(f"wrote {out / 'real.md'}, {out / 'real.json'} and the videos and contact sheets in {out}")


if __name__ == "__main__":
    values, rest = split_args(sys.argv[1:])
    run_cli("finetune", lambda cfg: main(cfg, values), argv=[*rest, "person=unused"])
