"""Benchmark of the Stage-2 refiner: training iterations/s and inference frames/s.

One training iteration is the authors' ``optimize_parameters``: memory margin loss + key-network
step, memory update, generator forward with the true identity, discriminator step, generator
step (Adam, batch norm in D, dropout on). Inference reads the identity from the memory
(30,000 slots, a few hundred filled) and runs the generator in eval mode without gradients.

    python bench/stage2.py                       # CPU: 64, 128, 256; train batch 1 and 4, infer batch 4
    python bench/stage2.py --sizes 256 --device cuda   # adds bf16 autocast and channels_last variants
    python bench/stage2.py --pipeline            # also the library path at the config preset (below)

``--pipeline`` adds rows measured through the code that training and inference actually run:
:class:`talkinghead.train.refiner.RefinerTask` ``.training_step`` (the model built from
``configs/refiner/<preset>.yaml`` with its image size replaced) and
:func:`talkinghead.pipeline.stage2.refine_frames` with the identity recalled from the memory
(keyframes every 25 frames, interpolated).

Each measurement runs one warm-up iteration, then iterates until ``--seconds`` have passed (at
least ``--min-iters`` iterations). Numbers are throughput on this machine, not tests.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from _timing import calls_per_second
from talkinghead.cli import compose_config
from talkinghead.models.features import make_identity_feature
from talkinghead.models.refiner import (
    MemoryAugmentedGenerator,
    PatchDiscriminator,
    discriminator_loss,
    generator_loss,
)
from talkinghead.pipeline.stage2 import Refiner, refine_frames
from talkinghead.train.refiner import RefinerTask, model_spec_from_config


def build(size: int, ngf: int, slots: int, device: torch.device, channels_last: bool):
    model = MemoryAugmentedGenerator(image_size=size, ngf=ngf, memory_slots=slots).to(device)
    discriminator = PatchDiscriminator(ndf=64).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    # Fill part of the memory so that reads, losses and updates do real work.
    with torch.no_grad():
        filled = min(300, slots)
        model.memory.keys[:filled] = F.normalize(torch.randn(filled, model.memory.key_dim, device=device), dim=1)
        model.memory.values[:filled] = F.normalize(torch.randn(filled, model.memory.value_dim, device=device), dim=1)
        model.memory.filled[:filled] = True
    return model, discriminator


def make_batch(batch: int, size: int, device: torch.device, channels_last: bool):
    inputs = torch.rand(batch, 9, size, size, device=device) * 2 - 1
    target = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        target = target.contiguous(memory_format=torch.channels_last)
    identity = F.normalize(torch.randn(batch, 512, device=device), dim=1)
    return inputs, target, identity


def train_step_fn(model, discriminator, inputs, target, identity, autocast):
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_k = torch.optim.Adam(model.key_parameters(), lr=2e-4, betas=(0.5, 0.999))
    model.train()
    discriminator.train()

    def step():
        with autocast():
            opt_k.zero_grad(set_to_none=True)
            model.memory_loss(inputs, identity).backward()
            opt_k.step()
            model.update_memory(inputs, identity)

            out = model(inputs, identity)
            d_fake = discriminator(torch.cat([inputs, out.image.detach()], dim=1))
            d_real = discriminator(torch.cat([inputs, target], dim=1))
            opt_d.zero_grad(set_to_none=True)
            discriminator_loss(d_real, d_fake)["total"].backward()
            opt_d.step()

            discriminator.requires_grad_(False)
            d_fake = discriminator(torch.cat([inputs, out.image], dim=1))
            opt_g.zero_grad(set_to_none=True)
            generator_loss(d_fake, out.image, target, out.mask)["total"].backward()
            opt_g.step()
            discriminator.requires_grad_(True)

    return step


def infer_step_fn(model, inputs, autocast):
    model.eval()

    def step():
        with torch.no_grad(), autocast():
            model(inputs)

    return step


def pipeline_rows(sizes, train_batches, infer_batch, preset, device, seconds, min_iters) -> None:
    """Training it/s of RefinerTask.training_step and inference fps of refine_frames at each size."""
    cfg = compose_config("train", ["stage=refiner", f"refiner={preset}"])
    print(f"library path, preset refiner={preset} (ngf={cfg.refiner.model.ngf}, ndf={cfg.refiner.model.ndf}, "
          f"slots={cfg.refiner.model.memory_slots}); inference: refine_frames, identity from memory")
    for size in sizes:
        torch.manual_seed(0)
        model_cfg = {**cfg.refiner.model, "image_size": size}
        spec = model_spec_from_config(model_cfg)
        task = RefinerTask(spec)
        for model in task.models.values():
            model.to(device).train()
        task.configure_optimizers()
        cells = []
        for batch in train_batches:
            inputs, target, identity = make_batch(batch, size, device, False)
            data = {"inputs": inputs, "target": target, "identity": identity}
            counter = iter(range(1 << 30))
            cells.append(f"{calls_per_second(lambda: task.training_step(data, next(counter)), device, seconds, min_iters):14.2f}")
        generator = task.models["generator"].eval()
        refiner = Refiner(generator, make_identity_feature(spec["identity_feature"]), size, spec["render_size"])
        frames = torch.rand(50, 3, size, size, device=device)
        fps = calls_per_second(lambda: refine_frames(refiner, frames, batch_size=infer_batch), device, seconds, min_iters) * len(frames)
        print(f"{size:>5} {'library':>8} " + " ".join(cells) + f" {fps:15.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--infer-batch", type=int, default=4)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--slots", type=int, default=30000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement after warm-up")
    parser.add_argument("--min-iters", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0 = torch default); 1 is steadier on a busy machine")
    parser.add_argument("--pipeline", action="store_true",
                        help="also measure RefinerTask.training_step / refine_frames at a config preset")
    parser.add_argument("--preset", default="default", help="configs/refiner/<preset>.yaml for --pipeline")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    variants = [("fp32", False, False)]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        variants += [("bf16", True, False), ("fp32+CL", False, True), ("bf16+CL", True, True)]
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"Stage-2 refiner benchmark on {name}; torch {torch.__version__}; ngf={args.ngf}, slots={args.slots}")
    print(f"{'size':>5} {'variant':>8} " + " ".join(f"{f'train b{b} it/s':>14}" for b in args.train_batches)
          + f" {f'infer b{args.infer_batch} fps':>15}")

    for size in args.sizes:
        for variant, bf16, channels_last in variants:
            def autocast(bf16=bf16):
                if bf16:
                    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                return contextlib.nullcontext()

            torch.manual_seed(0)
            model, discriminator = build(size, args.ngf, args.slots, device, channels_last)
            cells = []
            for batch in args.train_batches:
                inputs, target, identity = make_batch(batch, size, device, channels_last)
                step = train_step_fn(model, discriminator, inputs, target, identity, autocast)
                cells.append(f"{calls_per_second(step, device, args.seconds, args.min_iters):14.2f}")
            inputs, _, _ = make_batch(args.infer_batch, size, device, channels_last)
            fps = calls_per_second(infer_step_fn(model, inputs, autocast), device, args.seconds, args.min_iters) * args.infer_batch
            print(f"{size:>5} {variant:>8} " + " ".join(cells) + f" {fps:15.2f}", flush=True)
            del model, discriminator
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.pipeline:
        pipeline_rows(args.sizes, args.train_batches, args.infer_batch, args.preset, device, args.seconds, args.min_iters)


if __name__ == "__main__":
    main()
