"""A toy regression task for the training-loop tests (also runnable as a script).

    python tests/_toy_train.py OUT_DIR [--steps N] [--kill-at K] [--nan-at K] [--ckpt-every C]
                               [--batch-size B] [--dropout P] [--workers W] [--lr LR]

Under ``python -m torch.distributed.run --nproc_per_node=2`` it trains data-parallel. It writes
``OUT_DIR/result.json`` (final validation metrics + step) and ``OUT_DIR/weights.safetensors``.

The task exercises what the real stages need: dropout (training RNG), noisy samples drawn
from the global RNG (per-sample seeding), Adam + a StepLR schedule kept in ``extra_state``, a
buffer-only module (saved, never DDP-wrapped) and image logging. ``--kill-at K`` SIGKILLs the
process just before step K+1 when the run started from scratch (so rerunning the same command
resumes and finishes); ``--nan-at K`` makes step K+1's loss NaN.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from talkinghead.cli import compose_config, to_plain
from talkinghead.errors import TalkingHeadError
from talkinghead.train import Trainer, TrainerConfig, cleanup, export_weights, is_main, seed_everything

IN_FEATURES = 4


class ToyDataset(Dataset):
    """``y = sin(x @ w) + 0.5 * x0``; ``x`` gets fresh noise on every access (an "augmentation")."""

    def __init__(self, num_samples: int, data_seed: int, noise: float = 0.05):
        generator = torch.Generator().manual_seed(data_seed)
        self.inputs = torch.randn(num_samples, IN_FEATURES, generator=generator)  # [N, 4]
        true_weights = torch.tensor([0.5, -1.0, 0.25, 0.75])
        self.targets = torch.sin(self.inputs @ true_weights)[:, None] + 0.5 * self.inputs[:, :1]  # [N, 1]
        self.noise = noise

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = self.inputs[index] + self.noise * torch.randn(IN_FEATURES)
        return {"x": x, "y": self.targets[index]}


class StepCounter(torch.nn.Module):
    """Buffer-only module: counts training samples seen."""

    def __init__(self):
        super().__init__()
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.int64))


class ToyTask:
    """Tiny MLP regression implementing the TrainTask protocol."""

    def __init__(self, lr: float = 1e-2, dropout: float = 0.1, kill_at: int | None = None, nan_at: int | None = None):
        self.models = {
            "net": torch.nn.Sequential(
                torch.nn.Linear(IN_FEATURES, 32), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(32, 1)
            ),
            "counter": StepCounter(),
        }
        self.lr = lr
        self.kill_at = kill_at
        self.nan_at = nan_at
        self.start_step = 0
        self.grad_clip = None
        self.images_logged = 0

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self.optimizer = torch.optim.Adam(self.models["net"].parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=7, gamma=0.8)
        return {"net": self.optimizer}

    def on_train_start(self, trainer) -> None:
        self.start_step = trainer.step
        self.grad_clip = trainer.cfg.grad_clip

    def training_step(self, batch, step: int) -> dict[str, torch.Tensor]:
        if self.kill_at is not None and step == self.kill_at and self.start_step == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        prediction = self.models["net"](batch["x"])  # [B, 1]
        loss = torch.nn.functional.mse_loss(prediction, batch["y"])
        if self.nan_at is not None and step == self.nan_at:
            loss = loss * float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.models["net"].parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.models["counter"].samples_seen += len(batch["x"])
        return {"loss": loss.detach(), "abs_err": (prediction - batch["y"]).abs().mean().detach()}

    def validation_step(self, batch) -> dict[str, torch.Tensor]:
        prediction = self.models["net"](batch["x"])
        return {"mse": torch.nn.functional.mse_loss(prediction, batch["y"])}

    def log_images(self, writer, batch, step: int) -> None:
        prediction = self.models["net"](batch["x"])  # [B, 1]
        image = torch.cat([prediction, batch["y"]], dim=1).T  # [2, B]
        image = (image - image.min()) / (image.max() - image.min() + 1e-8)
        writer.add_image("toy/prediction_vs_target", image[None], step)
        self.images_logged += 1

    def extra_state(self) -> dict:
        return {"scheduler": self.scheduler.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


def build(seed: int = 0, lr: float = 1e-2, dropout: float = 0.1, kill_at=None, nan_at=None, train_size: int = 96):
    """Seeded task + train/val datasets."""
    seed_everything(seed)
    task = ToyTask(lr=lr, dropout=dropout, kill_at=kill_at, nan_at=nan_at)
    return task, ToyDataset(train_size, data_seed=1234), ToyDataset(40, data_seed=99)


def loop_settings(**overrides) -> dict:
    """The trainer preset's loop settings (``configs/trainer/cpu.yaml``, on the CPU, no progress
    bar) with ``overrides``: what :class:`TrainerConfig` requires besides the stage's values."""
    preset = to_plain(compose_config("train", ["device=cpu", "progress=false"]).trainer)
    return {**preset, **overrides}


def run(out_dir, steps: int = 20, ckpt_every: int = 5, batch_size: int = 8, seed: int = 0, lr: float = 1e-2,
        dropout: float = 0.1, workers: int = 0, kill_at=None, nan_at=None, device: str = "cpu", **trainer_overrides):
    """Train the toy task; returns ``(task, trainer, result)``."""
    task, train_set, val_set = build(seed, lr, dropout, kill_at, nan_at)
    cfg = TrainerConfig(**loop_settings(
        out_dir=str(out_dir),
        max_steps=steps,
        batch_size=batch_size,
        val_batch_size=trainer_overrides.pop("val_batch_size", 12),
        num_workers=workers,
        seed=seed,
        device=device,
        log_every=trainer_overrides.pop("log_every", 2),
        val_every=trainer_overrides.pop("val_every", 10),
        ckpt_every=ckpt_every,
        image_every=trainer_overrides.pop("image_every", 10),
        progress=False,
        desc="toy",
        **trainer_overrides,
    ))
    trainer = Trainer(task, train_set, val_set, cfg)
    result = trainer.fit()
    return task, trainer, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--nan-at", type=int, default=None)
    parser.add_argument("--ckpt-every", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        task, _trainer, result = run(
            args.out_dir, steps=args.steps, ckpt_every=args.ckpt_every, batch_size=args.batch_size, lr=args.lr,
            dropout=args.dropout, workers=args.workers, kill_at=args.kill_at, nan_at=args.nan_at,
        )
        if is_main():
            export_weights(task, Path(args.out_dir) / "weights.safetensors")
            (Path(args.out_dir) / "result.json").write_text(json.dumps(result))
    except TalkingHeadError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
