"""Benchmark of the 3DMM fitting (talkinghead/preprocess/fit.py): seconds per 300 frames.

    python bench/fit.py                      # CPU (and CUDA when present): seconds per 300 frames
    python bench/fit.py --accuracy           # face-model renders: landmark-only vs + photometric errors
    python bench/fit.py --world /tmp/synth --clips 3 --world-frames 24   # synthetic-world clips (hair, skin
                                             # detail, key light, noise): landmark-only vs + photometric
                                             # (clips: python scripts/make_synthetic.py out=/tmp/synth persons=4 frames=32)
    python bench/fit.py --astronaut /tmp/astronaut_fit.png   # fit a photograph, save an overlay
    python bench/fit.py --batch 16           # 29-frame clips, default config: s/step and clips/min, 1 vs 16 per batch
    python bench/fit.py --world /tmp/words --clips 16 --world-frames 29 --batch 16   # short clips:
                                             # one at a time vs 16 per batch (fit_clips): errors, clips/min
                                             # (python scripts/make_synthetic.py out=/tmp/words persons=16 frames=29)

Accuracy tables (--accuracy, --world): the real fixed crops (area-resized to --size) and
ground-truth landmarks with --noise px of noise; the landmark-only fit, then the photometric
stage continuing it (landmark_steps=0; --set KEY=VALUE overrides its fitting config, e.g.
--set photo_robust_scale=0 for the plain RGB distance); per sequence and median errors
against the true coefficients (coefficient_errors: median over frames).

Batched (--world --batch B): every clip fitted from scratch with both stages (default config,
--photometric-steps, --set), once one clip at a time (fit_coefficients) and once B clips per
batch (fit_clips), one after the other in this process: median errors against the truth of each
way, the largest coefficient difference between them (they should agree to float rounding),
wall seconds and clips per minute (the model and renderer warmed up first).

Timing: the fit of a clip is ``landmark_steps`` cheap steps (68 projected points per frame)
plus ``photometric_steps`` steps that render every frame at ``render_size``; both scale
linearly with the number of frames (they are batched over frames, in chunks of
``batch_frames``). On CUDA the full default fit of 300 synthetic frames is timed end to end.
On CPU that would take tens of minutes, so the seconds per step are measured on
``--cpu-frames`` frames (after a warm-up) and scaled to 300 frames and the default step
counts; the table says which rows are measured and which are scaled. Numbers are this
machine's, not tests (the goal on one GPU: <= 60 s per 300 frames).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from talkinghead.face.factory import make_face_model
from talkinghead.preprocess.fit import FittingConfig, coefficient_errors, fit_clips, fit_coefficients, truth_sequence
from talkinghead.preprocess.landmarks import GroundTruthDetector

FACE_MODEL = {"_target_": "talkinghead.face.procedural.make_procedural_model", "seed": 0, "resolution": 64}
CLIP_FRAMES = 300


def synthetic(model, frames: int, size: int, seed: int = 0, noise_px: float = 1.5):
    crops, truth = truth_sequence(model, frames, size, seed=seed)
    landmarks = GroundTruthDetector(truth, model, noise_px=noise_px, seed=seed).landmarks_for_size(size)
    return crops, landmarks, truth


def seconds_per_step(model, crops, landmarks, device: str, photometric: bool, steps: int, config: FittingConfig) -> float:
    """Wall seconds of one fitting step over all given clips (lists of ``[N, S, S, 3]`` crops or
    ``None``, and of ``[N, 68, 2]`` landmarks; one batch), after one warm-up fit."""
    def with_steps(n: int) -> FittingConfig:
        return FittingConfig.from_mapping({**vars(config), "landmark_steps": 0 if photometric else n,
                                           "photometric_steps": n if photometric else 0,
                                           "batch_clips": len(landmarks)})

    fit_clips(crops, landmarks, model, with_steps(2), device=device, progress=False, crop_size=224)  # warm-up
    run_config = with_steps(steps)
    start = time.perf_counter()
    fit_clips(crops, landmarks, model, run_config, device=device, progress=False, record_history=False, crop_size=224)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench_timing(args) -> None:
    model = make_face_model(FACE_MODEL)
    config = FittingConfig()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"fitting config: landmark_steps={config.landmark_steps} photometric_steps={config.photometric_steps} "
          f"render_size={config.render_size} batch_frames={config.batch_frames}; torch threads {torch.get_num_threads()}")
    print(f"{'device':8} {'frames':>6} {'s/landmark step':>16} {'s/photo step':>13} {'s per 300 frames':>17}  how")
    print(f"{'':8} {'':6} {'(300 frames)':>16} {'(frames)':>13}")
    for device in devices:
        frames = CLIP_FRAMES if device == "cuda" else args.cpu_frames
        crops, landmarks, _ = synthetic(model, frames, 224)
        clip_landmarks = np.resize(landmarks, (CLIP_FRAMES, 68, 2))  # landmark steps: always 300 frames
        t_lm = seconds_per_step(model, None, [clip_landmarks], device, False, args.steps, config)
        t_photo = seconds_per_step(model, [crops], [landmarks], device, True, max(2, args.steps // 10), config)
        scale = CLIP_FRAMES / frames
        total = config.landmark_steps * t_lm + scale * config.photometric_steps * t_photo
        how = "per-step times measured (photo: scaled to 300 frames)" if scale != 1 else "per-step times at 300 frames"
        print(f"{device:8} {frames:6d} {t_lm:16.4f} {t_photo:13.3f} {total:17.1f}  {how}")
        if device == "cuda":  # the real thing, end to end
            start = time.perf_counter()
            result = fit_coefficients(crops, landmarks, model, config, device=device, progress=False)
            torch.cuda.synchronize()
            print(f"{device:8} {frames:6d} {'':16} {'':13} {time.perf_counter() - start:17.1f}  measured: full default fit "
                  f"(landmark error {result.landmark_error_px.mean():.2f} px)")


def bench_batch_timing(args) -> None:
    """Short clips (face-model renders of ``--clip-frames`` frames at 224 px, default config and
    ``--set`` overrides): seconds per landmark and per photometric step of one batch of 1 and of
    ``--batch`` clips, measured alternately ``--repeats`` times (medians: the machine may be
    shared), and the clips per minute of the fit's step counts that those per-step times give."""
    model = make_face_model(FACE_MODEL)
    config = FittingConfig.from_mapping(overrides(args))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"fitting config: landmark_steps={config.landmark_steps} photometric_steps={config.photometric_steps} "
          f"render_size={config.render_size} batch_frames={config.batch_frames}; clips of {args.clip_frames} frames "
          f"at 224 px; torch threads {torch.get_num_threads()}; medians of {args.repeats} alternating runs")
    print(f"{'device':8} {'clips/batch':>11} {'s/landmark step':>16} {'s/photo step':>13} {'s per clip':>11} "
          f"{'clips/min':>10}")
    for device in devices:
        clips = [synthetic(model, args.clip_frames, 224, seed) for seed in range(args.batch)]
        batches = sorted({1, args.batch})
        times: dict[int, list[tuple[float, float]]] = {batch: [] for batch in batches}
        for _ in range(args.repeats):
            for batch in batches:
                crops, landmarks = [c[0] for c in clips[:batch]], [c[1] for c in clips[:batch]]
                t_lm = seconds_per_step(model, None, landmarks, device, False, args.steps, config)
                t_photo = seconds_per_step(model, crops, landmarks, device, True, max(2, args.steps // 10), config)
                times[batch].append((t_lm, t_photo))
        for batch in batches:
            t_lm, t_photo = np.median(np.array(times[batch]), axis=0)
            per_clip = (config.landmark_steps * t_lm + config.photometric_steps * t_photo) / batch
            print(f"{device:8} {batch:11d} {t_lm:16.4f} {t_photo:13.3f} {per_clip:11.2f} {60 / per_clip:10.2f}")


#: Columns of the accuracy tables (median over frames; see coefficient_errors).
ERROR_KEYS = ("pitch_deg_median", "yaw_deg_median", "roll_deg_median", "angle_deg_median", "translation_xy_px_median",
              "translation_z_median", "expression_rmse", "expression_rmse_major", "expression_vertex_mean")
HEADERS = ("pitch deg", "yaw deg", "roll deg", "angle deg", "t_xy px", "t_z", "exp rmse", "exp rmse maj", "exp vertex")


def overrides(args) -> dict:
    """``--set key=value`` fitting overrides of the photometric stage (values parsed as YAML)."""
    import yaml

    out = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def compare(cases, args) -> None:
    """For each ``(name, crops, landmarks, truth, model)``: the landmark-only fit, then the
    photometric stage continuing it (landmark_steps=0: the same landmark fit, so the rows differ
    by the photometric stage only); errors against the truth per case and their medians."""
    render = args.render_size or args.size // 2
    photo_config = {"landmark_steps": 0, "photometric_steps": args.photometric_steps, "render_size": render,
                    **overrides(args)}
    print(f"{'':12} {'stages':12} " + " ".join(f"{h:>12}" for h in HEADERS) + f" {'seconds':>8}")
    rows: dict[str, list[dict]] = {"landmarks": [], "+photometric": []}
    for name, crops, landmarks, truth, model in cases:
        lm_only = fit_coefficients(None, landmarks, model, {"photometric_steps": 0}, progress=False, crop_size=args.size)
        both = fit_coefficients(crops, landmarks, model, photo_config, progress=False, init_coeffs=lm_only.coeffs)
        for stages, result in (("landmarks", lm_only), ("+photometric", both)):
            errors = coefficient_errors(result.coeffs, truth, model)
            rows[stages].append(errors)
            print(f"{name:12} {stages:12} " + " ".join(f"{errors[k]:12.4f}" for k in ERROR_KEYS)
                  + f" {result.seconds:8.1f}", flush=True)
    for stages, errors in rows.items():
        print(f"{'median':12} {stages:12} " + " ".join(f"{np.median([e[k] for e in errors]):12.4f}" for k in ERROR_KEYS))


def bench_accuracy(args) -> None:
    """Face-model renders (truth_sequence): landmark-only vs + photometric errors."""
    model = make_face_model(FACE_MODEL)
    print(f"face-model renders (truth_sequence): {args.seeds} sequences x {args.frames} frames at {args.size} px, "
          f"landmark noise {args.noise} px (224 scale), render {args.render_size or args.size // 2} px, "
          f"photometric steps {args.photometric_steps}")

    def cases():
        for seed in range(args.seeds):
            crops, landmarks, truth = synthetic(model, args.frames, args.size, seed, args.noise)
            yield f"seed {seed}", crops, landmarks, truth, model

    compare(cases(), args)


def world_clip(clip_dir, frames: int, size: int, noise_px: float, seed: int):
    """A synthetic-world clip's first ``frames`` real fixed crops (area-resized to ``size``),
    ground-truth landmarks with ``noise_px`` (224 scale) of noise, true coefficients, face model."""
    import cv2

    from talkinghead.data.clip import read_clip

    clip = read_clip(clip_dir, load_audio=False)
    model = make_face_model(clip.meta.face_model)
    truth = np.asarray(clip.coeffs[:frames], np.float32)
    crops = np.asarray(clip.fixed[:frames])
    if crops.shape[1] != size:
        crops = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])
    landmarks = GroundTruthDetector(truth, model, noise_px=noise_px, seed=seed).landmarks_for_size(size)
    return crops, landmarks, truth, model


def bench_world(args) -> None:
    """Synthetic-world clips (scripts/make_synthetic.py: the "real" fixed crops with hair, skin
    detail, key light, camera noise): landmark-only vs + photometric errors."""
    from talkinghead.data.clip import list_clips

    clips = list_clips(args.world)[: args.clips]
    if not clips:
        raise SystemExit(f"--world {args.world}: no clips there (make some: python scripts/make_synthetic.py out=DIR "
                         "persons=4 frames=32)")
    print(f"synthetic-world clips from {args.world}: {len(clips)} clips x first {args.world_frames} frames at {args.size} px, "
          f"landmark noise {args.noise} px (224 scale), render {args.render_size or args.size // 2} px, "
          f"photometric steps {args.photometric_steps}")

    def cases():
        for index, clip_dir in enumerate(clips):
            yield (clip_dir.name, *world_clip(clip_dir, args.world_frames, args.size, args.noise, index))

    compare(cases(), args)


def bench_batched(args) -> None:
    """Synthetic-world clips fitted one at a time and ``--batch`` per batch: accuracy and clips/min."""
    from talkinghead.data.clip import list_clips

    clips = list_clips(args.world)[: args.clips]
    if not clips:
        raise SystemExit(f"--world {args.world}: no clips there (make some: python scripts/make_synthetic.py out=DIR "
                         "persons=16 frames=29)")
    cases = [world_clip(clip_dir, args.world_frames, args.size, args.noise, index) for index, clip_dir in
             enumerate(clips)]
    model = cases[0][3]  # one corpus, one face model
    crops, landmarks, truths = [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]
    config = FittingConfig.from_mapping({"photometric_steps": args.photometric_steps,
                                         "render_size": args.render_size or args.size // 2, **overrides(args)})
    frames = sorted({len(t) for t in truths})
    print(f"synthetic-world clips from {args.world}: {len(cases)} clips x {frames} frames at {args.size} px, landmark "
          f"noise {args.noise} px (224 scale), steps {config.landmark_steps} landmark + {config.photometric_steps} "
          f"photometric, render {config.render_size} px; torch threads {torch.get_num_threads()}")
    warm_up = {**vars(config), "landmark_steps": 2, "photometric_steps": 2}
    fit_coefficients(crops[0][:2], landmarks[0][:2], model, warm_up, progress=False)
    start = time.perf_counter()
    alone = [fit_coefficients(c, lm, model, config, progress=False, record_history=False)
             for c, lm in zip(crops, landmarks)]
    alone_seconds = time.perf_counter() - start
    start = time.perf_counter()
    batch_config = FittingConfig.from_mapping({**vars(config), "batch_clips": args.batch})
    batched = fit_clips(crops, landmarks, model, batch_config, progress=args.progress, record_history=False)
    batched_seconds = time.perf_counter() - start
    print(f"{'':22} " + " ".join(f"{h:>12}" for h in HEADERS) + f" {'lm px':>7} {'seconds':>8} {'clips/min':>9}")
    for name, results, seconds in (("one at a time", alone, alone_seconds),
                                   (f"{args.batch} per batch", batched, batched_seconds)):
        errors = [coefficient_errors(r.coeffs, t, model) for r, t in zip(results, truths)]
        lm_px = float(np.mean([r.landmark_error_px.mean() for r in results]))
        print(f"{name:22} " + " ".join(f"{np.median([e[k] for e in errors]):12.4f}" for k in ERROR_KEYS)
              + f" {lm_px:7.3f} {seconds:8.1f} {60 * len(results) / seconds:9.2f}")
    difference = max(float(np.abs(a.coeffs - b.coeffs).max()) for a, b in zip(alone, batched))
    angles = max(float(np.degrees(np.abs(a.coeffs[:, 224:227] - b.coeffs[:, 224:227])).max())
                 for a, b in zip(alone, batched))
    print(f"largest coefficient difference, one at a time vs batched: {difference:.2e} (angles {angles:.2e} deg); "
          f"speed-up x{alone_seconds / batched_seconds:.2f}")


def bench_astronaut(args) -> None:
    """Fit scikit-image's astronaut photograph (MediaPipe landmarks) and save an overlay."""
    import imageio.v2 as imageio
    from skimage.data import astronaut

    from talkinghead.preprocess.fit import draw_fit_overlay, render_coeffs
    from talkinghead.preprocess.pipeline import fit_image

    model = make_face_model(FACE_MODEL)
    config = {"photometric_steps": args.photometric_steps}
    crop, detected, result = fit_image(astronaut(), "mediapipe", FACE_MODEL, config, progress=True)
    fitted = model.landmarks_2d(torch.from_numpy(result.coeffs))[0].numpy()
    overlay = draw_fit_overlay(crop, detected, fitted, render_coeffs(model, result.coeffs, 224)[0])
    imageio.imwrite(args.astronaut, np.concatenate([crop, overlay], 1))
    angles = np.degrees(result.coeffs[0, 224:227])
    print(f"astronaut: landmark reprojection error {result.landmark_error_px[0]:.2f} px (224 crop); "
          f"angles x/y/z {angles.round(1).tolist()} deg; photo loss {result.losses['photo']:.4f}; "
          f"{result.seconds:.1f} s; overlay (left: crop, right: render blended, green = detected, "
          f"red = fitted landmarks) -> {args.astronaut}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-frames", type=int, default=16, help="frames timed on CPU (scaled to 300)")
    parser.add_argument("--steps", type=int, default=20, help="landmark steps timed (photometric: a tenth, >= 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--accuracy", action="store_true", help="synthetic accuracy table instead of timing")
    parser.add_argument("--frames", type=int, default=16, help="--accuracy: frames per sequence")
    parser.add_argument("--size", type=int, default=112, help="--accuracy/--world: crop size (render at half)")
    parser.add_argument("--noise", type=float, default=3.0, help="--accuracy/--world: landmark noise, px at 224")
    parser.add_argument("--seeds", type=int, default=3, help="--accuracy: number of sequences")
    parser.add_argument("--photometric-steps", type=int, default=150, help="--accuracy/--astronaut: photometric steps")
    parser.add_argument("--world", metavar="DIR", help="fit synthetic-world clips of this corpus (or clip) directory")
    parser.add_argument("--world-frames", type=int, default=24, help="--world: frames per clip (the first ones)")
    parser.add_argument("--clips", type=int, default=3, help="--world: number of clips (the first ones)")
    parser.add_argument("--render-size", type=int, default=0, help="--accuracy/--world: photometric render size (0: --size / 2)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="--accuracy/--world: photometric-stage "
                        "fitting overrides (repeatable), e.g. --set photo_robust_scale=0; --batch: fitting overrides")
    parser.add_argument("--batch", type=int, default=0, help="with --world: fit the clips one at a time and this many "
                        "per batch (fit_clips) and compare; alone: per-step times of 1 and this many clips per batch")
    parser.add_argument("--clip-frames", type=int, default=29, help="--batch without --world: frames per clip")
    parser.add_argument("--repeats", type=int, default=3, help="--batch without --world: alternating timing runs")
    parser.add_argument("--progress", action="store_true", help="--batch: progress bar of the batched fit")
    parser.add_argument("--astronaut", metavar="PNG", help="fit the astronaut photograph and save an overlay here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.astronaut:
        bench_astronaut(args)
    elif args.world and args.batch:
        bench_batched(args)
    elif args.world:
        bench_world(args)
    elif args.accuracy:
        bench_accuracy(args)
    elif args.batch:
        bench_batch_timing(args)
    else:
        bench_timing(args)


if __name__ == "__main__":
    main()
