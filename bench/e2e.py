"""End-to-end inference benchmark: frames/s with a per-stage breakdown, and peak memory.

    python bench/e2e.py                                  # 10 s of audio at 256 x 256, paper-size refiner
    python bench/e2e.py --seconds 10 600 --size 64       # peak RSS for 10 s vs 10 min of audio
    python bench/e2e.py --size 256 --threads 2 --json out.json

Each measurement runs :func:`talkinghead.pipeline.infer.generate_video` -- the code path of
``scripts/infer.py``: audio loading, Stage 1 (MFCC + LSTM), pose matching, render + blend,
Stage 2 (streamed, memory identity), H.264/AAC encoding -- in a fresh child process, so
that its peak resident memory (``ru_maxrss``) belongs to that run alone. The models have random
weights (speed and memory do not depend on them): Stage 1 is the CPU preset
(``configs/audio2coeff/default.yaml``), Stage 2 the paper's U-Net (ngf 64, 8 down/up levels at
256) with the paper's memory (30,000 slots, key 512, top-k 256), ``--ngf``/``--slots`` change
them. The person is a synthetic person's coefficients over 300 reference frames; the audio is
synthetic speech, tiled to the requested length.

Stages (seconds, as :class:`~talkinghead.pipeline.infer.StageTimer` records them): ``audio``
(load + checks), ``stage1`` (MFCC windows + LSTM), ``pose`` (pose mode), ``render``
(coefficients, rasterisation, hole filling, blending, background crops), ``stage2`` (the
refiner incl. memory reads), ``encode`` (uint8 conversion, piping frames to ffmpeg, muxing).
"Renderer + audio + I/O" = audio + pose + render + encode.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from talkinghead.audio import save_wav
from talkinghead.cli import compose_config
from talkinghead.data.clip import ClipMeta, read_clip, write_clip
from talkinghead.data.stage1_dataset import reference_expression
from talkinghead.data.synthetic.people import sample_people
from talkinghead.data.synthetic.speech import Voice, make_speech
from talkinghead.data.synthetic.world import DEFAULT_FACE_MODEL, person_signals
from talkinghead.devices import resolve_precision
from talkinghead.face.coeffs import split_coeffs
from talkinghead.face.factory import make_face_model
from talkinghead.models.audio2coeff import ExpressionPoseLSTM
from talkinghead.models.features import make_identity_feature
from talkinghead.models.refiner import MemoryAugmentedGenerator
from talkinghead.pipeline.infer import InferenceOptions, PersonModels, generate_video
from talkinghead.pipeline.stage2 import Refiner
from talkinghead.render import get_renderer

FPS, SAMPLE_RATE, REF_FRAMES = 25, 16000, 300
OVERHEAD_STAGES = ("audio", "pose", "render", "encode")


# ----------------------------------------------------------------------------- fixtures
def make_person_clip(root: Path, size: int = 224) -> Path:
    """A person clip with a synthetic person's coefficients and speech (300 frames); the frames
    are plain gradients (their content does not matter for speed)."""
    person = sample_people(1, seed=0)[0]
    signals = person_signals(person, REF_FRAMES)
    ramp = np.linspace(40, 200, size, dtype=np.float32)
    frame = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 90.0)], -1)
    frames = np.broadcast_to(frame.astype(np.uint8), (REF_FRAMES, size, size, 3))
    eye = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    meta = ClipMeta(name="bench_person", num_frames=REF_FRAMES, crop_size=size, source="synthetic",
                    train_frames=(0, REF_FRAMES), test_frames=(REF_FRAMES, REF_FRAMES), face_model=dict(DEFAULT_FACE_MODEL))
    return write_clip(root / "person", meta, signals.coeffs, np.zeros((REF_FRAMES, 68, 2), np.float32), frames, frames,
                      eye, np.tile(eye, (REF_FRAMES, 1, 1)), signals.audio)


def make_audio(path: Path, seconds: float) -> Path:
    """``seconds`` of synthetic speech (20 s synthesised, tiled) as a 16 kHz WAV."""
    rng = np.random.default_rng(1)
    speech, _ = make_speech(min(20.0, seconds), Voice.sample(rng), rng)
    samples = int(round(seconds * SAMPLE_RATE))
    return save_wav(path, np.resize(speech, samples), SAMPLE_RATE)


def build_person_models(clip_dir: Path, size: int, ngf: int, slots: int, key_dim: int, top_k: int, renderer: str,
                        device="cpu", overrides=(), speed_ensemble=None):
    """:class:`PersonModels` with random-weight models (no training, no files) on ``device``;
    ``overrides`` are Hydra overrides of ``configs/infer.yaml`` choosing Stage 1's size (default:
    the CPU preset; ``["audio2coeff=paper"]`` the paper's); ``speed_ensemble``: Stage 1's rates
    (default: the preset's ``audio2coeff.train.speed_ensemble``)."""
    torch.manual_seed(0)
    cfg = compose_config("infer", ["person=p", "audio=a.wav", "out=o.mp4", *overrides])
    stage1 = ExpressionPoseLSTM(**dict(cfg.audio2coeff.model)).eval()
    stage1.cmvn = bool(cfg.audio2coeff.train.cmvn)  # what a trained model's model.json gives it
    stage1.speed_ensemble = tuple(cfg.audio2coeff.train.speed_ensemble if speed_ensemble is None else speed_ensemble)
    generator = MemoryAugmentedGenerator(image_size=size, ngf=ngf, key_dim=key_dim, memory_slots=slots, top_k=top_k).eval()
    with torch.no_grad():  # a partly filled memory, as after training on a few hundred identities
        filled = min(300, slots)
        generator.memory.keys[:filled] = F.normalize(torch.randn(filled, key_dim), dim=1)
        generator.memory.values[:filled] = F.normalize(torch.randn(filled, 512), dim=1)
        generator.memory.filled[:filled] = True
    refiner = Refiner(generator=generator, identity_feature=make_identity_feature(None),
                      image_size=size, render_size=size)
    clip = read_clip(clip_dir, load_audio=False)
    parts = split_coeffs(np.asarray(clip.coeffs[clip.train_slice]))
    device = torch.device(device)
    stage1.to(device)
    generator.to(device)
    refiner.identity_feature.to(device)
    return PersonModels(
        clip=clip, stage1=stage1, refiner=refiner, face_model=make_face_model(clip.meta.face_model).to(device),
        renderer=get_renderer(renderer), device=device, weights=clip_dir,
        base_coeffs=torch.as_tensor(np.asarray(clip.coeffs[0]), dtype=torch.float32, device=device),
        ref_frames=clip.train_slice, ref_pose=np.concatenate([parts.angles, parts.translation], 1).astype(np.float32),
        expression_reference=reference_expression(clip),
    )


# ----------------------------------------------------------------------------- one run (child)
def run_child(args) -> dict:
    """One inference run in this process; returns its figures (printed as JSON)."""
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    person = build_person_models(Path(args.clip), args.size, args.ngf, args.slots, args.key_dim, args.top_k, args.renderer,
                                 speed_ensemble=args.speed_ensemble)
    setup = time.perf_counter() - started
    options = InferenceOptions(chunk_frames=args.chunk_frames, batch_size=args.batch_size, precision=args.precision,
                               synthesis=args.synthesis)
    result = generate_video(person, args.audio, args.out, options)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # ffmpeg: H.264 encoder + AAC mux
    return {
        "audio_seconds": result.audio_seconds,
        "frames": result.num_frames,
        "size": args.size,
        "synthesis": args.synthesis,
        "ngf": args.ngf,
        "threads": args.threads,
        "precision": args.precision,
        "resolved_precision": resolve_precision(args.precision, torch.device("cpu")),
        "setup_seconds": setup,
        "timings": result.timings,
        "cpu_timings": {**result.cpu_timings, "ffmpeg": children.ru_utime + children.ru_stime},
        "seconds": result.seconds,
        "frames_per_second": result.frames_per_second,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,  # Linux: kilobytes
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def launch(args, clip: Path, audio: Path, out: Path) -> dict:
    """Run one measurement in a child process and parse its JSON line."""
    cmd = [sys.executable, __file__, "--child", "--clip", str(clip), "--audio", str(audio), "--out", str(out),
           "--size", str(args.size), "--ngf", str(args.ngf), "--slots", str(args.slots), "--key-dim", str(args.key_dim),
           "--top-k", str(args.top_k), "--threads", str(args.threads), "--chunk-frames", str(args.chunk_frames),
           "--batch-size", str(args.batch_size), "--renderer", args.renderer, "--precision", args.precision,
           "--synthesis", args.synthesis] + (["--speed-ensemble", *map(str, args.speed_ensemble)]
                                             if args.speed_ensemble else [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's package
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _breakdown(results: list[dict], key: str, title: str, stages: tuple[str, ...]) -> list[str]:
    lines = [f"{title}", "",
             "| audio | frames | size | frames/s | " + " | ".join(f"{s} s (%)" for s in stages)
             + " | renderer+audio+I/O % | peak RSS MB |",
             "| --- " * (7 + len(stages)) + "|"]
    for r in results:
        times = r[key]
        total = max(sum(times.get(s, 0.0) for s in stages), 1e-9)
        overhead = sum(times.get(s, 0.0) for s in (*OVERHEAD_STAGES, "ffmpeg")) / total
        cells = [f"{times.get(s, 0.0):.1f} ({100 * times.get(s, 0.0) / total:.0f})" for s in stages]
        lines.append(f"| {r['audio_seconds']:.0f} s | {r['frames']} | {r['size']} | "
                     f"{r['frames'] / total:.2f} | " + " | ".join(cells) + f" | {100 * overhead:.0f} | {r['peak_rss_mb']:.0f} |")
    return lines + [""]


def report(results: list[dict]) -> str:
    """Markdown: per-stage wall-clock and CPU breakdowns and the peak memory of every run.

    The CPU table adds the ffmpeg child processes (encoder + muxer, which run beside Python);
    its frames/s is frames per CPU-second of one process (threads summed), the figure that does
    not depend on what else runs on the machine."""
    stages = ("audio", "stage1", "pose", "render", "stage2", "encode")
    lines = [f"synthesis: {results[0].get('synthesis', 'refiner')}; Stage-2 precision: {results[0].get('precision', 'fp32')} (resolved: {results[0].get('resolved_precision', '?')}), "
             f"{results[0]['threads']} threads", ""]
    lines += _breakdown(results, "timings", "Wall clock (this machine, as loaded as it was):", stages)
    lines += _breakdown(results, "cpu_timings", "CPU time (this process + ffmpeg children):", (*stages, "ffmpeg"))
    if len(results) > 1:
        base = results[0]["peak_rss_mb"]
        lines += [f"peak RSS {r['audio_seconds']:.0f} s / {results[0]['audio_seconds']:.0f} s of audio: "
                  f"{r['peak_rss_mb']:.0f} / {base:.0f} MB = {r['peak_rss_mb'] / base:.3f}x" for r in results[1:]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0], help="audio lengths to run (s)")
    parser.add_argument("--size", type=int, default=256, help="refiner image size (256 = paper)")
    parser.add_argument("--ngf", type=int, default=64, help="U-Net base width (64 = paper)")
    parser.add_argument("--slots", type=int, default=30000, help="memory slots (30000 = paper)")
    parser.add_argument("--key-dim", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the CPU target)")
    parser.add_argument("--chunk-frames", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4, help="Stage-2 batch")
    parser.add_argument("--renderer", default="torch")
    parser.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"),
                        help="Stage-2 arithmetic (auto: bf16 where the hardware runs it natively)")
    parser.add_argument("--synthesis", default="refiner", choices=("refiner", "mouth"),
                        help="refiner: the paper's Stage 2 (default here); mouth: infer's default in matched pose "
                             "mode, the lower face warped from the person's frames at --size px")
    parser.add_argument("--speed-ensemble", type=float, nargs="+", default=None,
                        help="Stage 1's speaking rates (default: the CPU preset's; 1.0: one pass)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return

    with tempfile.TemporaryDirectory(prefix="talkinghead_bench_") as tmp:
        tmp = Path(tmp)
        clip = make_person_clip(tmp, size=args.size if args.synthesis == "mouth" else 224)
        results = []
        for seconds in args.seconds:
            audio = make_audio(tmp / f"speech_{seconds:g}s.wav", seconds)
            print(f"running {seconds:g} s of audio at {args.size} x {args.size} ...", file=sys.stderr, flush=True)
            results.append(launch(args, clip, audio, tmp / f"out_{seconds:g}s.mp4"))
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
