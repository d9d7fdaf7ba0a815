"""Benchmark of Stage 1 (ExpressionPoseLSTM): training windows/s and inference frames/s.

Training: one optimisation step of :class:`talkinghead.train.audio2coeff.Audio2CoeffTask`
(forward over ``[B, 16, 28, 12]``, the Stage-1 loss, backward, Adam) on random inputs; a
"window" is one 16-frame training sequence, so windows/s x 16 = training frames/s.
Inference: :func:`talkinghead.pipeline.stage1.predict_expression_pose` on ``--audio-seconds``
of audio (MFCC included, chunks of 250 frames with the LSTM state carried), frames/s of
25 fps video; also the network alone on precomputed windows.

    python bench/stage1.py                        # CPU preset and paper size, CPU
    python bench/stage1.py --device cuda          # adds the GPU (when present)
    python bench/stage1.py --presets default --threads 1

Each measurement runs one warm-up iteration, then iterates until ``--seconds`` have passed
(at least ``--min-iters``). Numbers are throughput on this machine, not tests.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _timing import calls_per_second
from talkinghead.audio.features import frame_windows
from talkinghead.cli import compose_config
from talkinghead.models.audio2coeff import ExpressionPoseLSTM
from talkinghead.pipeline.stage1 import predict_expression_pose
from talkinghead.train.audio2coeff import Audio2CoeffTask


def preset(name: str) -> tuple[dict, dict]:
    """Model kwargs and general-training settings of ``configs/audio2coeff/<name>.yaml``."""
    cfg = compose_config("train", [f"audio2coeff={name}"])
    return dict(cfg.audio2coeff.model), dict(cfg.audio2coeff.train)


def bench_training(model_kwargs: dict, batch: int, window: int, device, seconds: float, min_iters: int) -> float:
    torch.manual_seed(0)
    model = ExpressionPoseLSTM(**model_kwargs)
    task = Audio2CoeffTask(model.to(device).train())
    task.configure_optimizers()
    data = {
        "windows": torch.randn(batch, window, *model.window_shape, device=device) * 10,
        "target": torch.randn(batch, window, 70, device=device) * 0.3,
    }
    steps_per_s = calls_per_second(lambda: task.training_step(data, 0), device, seconds, min_iters)
    return steps_per_s * batch


def bench_inference(model_kwargs: dict, audio_seconds: float, device, seconds: float, min_iters: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = ExpressionPoseLSTM(**model_kwargs).to(device).eval()
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(audio_seconds * 16000))).astype(np.float32)
    frames = int(audio_seconds * 25)
    with_features = calls_per_second(lambda: predict_expression_pose(model, audio, device=device), device, seconds, min_iters)
    windows = torch.from_numpy(frame_windows(audio, features=model.features))[None].to(device)  # [1, N, 28, C]

    @torch.no_grad()
    def network_only():
        model(windows)

    return with_features * frames, calls_per_second(network_only, device, seconds, min_iters) * frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["default", "paper"], help="configs/audio2coeff/*.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--audio-seconds", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--min-iters", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"Stage-1 benchmark on {name}")
    print(f"{'preset':8s} {'params':>8s} {'batch':>5s} {'train windows/s':>16s} {'(frames/s)':>11s} "
          f"{'infer frames/s':>15s} {'(network only)':>15s}")
    for preset_name in args.presets:
        model_kwargs, train = preset(preset_name)
        params = sum(p.numel() for p in ExpressionPoseLSTM(**model_kwargs).parameters())
        batch, window = int(train["batch_size"]), int(train["window"])
        train_rate = bench_training(model_kwargs, batch, window, device, args.seconds, args.min_iters)
        infer_rate, network_rate = bench_inference(model_kwargs, args.audio_seconds, device, args.seconds, args.min_iters)
        print(f"{preset_name:8s} {params / 1e6:7.2f}M {batch:5d} {train_rate:16.1f} {train_rate * window:11.0f} "
              f"{infer_rate:15.0f} {network_rate:15.0f}", flush=True)


if __name__ == "__main__":
    main()
