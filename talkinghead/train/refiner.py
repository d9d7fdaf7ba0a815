"""Stage-2 training: the memory-augmented GAN as a task for the shared loop (method.md section 7).

:class:`RefinerTask` plugs into :class:`talkinghead.train.loop.Trainer` (checkpoints, resume,
TensorBoard, validation all come from there). One optimisation step on a batch of 3-frame
windows (:class:`talkinghead.data.stage2_dataset.RefinerDataset`), in the authors' order:

1. **memory** -- the margin (triangle) loss of the key of frame t against the true identity
   feature trains the key network (its own Adam); then the memory is updated with
   (key, true identity) -- merged into the nearest slot if it holds the same identity, else
   written into the oldest slot;
2. **generator forward** with the *true* identity feature (teacher forcing);
3. **discriminator** -- ``0.5 * (BCE(D(inputs, real), 1) + BCE(D(inputs, fake), 0))``;
4. **generator** -- ``BCE(D(inputs, fake), 1) + 100 L1 + lambda_mask mean(mask) + 1e-5 TV(mask)``
   (``lambda_mask`` 0.1 for general training, 2 for fine-tuning), D frozen.

Adam with beta1 0.5 for all three optimisers (lr 2e-4 general, 1e-4 fine-tuning).

Ablation switch: ``refiner.model.identity_condition=false`` trains a generator that always gets
a zero identity feature (the memory is still trained and updated, so it can be inspected); the
flag is part of the model spec, so fine-tuning and inference follow it.

:func:`train_refiner` trains a general model over many clips (frames 2.. of every clip) or
fine-tunes one from a general directory on a person's frames 2-299, and writes the trained-stage
directory of the integration contract: ``weights.safetensors`` (generator with key network and
memory, and the discriminator, so fine-tuning starts from both), ``model.json`` (what
:func:`talkinghead.pipeline.stage2.load_refiner` needs to rebuild it), ``checkpoints/``,
``tb/``, ``render_cache/`` (the rendered inputs, reused when the run is resumed; safe to
delete) and finally ``done.json``.

**Multi-process training (``torchrun``, DDP: gloo on CPU, nccl on GPU).** ``trainer.batch_size``
(``refiner.train.batch_size``) is the *global* batch: each of N processes takes ``batch_size / N``
items of every global batch (:class:`~talkinghead.train.loop.EpochBatchSampler`), so N processes
see the samples one process sees. What keeps the ranks in step (:meth:`RefinerTask.wrap_model`):

* the **discriminator** is DDP-wrapped (gradients all-reduced; its BatchNorm buffers broadcast
  from rank 0, batch statistics per process as in any DDP pix2pix); the generator step runs
  the plain discriminator (it is frozen there, nothing to synchronise);
* of the generator only the **U-Net** is DDP-wrapped: the key network is trained by the margin
  loss, which does not go through ``forward``, so its gradients are averaged over ranks by hand
  (:func:`~talkinghead.train.distributed.average_gradients`, one collective per step);
* the **identity memory** is identical on every rank: each step every rank gathers all ranks'
  (key, true identity) pairs in rank order -- the order of the global batch -- and applies the
  same update (:meth:`RefinerTask.update_memory`), so keys, values, ages and filled flags stay
  bit-identical without broadcasting the memory. Key network and memory start from rank 0's copy;
  at the end of training a digest check raises :class:`TrainingError` if the ranks' copies differ.

Rank 0 renders the training inputs into ``render_cache/`` first (the others read them), writes
checkpoints, ``model.json``, the weights and ``done.json``; every rank resumes from the same
checkpoint. The paper trains this stage with batch 1 on one GPU; more processes are a speed-up
with a larger global batch, not the paper's setting.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf

from talkinghead.data.clip import PersonClip, read_clip
from talkinghead.data.stage2_dataset import RefinerDataset
from talkinghead.errors import ConfigError, InputError
from talkinghead.metrics.image import psnr
from talkinghead.models.features import identity_feature_spec, key_encoder_spec, make_identity_feature
from talkinghead.models.refiner import PatchDiscriminator, build_generator, discriminator_loss, generator_loss
from talkinghead.render import get_renderer
from talkinghead.stagedir import DONE_FILE, MODEL_FILE, REFINER as STAGE_NAME, WEIGHTS_FILE, read_model_json, write_json_atomic
from talkinghead.train.checkpoint import export_weights, load_weights
from talkinghead.train.distributed import (
    DistInfo,
    all_gather_rows,
    average_gradients,
    barrier,
    broadcast_tensors,
    check_same_on_all_ranks,
    init_distributed,
    is_main,
    unwrap,
    wrap_ddp,
)
from talkinghead.train.loop import Trainer, TrainerConfig, seed_everything

log = logging.getLogger(__name__)

__all__ = ["RefinerTask", "model_spec_from_config", "train_refiner"]

SPEC_VERSION = 1
MODES = ("general", "finetune")
#: Rendered training inputs are cached here inside the run directory (reused on resume).
RENDER_CACHE_DIR = "render_cache"


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------
def _set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((images + 1) * 0.5).clamp(0, 1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean PSNR (dB) of images in [-1, 1], measured in [0, 1]."""
    return psnr(_to_unit(a), _to_unit(b)).mean()


class RefinerTask:
    """The Stage-2 :class:`~talkinghead.train.loop.TrainTask`.

    ``models``: ``generator`` (:class:`MemoryAugmentedGenerator`: U-Net, key network, memory)
    and ``discriminator`` (:class:`PatchDiscriminator`), both built from a ``model.json`` spec
    (:func:`model_spec_from_config`). Optimisers ``generator`` (U-Net), ``discriminator`` and
    ``key`` (key network), Adam ``(beta1, 0.999)``. Under ``torchrun`` see the module docstring.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        lr: float = 2e-4,
        lambda_l1: float = 100.0,
        lambda_mask: float = 0.1,
        lambda_tv: float = 1e-5,
        beta1: float = 0.5,
        image_rows: int = 4,
    ):
        self.spec = dict(spec)
        self.models = {
            "generator": build_generator(spec),
            "discriminator": PatchDiscriminator(**spec["discriminator"]),
        }
        self.lr = float(lr)
        self.betas = (float(beta1), 0.999)
        self.lambdas = {"lambda_l1": float(lambda_l1), "lambda_mask": float(lambda_mask), "lambda_tv": float(lambda_tv)}
        self.image_rows = int(image_rows)
        self.identity_condition = bool(spec.get("identity_condition", True))
        self.grad_clip: float | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._unet: torch.nn.Module | None = None  # the generator's U-Net as trained (DDP-wrapped under torchrun)

    # ----------------------------------------------------------------- loop hooks
    def wrap_model(self, name: str, model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
        """The discriminator DDP-wrapped whole; the generator stays plain with only its U-Net
        wrapped (kept for :meth:`training_step`), after its key network and memory are made
        rank 0's (DDP does the same for what it wraps). Plain modules in a single process."""
        if name != "generator":
            return wrap_ddp(model, info)
        broadcast_tensors([*model.key_parameters(), *model.memory.buffers()])
        self._unet = wrap_ddp(model.generator, info)
        return model

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        generator, discriminator = self.models["generator"], self.models["discriminator"]
        adam = lambda params: torch.optim.Adam(params, lr=self.lr, betas=self.betas)  # noqa: E731
        self.optimizers = {
            "generator": adam(generator.generator_parameters()),
            "discriminator": adam(discriminator.parameters()),
            "key": adam(generator.key_parameters()),
        }
        return self.optimizers

    def on_train_start(self, trainer) -> None:
        self.grad_clip = trainer.cfg.grad_clip

    def generator_identity(self, identity: torch.Tensor) -> torch.Tensor:
        """What the generator is conditioned on: the true identity (teacher forcing), or zeros
        for a model trained without identity (ablation)."""
        return identity if self.identity_condition else torch.zeros_like(identity)

    def _clip(self, module: torch.nn.Module) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)

    @torch.no_grad()
    def update_memory(self, inputs: torch.Tensor, identity: torch.Tensor) -> dict[str, int]:
        """Write every rank's (key of frame t, true identity) pairs of this step into the memory,
        in rank order -- the global batch's order, as one process would write it -- so every
        rank applies the same update and the memory stays identical. Returns merge/write counts."""
        generator = unwrap(self.models["generator"])
        keys = all_gather_rows(generator.query(inputs))  # [global B, key_dim]
        return generator.memory.update(keys, all_gather_rows(identity))  # identities [global B, D]

    def training_step(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        generator = unwrap(self.models["generator"])  # key network and memory: synchronised here
        discriminator = self.models["discriminator"]  # DDP-wrapped under torchrun
        unet = self._unet if self._unet is not None else generator.generator
        opt = self.optimizers
        inputs, target, identity = batch["inputs"], batch["target"], batch["identity"]  # [B,9,S,S], [B,3,S,S], [B,D]

        # 1. Memory: the margin loss trains the key network, then (key, true identity) is written.
        opt["key"].zero_grad(set_to_none=True)
        memory_loss = generator.memory_loss(inputs, identity)
        memory_loss.backward()
        average_gradients(generator.key_parameters())  # outside any DDP wrapper: averaged over ranks here
        opt["key"].step()
        self.update_memory(inputs, identity)

        # 2. Generator forward with the true identity (teacher forcing); the U-Net is what the
        # generator's forward runs when given the identity.
        out = unet(inputs, self.generator_identity(identity))

        # 3. Discriminator on (inputs, real) vs (inputs, fake).
        _set_requires_grad(discriminator, True)
        opt["discriminator"].zero_grad(set_to_none=True)
        d_real = discriminator(torch.cat([inputs, target], dim=1))
        d_fake = discriminator(torch.cat([inputs, out.image.detach()], dim=1))
        d_losses = discriminator_loss(d_real, d_fake)
        d_losses["total"].backward()
        self._clip(discriminator)
        opt["discriminator"].step()

        # 4. Generator against the frozen discriminator (the plain module: no gradient of its own).
        _set_requires_grad(discriminator, False)
        opt["generator"].zero_grad(set_to_none=True)
        g_losses = generator_loss(unwrap(discriminator)(torch.cat([inputs, out.image], dim=1)), out.image, target,
                                  out.mask, **self.lambdas)
        g_losses["total"].backward()
        self._clip(generator.generator)
        opt["generator"].step()
        _set_requires_grad(discriminator, True)

        return {
            "g_total": g_losses["total"].detach(),
            "g_gan": g_losses["gan"].detach(),
            "g_l1": g_losses["l1"].detach(),
            "g_mask": g_losses["mask"].detach(),
            "d_total": d_losses["total"].detach(),
            "memory": memory_loss.detach(),
            "memory_used": torch.tensor(float(generator.memory.num_filled)),
        }

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Teacher-forced L1 / PSNR, the blended input's PSNR and, once the memory holds entries,
        PSNR with the identity recalled from memory and how often the recalled identity is the
        right person (cosine above the memory's threshold)."""
        generator = self.models["generator"]
        inputs, target, identity = batch["inputs"], batch["target"], batch["identity"]
        out = generator(inputs, self.generator_identity(identity))
        metrics = {
            "l1": F.l1_loss(out.image, target),
            "psnr": _psnr(out.image, target),
            "psnr_input": _psnr(inputs[:, -3:], target),
            "mask_mean": out.mask.mean(),
        }
        if generator.memory.num_filled:
            recalled = generator.read_identity(inputs)
            if self.identity_condition:
                metrics["psnr_memory"] = _psnr(generator(inputs, recalled).image, target)
            same = F.cosine_similarity(recalled, identity.to(recalled.dtype), dim=1) > generator.memory.threshold
            metrics["identity_recall"] = same.float().mean()
        return metrics

    @torch.no_grad()
    def log_images(self, writer, batch: Mapping[str, torch.Tensor], step: int) -> None:
        """A grid, one row per item: input frame t | output | target | attention mask."""
        generator = self.models["generator"]
        rows = min(self.image_rows, batch["inputs"].shape[0])
        inputs, target, identity = batch["inputs"][:rows], batch["target"][:rows], batch["identity"][:rows]
        out = generator(inputs, self.generator_identity(identity))
        columns = [_to_unit(inputs[:, -3:]), _to_unit(out.image), _to_unit(target), out.mask.expand(-1, 3, -1, -1)]
        grid = torch.cat([torch.cat(columns, dim=3)[i] for i in range(rows)], dim=1)  # [3, rows*S, 4*S]
        writer.add_image("refiner/input_output_target_mask", grid.clamp(0, 1).cpu(), step)


# ---------------------------------------------------------------------------------------------
# Config -> model spec
# ---------------------------------------------------------------------------------------------
def _plain(node: Any) -> Any:
    """A config node (OmegaConf or mapping) as plain Python containers."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise ConfigError(f"{where}.{key} is not set; see configs/refiner/default.yaml")
    return mapping[key]


#: Keys of ``refiner.train`` and ``refiner.finetune`` (fine-tuning starts from ``train`` and
#: replaces what ``finetune`` states); their values live in configs/refiner/default.yaml only.
SCHEDULE_KEYS = ("lr", "beta1", "batch_size", "max_steps", "max_epochs", "lambda_l1", "lambda_mask", "lambda_tv",
                 "val_frames")


def refiner_schedule(cfg, mode: str) -> dict[str, Any]:
    """The mode's training settings: ``refiner.train``, updated by ``refiner.finetune`` when
    fine-tuning. Every key but ``max_steps``/``max_epochs`` (one of them) must be set; an unknown
    key is a :class:`ConfigError` listing the valid ones."""
    refiner_cfg = _plain(cfg.refiner)
    sections = ("train", "finetune") if mode == "finetune" else ("train",)
    schedule: dict[str, Any] = {}
    for section in sections:
        values = dict(refiner_cfg.get(section) or {})
        unknown = sorted(set(values) - set(SCHEDULE_KEYS))
        if unknown:
            raise ConfigError(f"unknown config key refiner.{section}.{unknown[0]}; valid keys: {', '.join(sorted(SCHEDULE_KEYS))}")
        schedule.update(values)
    where = f"refiner.{sections[-1]}"
    for key in ("lr", "beta1", "batch_size", "lambda_l1", "lambda_mask", "lambda_tv", "val_frames"):
        _require(schedule, key, where)
    if not schedule.get("max_steps") and not schedule.get("max_epochs"):
        raise ConfigError(f"{where}: set max_steps or max_epochs")
    val = schedule["val_frames"]
    if not (isinstance(val, (list, tuple)) and len(val) == 2 and all(isinstance(v, int) for v in val)):
        raise ConfigError(f"{where}.val_frames={val!r} must be [start, stop] frame indices (e.g. [250, 300])")
    return schedule


def model_spec_from_config(model_cfg: Mapping[str, Any]) -> dict:
    """``refiner.model`` config -> the ``model.json`` spec (everything that rebuilds the model)."""
    m = dict(_plain(model_cfg))
    where = "refiner.model"
    image_size = int(_require(m, "image_size", where))
    render_scale = int(m.get("render_scale") or 1)
    if render_scale < 1:
        raise ConfigError(f"refiner.model.render_scale={render_scale} must be a positive integer (2 = render at 2x)")
    generator = {
        "in_channels": 9,
        "image_size": image_size,
        "ngf": int(_require(m, "ngf", where)),
        "identity_dim": int(m.get("identity_dim", 512)),
        "style_dim": int(m.get("style_dim", 256)),
        "dropout": float(m.get("dropout", 0.5)),
        "key_dim": int(m.get("key_dim", 512)),
        "memory_slots": int(m.get("memory_slots", 30000)),
        "top_k": int(m.get("top_k", 256)),
        "margin": float(m.get("margin", 0.3)),
        "threshold": float(m.get("threshold", 0.98)),
    }
    identity_feature = identity_feature_spec(m.get("identity_feature"))
    identity_feature.setdefault("out_dim", generator["identity_dim"])
    return {
        "stage": STAGE_NAME,
        "format_version": SPEC_VERSION,
        "generator": generator,
        "key_encoder": key_encoder_spec(m.get("key_encoder")),
        "identity_feature": identity_feature,
        "discriminator": {
            "in_channels": 12,
            "ndf": int(m.get("ndf", 64)),
            "n_layers": int(m.get("d_layers", 3)),
            "norm": str(m.get("d_norm", "batch")),
        },
        "render_size": image_size * render_scale,
        "identity_every": int(m.get("identity_every", 25)),
        "identity_condition": bool(m.get("identity_condition", True)),
    }


# ---------------------------------------------------------------------------------------------
# Training entry point
# ---------------------------------------------------------------------------------------------
def _load_clips(clips: Sequence[Any]) -> list:
    return [c if isinstance(c, PersonClip) else read_clip(c, load_audio=False) for c in clips]


def train_refiner(
    clips: Sequence[Any],
    out_dir: str | Path,
    cfg,
    mode: str = "general",
    init_dir: str | Path | None = None,
    val_clips: Sequence[Any] | None = None,
) -> Path:
    """Train the Stage-2 refiner and write its trained-stage directory; returns ``out_dir``.

    ``cfg`` is the composed config (``refiner.model`` / ``.train`` / ``.finetune``, ``trainer``,
    ``renderer``, ``seed``). ``mode="general"``: a new model from ``refiner.model`` over frames
    2.. of every clip, with ``refiner.train``. ``mode="finetune"``: the architecture and weights
    of the general model in ``init_dir``, trained on frames 2-299 (the clips' training frames
    from 2) with ``refiner.finetune`` (lr 1e-4, lambda_mask 2). ``val_clips``: clips validated
    during training on the schedule's ``val_frames`` (general: held-out persons' frames 250-299,
    so their 300-399 stay unseen; fine-tuning: the person's own 300-399, for monitoring only --
    nothing is selected on them); fine-tuning defaults to the training clips.
    Rerunning the same call resumes from the last checkpoint. Under ``torchrun`` every process
    calls it with the same arguments (see the module docstring).
    """
    if mode not in MODES:
        raise ConfigError(f"refiner training mode={mode!r} is unknown; use one of {', '.join(MODES)}")
    refiner_cfg = _plain(cfg.refiner)
    schedule = refiner_schedule(cfg, mode)
    clips = _load_clips(clips)
    if not clips:
        raise InputError("no person clips to train the refiner on; check data.root (scripts/make_synthetic.py makes some)")

    if mode == "finetune":
        if init_dir is None:
            raise ConfigError("fine-tuning the refiner needs the general model directory (config key general)")
        spec = read_model_json(init_dir, STAGE_NAME, f"python scripts/train.py stage=refiner out={init_dir}")
        train_stop = min(c.train_slice.stop for c in clips)
        frames = slice(2 + min(c.train_slice.start for c in clips), train_stop)
        if val_clips is None:
            val_clips = clips
    else:
        spec = model_spec_from_config(refiner_cfg["model"])
        frames = slice(2, None)
    spec = {**spec, "mode": mode, "init": str(init_dir) if init_dir is not None else None}

    out_dir = Path(out_dir)
    overrides = {"out_dir": str(out_dir), "batch_size": int(schedule["batch_size"]), "seed": int(cfg.seed),
                 "max_steps": schedule.get("max_steps"), "max_epochs": schedule.get("max_epochs"),
                 "desc": f"refiner ({mode})"}
    trainer_cfg = TrainerConfig.coerce(_plain(cfg.trainer), **overrides)
    world_size = init_distributed(trainer_cfg.device).world_size  # joins the torchrun group now (for the barriers)
    if trainer_cfg.batch_size % world_size:
        key = f"refiner.{'finetune' if mode == 'finetune' else 'train'}.batch_size"
        raise ConfigError(f"{key}={trainer_cfg.batch_size} is the global batch and must be a multiple of the {world_size} "
                          f"processes; set {key}={world_size * max(1, trainer_cfg.batch_size // world_size)}")
    if is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / DONE_FILE).unlink(missing_ok=True)  # a rerun is not finished until it says so again
        write_json_atomic(out_dir / MODEL_FILE, spec)

    image_size = int(spec["generator"]["image_size"])
    renderer = get_renderer(getattr(cfg, "renderer", None) or "auto")
    identity_feature = make_identity_feature(spec["identity_feature"])
    data_args = dict(image_size=image_size, renderer=renderer, identity_feature=identity_feature,
                     render_size=int(spec["render_size"]), cache_dir=out_dir / RENDER_CACHE_DIR)
    val_start, val_stop = (int(v) for v in schedule["val_frames"])
    val_clips = [c for c in _load_clips(val_clips or []) if c.num_frames > val_start]  # clips long enough
    if not is_main():
        barrier()  # rank 0 renders the inputs into the cache first; the others read them
    train_set = RefinerDataset(clips, frames=frames, augment=True, **data_args)
    val_set = None
    if val_clips:
        val_set = RefinerDataset(val_clips, frames=slice(val_start, val_stop), augment=False, **data_args)
    if is_main():
        barrier()

    seed_everything(int(cfg.seed))  # the initial weights depend on the seed only
    task = RefinerTask(
        spec,
        lr=float(schedule["lr"]),
        lambda_l1=float(schedule["lambda_l1"]),
        lambda_mask=float(schedule["lambda_mask"]),
        lambda_tv=float(schedule["lambda_tv"]),
        beta1=float(schedule["beta1"]),
    )
    if mode == "finetune":
        load_weights(task.models, Path(init_dir) / WEIGHTS_FILE)  # the resume below overrides it if a checkpoint exists

    trainer = Trainer(task, train_set, val_set, trainer_cfg)
    started = time.perf_counter()
    metrics = trainer.fit()
    generator = task.models["generator"]
    check_same_on_all_ranks({**{f"memory.{k}": v for k, v in generator.memory.state_dict().items()},
                             **{f"key.{i}": p for i, p in enumerate(generator.key_parameters())}},
                            "the refiner's identity memory and key network")
    if is_main():
        export_weights(task.models, out_dir / WEIGHTS_FILE, metadata={"stage": STAGE_NAME, "mode": mode})
        write_json_atomic(out_dir / DONE_FILE, {
            "stage": STAGE_NAME,
            "mode": mode,
            "steps": int(trainer.step),
            "seconds_this_run": round(time.perf_counter() - started, 1),
            "train_items": len(train_set),
            "world_size": trainer.dist.world_size,
            "clips": [c.name for c in clips],
            "metrics": {k: float(v) for k, v in metrics.items()},
        })
        log.info("refiner (%s) finished: %s", mode, out_dir)
    barrier()
    return out_dir
