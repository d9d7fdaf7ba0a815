"""Benchmark of the synthetic world: time to generate the default corpus, and where it goes.

    python bench/synthetic.py                          # default corpus: 20 persons x 400 frames
    python bench/synthetic.py --persons 4 --frames 100 # quicker
    python bench/synthetic.py --breakdown-only         # only the per-part split of one person

First a per-part breakdown of one person in this process (one torch thread, as in the
workers): sampling the persons, audio + coefficients, real-frame rendering, aligned crops,
writing the clip. Then the whole corpus with ``make_corpus`` (``--workers``, default one
process per core), wall clock end to end, plus the CPU time all processes used: on a shared
machine the wall clock grows with the other load, while CPU time / workers estimates the wall
clock of the same run on an idle machine. Figures, not tests.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from talkinghead.data.clip import ClipMeta, write_clip
from talkinghead.data.synthetic.frames import FaceAttributes
from talkinghead.data.synthetic.people import sample_people
from talkinghead.data.synthetic.world import DEFAULT_FACE_MODEL, aligned_crops, make_corpus, person_signals, render_frames
from talkinghead.face.factory import make_face_model


def breakdown(frames: int, persons: int) -> dict[str, float]:
    """Seconds per part for one person of ``frames`` frames (one torch thread)."""
    torch.set_num_threads(1)
    times: dict[str, float] = {}
    t = time.perf_counter()
    model = make_face_model(DEFAULT_FACE_MODEL)
    attributes = FaceAttributes.from_model(model)
    times["face model + attributes (once per worker)"] = time.perf_counter() - t
    t = time.perf_counter()
    person = sample_people(persons, 0, 0)[0]
    times["sample persons (pose styles of all)"] = time.perf_counter() - t
    t = time.perf_counter()
    signals = person_signals(person, frames)
    times["audio + coefficients"] = time.perf_counter() - t
    t = time.perf_counter()
    fixed, landmarks = render_frames(model, person, signals.coeffs, attributes=attributes)
    times["real frames (render + appearance)"] = time.perf_counter() - t
    t = time.perf_counter()
    aligned, transforms = aligned_crops(fixed, landmarks)
    times["aligned crops"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        meta = ClipMeta(name="p", num_frames=frames, source="synthetic")
        eye = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
        write_clip(Path(tmp) / "p", meta, signals.coeffs, landmarks, fixed, aligned, eye, transforms, signals.audio)
        times["write clip"] = time.perf_counter() - t
    return times


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=20)
    parser.add_argument("--heldout", type=int, default=4)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--workers", type=int, default=0, help="processes (0 = one per core)")
    parser.add_argument("--out", default=None, help="corpus directory (default: a temporary one, removed)")
    parser.add_argument("--breakdown-only", action="store_true")
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    parts = breakdown(args.frames, args.persons)
    per_person = sum(v for k, v in parts.items() if "once" not in k and "sample" not in k)
    print(f"\none person, {args.frames} frames, 1 thread:")
    for name, seconds in parts.items():
        print(f"  {name:<44s} {seconds:7.2f} s")
    print(f"  {'per person (excluding once-per-worker parts)':<44s} {per_person:7.2f} s"
          f"  ({1000 * per_person / args.frames:.1f} ms/frame)")
    if args.breakdown_only:
        return

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="synthetic-bench-"))
    workers = min(args.persons, args.workers or os.cpu_count() or 1)
    try:
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        make_corpus(out, args.persons, args.frames, seed=0, heldout=args.heldout, workers=workers, progress=True)
        total = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        frames = args.persons * args.frames
        print(f"\ncorpus: {args.persons} persons x {args.frames} frames, workers={workers}: "
              f"{total:.1f} s wall ({1000 * total / frames:.1f} ms/frame), {size / 2**30:.2f} GiB on disk")
        print(f"CPU time of all processes: {cpu:.1f} s ({1000 * cpu / frames:.1f} ms/frame); idle-machine "
              f"estimate with {workers} workers: {cpu / workers:.1f} s; load average now {os.getloadavg()[0]:.1f}")
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
