"""The README's main job, on a fresh machine with no downloads:

    python scripts/demo.py                 # [out=outputs/demo] [debug=tiny]

1. **corpus**   -- build the synthetic corpus at ``data.root`` (``data.persons`` persons of
   ``data.frames`` frames, the last ``data.heldout`` held out), or reuse it when it exists;
2. **general**  -- train small general models of both stages on the training persons
   (``general/audio2coeff``, ``general/refiner``);
3. **finetune** -- fine-tune both stages on the first held-out person's frames 0-299
   (:func:`talkinghead.pipeline.finetune.finetune_person`; ``PERSON/finetuned``);
4. **render**   -- that person saying held-out audio: by default the audio of their own frames
   300-399, which fine-tuning never saw (or ``audio=FILE``), to ``OUT/<person>_heldout.mp4``;
5. **evaluate** -- the metrics on the held-out frames (:mod:`talkinghead.pipeline.evaluate`),
   printed and written to ``OUT/metrics.json``; a contact sheet ``OUT/contact_sheet.png`` shows
   real held-out frames above the generated frames of the same time steps.

Every step reuses what a previous run left (corpus, ``done.json`` of the trained stages), so a
rerun goes straight to rendering. The sizes and schedules are the demo's own
(``configs/demo.yaml``): small enough for a 2-core CPU, large enough for a face that talks.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from talkinghead.audio import load_audio, save_wav
from talkinghead.cli import cfg_get
from talkinghead.data.clip import list_clips, read_clip
from talkinghead.data.synthetic.world import make_corpus
from talkinghead.errors import ConfigError, InputError
from talkinghead.pipeline.evaluate import evaluate_person, format_person_metrics, write_json
from talkinghead.pipeline.finetune import finetune_person
from talkinghead.pipeline.infer import InferenceOptions, generate_video, load_person
from talkinghead.render import get_renderer
from talkinghead.stagedir import is_done
from talkinghead.train.audio2coeff import train_audio2coeff
from talkinghead.train.refiner import train_refiner
from talkinghead.video import probe_media, read_video


@dataclass
class DemoResult:
    """What the demo produced."""

    video: Path
    contact_sheet: Path
    metrics: dict
    video_seconds: float
    audio_seconds: float
    input_audio_seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)


def ensure_corpus(root: Path, persons: int, heldout: int, frames: int, seed: int, workers: int,
                  progress: bool) -> Path:
    """The synthetic corpus at ``root``: reused if its ``corpus.json`` matches the requested
    size, built otherwise (a mismatching corpus is an error, never silently overwritten)."""
    index = root / "corpus.json"
    if index.is_file():
        info = json.loads(index.read_text())
        have = (len(info.get("persons", [])), int(info.get("frames", -1)),
                sum(p.get("split") == "heldout" for p in info.get("persons", [])), int(info.get("seed", -1)))
        if have != (persons, frames, heldout, seed):
            raise ConfigError(
                f"the corpus at {root} has persons={have[0]} frames={have[1]} heldout={have[2]} seed={have[3]}, "
                f"the demo asks for {persons}/{frames}/{heldout}/{seed}; delete {root} or set data.root to another folder"
            )
        return root
    return make_corpus(root, persons=persons, frames=frames, seed=seed, heldout=heldout, workers=workers,
                       progress=progress)


def train_general(cfg, root: Path, general: Path) -> dict[str, Path]:
    """General models of both stages over the corpus's training persons (skipped when done)."""
    train = list_clips(root, "train")
    out = {}
    for stage in ("audio2coeff", "refiner"):
        stage_dir = general / stage
        if not is_done(stage_dir):
            if stage == "audio2coeff":
                train_audio2coeff(train, stage_dir, cfg, mode="general")
            else:
                train_refiner(train, stage_dir, cfg, mode="general")
        out[stage] = stage_dir
    return out


def contact_sheet(video: Path, clip, frames: slice, path: Path, columns: int = 8, tile: int = 128) -> Path:
    """``path`` (PNG): the real fixed crops of ``frames`` (top row) above the frames of
    ``video`` at the same time steps (frame ``i`` of the video = clip frame ``frames.start + i``)."""
    generated = read_video(video)  # [N, S, S, 3]
    count = min(len(generated), frames.stop - frames.start)
    picks = np.linspace(0, count - 1, min(columns, count)).round().astype(int)

    def row(images, label: str) -> np.ndarray:
        tiles = []
        for image, t in zip(images, picks):
            tile_img = cv2.resize(np.ascontiguousarray(image), (tile, tile), interpolation=cv2.INTER_AREA)
            cv2.putText(tile_img, f"t={frames.start + t}", (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile_img)
        strip = np.concatenate(tiles, axis=1)
        cv2.putText(strip, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        return strip

    real = np.asarray(clip.fixed[frames.start + picks])
    sheet = np.concatenate([row(real, "real (held out)"), row(generated[picks], "generated")], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet[..., ::-1]):
        raise InputError(f"cannot write {path}; choose a writable out=")
    return path


def stream_durations(video: Path) -> tuple[float, float]:
    """(video stream seconds = frames / 25, audio stream seconds = decoded samples / 16 kHz)."""
    info = probe_media(video, count_frames=True)
    return info.num_frames / 25.0, len(load_audio(video, 16000)) / 16000.0


@contextmanager
def _step(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Announce a demo step and record its wall time in ``timings[name]``."""
    print(f"[demo] {name} ...", flush=True)
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started
    print(f"[demo] {name} done in {timings[name]:.0f} s", flush=True)


def run_demo(cfg) -> DemoResult:
    """Run the five steps (see the module docstring) with the composed ``demo`` config."""
    out = Path(str(cfg.out)).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(str(cfg_get(cfg, "data.root", out / "corpus"))).expanduser()
    general = Path(str(cfg_get(cfg, "general", out / "general"))).expanduser()
    progress = bool(cfg_get(cfg, "progress", True))
    device = cfg_get(cfg, "device", "auto")
    renderer = get_renderer(cfg_get(cfg, "renderer", "torch"))
    options = InferenceOptions.from_config(cfg)
    timings: dict[str, float] = {}

    with _step("corpus", timings):
        ensure_corpus(root, int(cfg.data.persons), int(cfg.data.heldout), int(cfg.data.frames),
                      int(cfg_get(cfg, "seed", 0)), int(cfg_get(cfg, "workers", 0)), progress)
    with _step("general", timings):
        train_general(cfg, root, general)
    with _step("finetune", timings):
        name = cfg_get(cfg, "person")
        person = root / name if name else (list_clips(root, "heldout") if int(cfg.data.heldout) > 0 else list_clips(root))[0]
        finetune_person(person, cfg, general=general, progress=progress)
    with _step("render", timings):
        clip = read_clip(person)
        test = clip.test_slice
        audio_path = cfg_get(cfg, "audio")
        if audio_path is None:  # the person's own held-out speech, never seen in fine-tuning
            audio_path = save_wav(out / f"{clip.name}_heldout_audio.wav", clip.audio_for_frames(test),
                                  clip.meta.sample_rate)
        video = out / f"{clip.name}_heldout.mp4"
        result = generate_video(load_person(person, device=device, renderer=renderer), audio_path, video, options)
    with _step("evaluate", timings):
        metrics = evaluate_person(person, device=device, renderer=renderer, controls=options.pose)
        write_json(out / "metrics.json", {**metrics, "video": str(video), "step_seconds": timings})
        sheet = contact_sheet(video, clip, slice(test.start, test.start + result.num_frames), out / "contact_sheet.png")
        video_s, audio_s = stream_durations(video)

    print()
    print(format_person_metrics(metrics))
    print(f"\n[demo] corpus {root}, general models {general}, fine-tuned models {person / 'finetuned'}")
    print(f"[demo] video: {video}  (video stream {video_s:.3f} s, audio stream {audio_s:.3f} s, "
          f"input audio {result.audio_seconds:.3f} s; {result.frames_per_second:.1f} frames/s)")
    print(f"[demo] contact sheet: {sheet}  (top: real held-out frames, bottom: generated)")
    print(f"[demo] metrics: {out / 'metrics.json'}; total {sum(timings.values()):.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    return DemoResult(video, sheet, metrics, video_s, audio_s, result.audio_seconds, timings)


def demo_from_config(cfg) -> DemoResult:
    """``scripts/demo.py``."""
    return run_demo(cfg)
