"""The one training loop both stages share.

A stage describes *what* to train as a :class:`TrainTask` (models, optimisers, one step, one
validation step); :class:`Trainer` does the rest the same way for both:

- data order fixed by ``(seed, epoch)``: a per-epoch permutation cut into *global* batches,
  each global batch split across ranks (:class:`EpochBatchSampler`), so N processes with
  ``batch_size // N`` each see exactly the samples one process sees with ``batch_size``;
- per-sample randomness: each ``dataset[i]`` call runs with the torch/numpy/python RNGs seeded
  from ``(seed, epoch, i)`` (and the caller's RNG state restored afterwards), so augmentations
  do not depend on worker count, world size or resuming;
- checkpoints every ``ckpt_every`` steps and at the end (:mod:`talkinghead.train.checkpoint`),
  resumed automatically so that a killed run finishes with the same weights as one that was
  never interrupted (CPU; bit-exact);
- TensorBoard scalars (losses, validation metrics, learning rates) and a tqdm bar on rank 0;
- a clear :class:`~talkinghead.errors.TrainingError` as soon as a loss is NaN/inf, without
  writing a checkpoint after the bad step;
- multi-process data parallel under ``torchrun`` (:mod:`talkinghead.train.distributed`).

Step numbering: ``trainer.step`` counts finished optimisation steps. ``training_step(batch,
step)`` receives the number of steps finished before it (0 for the first); checkpoints,
logging and validation happen when ``trainer.step`` reaches a multiple of their interval.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm.auto import tqdm

from talkinghead.errors import ConfigError, TrainingError
from talkinghead.train import checkpoint as ckpt
from talkinghead.train import distributed as dist_utils
from talkinghead.train.distributed import DistInfo, unwrap

__all__ = [
    "TrainTask",
    "TrainerConfig",
    "Trainer",
    "EpochBatchSampler",
    "seed_everything",
    "set_deterministic",
    "mix_seed",
    "move_to_device",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Task protocol and configuration
# ----------------------------------------------------------------------------------------------


@runtime_checkable
class TrainTask(Protocol):
    """What a stage provides.

    Required:

    - ``models``: ``{name: nn.Module}``; saved/loaded by name (names without dots). The Trainer
      moves them to its device and, when distributed, replaces entries that have trainable
      parameters with DDP wrappers, so task code must always read ``self.models[name]``.
    - ``configure_optimizers()``: called once the models are on the device (and wrapped).
    - ``training_step(batch, step)``: one optimisation step (its own ``zero_grad`` / ``backward``
      / ``optimizer.step``); returns detached scalar losses for logging, checked for NaN/inf.
    - ``validation_step(batch)``: scalar metrics (batch means); averaged over the validation
      set, weighted by batch size, and across ranks. Runs under ``no_grad`` in eval mode on
      the plain (unwrapped) models.

    Optional (looked up with ``getattr``):

    - ``log_images(writer, batch, step)``: rank 0 only, on a fixed validation batch (or the
      current training batch when there is no validation set), eval mode, ``no_grad``.
    - ``on_train_start(trainer)``: after setup and resume, before the first step (read
      ``trainer.device``, ``trainer.cfg.grad_clip``, ``trainer.optimizers`` here).
    - ``extra_state() -> dict`` / ``load_extra_state(state)``: anything else to checkpoint
      (LR schedulers, counters); plain types and tensors only.
    - ``collate_fn``: replaces ``torch.utils.data.default_collate``.
    - ``wrap_model(name, model, dist_info) -> nn.Module``: replaces the default wrapping of
      ``models[name]`` (:func:`~talkinghead.train.distributed.wrap_ddp` of the whole model),
      for a model trained partly outside its ``forward`` (Stage 2: the U-Net inside the
      generator is wrapped, the key network and the memory are synchronised by the task). Called
      for every model, in a single process too, after it is moved to the device and before
      ``configure_optimizers``; the returned module is what ``task.models[name]`` holds during
      training.
    """

    models: dict[str, torch.nn.Module]

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def training_step(self, batch: Any, step: int) -> dict[str, torch.Tensor]: ...

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]: ...


@dataclass(kw_only=True)
class TrainerConfig:
    """Loop settings; plain fields so ``TrainerConfig(**hydra_node)`` works. The fields of
    :data:`PRESET_KEYS` have no default here: their values are written once, in
    ``configs/trainer/cpu.yaml`` (``gpu.yaml`` states what differs), and a missing one is a
    :class:`ConfigError` naming it.

    Give ``max_steps`` or ``max_epochs`` (both: stop at whichever comes first). Intervals are
    in optimisation steps; ``None`` or ``0`` switches that action off (a final checkpoint and a
    final validation are always made). ``batch_size`` is the GLOBAL batch: each of N processes
    takes ``batch_size // N``.
    """

    out_dir: str
    # the preset's settings (configs/trainer/): required
    device: str
    num_workers: int
    log_every: int | None
    val_every: int | None
    ckpt_every: int | None
    image_every: int | None
    keep_last: int
    resume: bool
    progress: bool
    # set by the stage (its schedule) or fixed
    max_steps: int | None = None
    max_epochs: int | None = None
    batch_size: int = 16
    val_batch_size: int | None = None  # global; defaults to batch_size
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    grad_clip: float | None = None  # for the task to use (e.g. clip_grad_norm_)
    deterministic: bool = True  # cudnn deterministic, no benchmark, deterministic algorithms (warn only)
    find_unused_parameters: bool = False  # passed to DistributedDataParallel
    desc: str = "train"

    def __post_init__(self) -> None:
        self.out_dir = str(self.out_dir)
        if self.max_steps is None and self.max_epochs is None:
            raise ConfigError("trainer: set trainer.max_steps or trainer.max_epochs")
        for key in ("max_steps", "max_epochs", "batch_size", "keep_last"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"trainer.{key}={value!r} must be a positive integer")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ConfigError(f"trainer.val_batch_size={self.val_batch_size!r} must be a positive integer")
        for key in ("log_every", "val_every", "ckpt_every", "image_every", "num_workers"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"trainer.{key}={value!r} must be a non-negative integer (or null)")

    @classmethod
    def coerce(cls, cfg: "TrainerConfig | Mapping[str, Any]", **overrides: Any) -> "TrainerConfig":
        """Build from a config node/dict plus keyword overrides (e.g. the stage's ``out_dir``,
        ``max_steps``, ``batch_size``), naming an unknown key in a :class:`ConfigError`."""
        if isinstance(cfg, cls):
            return dataclasses.replace(cfg, **overrides) if overrides else cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"trainer config must be a mapping, got {type(cfg).__name__}")
        values = {str(k): v for k, v in cfg.items()}
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown trainer config key trainer.{unknown[0]}; valid keys: {', '.join(sorted(known))}")
        if "out_dir" not in values:
            raise ConfigError("trainer.out_dir is required (where checkpoints and logs go)")
        missing = [key for key in PRESET_KEYS if key not in values]
        if missing:
            raise ConfigError(f"trainer.{missing[0]} is not set; see configs/trainer/cpu.yaml")
        return cls(**values)


#: The :class:`TrainerConfig` fields a trainer preset (``configs/trainer/cpu.yaml``) sets.
PRESET_KEYS = ("device", "num_workers", "log_every", "val_every", "ckpt_every", "image_every", "keep_last", "resume",
               "progress")


# ----------------------------------------------------------------------------------------------
# Seeding
# ----------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (order matters): ``mix_seed(seed, epoch, index)``."""
    state = 0
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state >> 1


def seed_everything(seed: int, deterministic: bool | None = None) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and all GPUs); optionally
    switch deterministic algorithms on or off (:func:`set_deterministic`)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)
    if deterministic is not None:
        set_deterministic(deterministic)


def set_deterministic(enabled: bool = True) -> None:
    """cuDNN deterministic and no autotuning, ``torch.use_deterministic_algorithms`` (warning,
    not failing, on ops without a deterministic version) and the cuBLAS workspace setting it
    needs (effective only if set before CUDA starts)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    torch.use_deterministic_algorithms(enabled, warn_only=True)


# ----------------------------------------------------------------------------------------------
# Data: sharded, resumable batch order and per-sample seeding
# ----------------------------------------------------------------------------------------------


class EpochBatchSampler(Sampler[list]):
    """Batches of ``(index, sample_seed)`` for one rank, resumable mid-epoch.

    Epoch ``e`` is a permutation of ``range(num_samples)`` drawn from a ``torch.Generator``
    seeded with ``mix_seed(seed, e)``, cut into global batches of ``global_batch_size``; rank
    ``r`` of ``W`` takes the ``r``-th contiguous ``1/W`` of every global batch. With
    ``drop_last=False`` the last short global batch is padded (wrapping around the epoch) to a
    multiple of ``W``. ``set_epoch(e, start_batch=k)`` skips the first ``k`` global batches by
    index. ``sample_seed = mix_seed(seed, e, index)``.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if global_batch_size % world_size:
            raise ConfigError(
                f"trainer.batch_size={global_batch_size} is not divisible by the number of processes ({world_size}); "
                "make it a multiple"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_samples // self.global_batch_size
        return math.ceil(self.num_samples / self.global_batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order (before cutting into batches)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator)

    def rank_batch(self, order: torch.Tensor, batch: int) -> list[int]:
        """Indices of global batch ``batch`` that belong to this rank."""
        start = batch * self.global_batch_size
        chunk = order[start : start + self.global_batch_size]
        if len(chunk) % self.world_size:  # short last batch: pad by wrapping around the epoch
            pad = self.world_size - len(chunk) % self.world_size
            chunk = torch.cat([chunk, order[:pad].repeat(math.ceil(pad / max(len(order), 1)))[:pad]])
        per_rank = len(chunk) // self.world_size
        return chunk[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.epoch_order(self.epoch)
        for batch in range(self.start_batch, self.batches_per_epoch):
            yield [(index, mix_seed(self.seed, self.epoch, index)) for index in self.rank_batch(order, batch)]

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)


class _SeededSamples(Dataset):
    """Wraps a map-style dataset: ``self[(index, sample_seed)]`` returns ``dataset[index]``
    computed with the global torch (CPU) / numpy / python RNGs seeded from ``sample_seed``.
    The RNG states from before the call are restored afterwards (once per batch, through
    ``__getitems__``), so in the main process training randomness is untouched."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _seeded_sample(self, index: int, sample_seed: int):
        torch.default_generator.manual_seed(sample_seed)  # CPU generator only; CUDA ones untouched
        np.random.seed(sample_seed & 0xFFFFFFFF)
        random.seed(sample_seed)
        return self.dataset[index]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            return [self._seeded_sample(index, sample_seed) for index, sample_seed in keys]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])

    def __getitem__(self, key: tuple[int, int]):
        return self.__getitems__([key])[0]


def _validation_batches(num_samples: int, per_rank_batch: int, rank: int, world_size: int, seed: int) -> list[list]:
    """Rank ``r`` takes samples ``r, r+W, ...`` (no padding, no duplicates), in batches."""
    mine = list(range(rank, num_samples, world_size))
    return [
        [(index, mix_seed(seed, -1, index)) for index in mine[start : start + per_rank_batch]]
        for start in range(0, len(mine), per_rank_batch)
    ]


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in a (nested) dict/list/tuple to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device, non_blocking) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


@dataclass
class _LossMeter:
    """Running sums of the logged losses since the last TensorBoard write."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: total / max(self.count, 1) for key, total in self.sums.items()}


class Trainer:
    """Runs a :class:`TrainTask` over a map-style dataset; see the module docstring.

    ``Trainer(task, train_dataset, val_dataset=None, cfg)`` then ``fit()``. ``cfg`` is a
    :class:`TrainerConfig` or a mapping with its fields. Joins the ``torchrun`` process group if
    there is one (call :func:`talkinghead.train.distributed.cleanup` at the end of the script).
    """

    def __init__(
        self,
        task: TrainTask,
        train_dataset: Dataset,
        val_dataset: Dataset | None = None,
        cfg: TrainerConfig | Mapping[str, Any] | None = None,
    ):
        if cfg is None:
            raise ConfigError("Trainer needs a trainer config (trainer.out_dir, trainer.max_steps, ...)")
        self.cfg = TrainerConfig.coerce(cfg)
        for attr in ("models", "configure_optimizers", "training_step", "validation_step"):
            if not hasattr(task, attr):
                raise TypeError(f"{type(task).__name__} is not a TrainTask: it has no '{attr}'")
        if not isinstance(task.models, dict) or not all(isinstance(m, torch.nn.Module) for m in task.models.values()):
            raise TypeError(f"{type(task).__name__}.models must be a dict of torch.nn.Module")
        for name, dataset in (("train", train_dataset), ("validation", val_dataset)):
            if dataset is not None and not hasattr(dataset, "__len__"):
                raise TypeError(f"the {name} dataset must be map-style (define __len__ and __getitem__)")
        if len(train_dataset) == 0:
            raise ConfigError("the training dataset is empty; check the data config (data.root)")

        self.task = task
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset if val_dataset is not None and len(val_dataset) > 0 else None
        if self.cfg.deterministic:
            set_deterministic(True)
        self.dist: DistInfo = dist_utils.init_distributed(self.cfg.device)
        self.device = self.dist.device
        self.out_dir = Path(self.cfg.out_dir)
        self.checkpoint_root = self.out_dir / ckpt.CHECKPOINTS_DIRNAME

        self.train_sampler = EpochBatchSampler(
            len(train_dataset),
            self.cfg.batch_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=self.cfg.seed,
            shuffle=self.cfg.shuffle,
            drop_last=self.cfg.drop_last,
        )
        if self.train_sampler.batches_per_epoch == 0:
            raise ConfigError(
                f"the training set has {len(train_dataset)} samples, fewer than trainer.batch_size={self.cfg.batch_size}; "
                "lower trainer.batch_size or set trainer.drop_last=false"
            )
        step_limits = [self.cfg.max_steps] if self.cfg.max_steps else []
        if self.cfg.max_epochs:
            step_limits.append(self.cfg.max_epochs * self.train_sampler.batches_per_epoch)
        self.total_steps = min(step_limits)

        self.step = 0  # finished optimisation steps
        self.epoch = 0
        self.batch_in_epoch = 0  # global batches of `epoch` already consumed
        self.start_step = 0
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.last_checkpoint: Path | None = None
        self.writer = None
        self._plain_models: dict[str, torch.nn.Module] = {name: unwrap(m) for name, m in task.models.items()}
        self._last_saved_step: int | None = None
        self._last_val: tuple[int, dict[str, float]] | None = None
        self._last_image_step: int | None = None
        self._image_batch = None
        self._val_loader: DataLoader | None = None
        self._pbar = None

    # ---------------------------------------------------------------- properties / helpers

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def _loader(self, dataset: Dataset, batch_sampler) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            _SeededSamples(dataset),
            batch_sampler=batch_sampler,
            num_workers=workers,
            collate_fn=getattr(self.task, "collate_fn", None) or default_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            # DataLoader draws worker base seeds from this, never from the global RNG, so
            # creating an iterator (at each epoch, or on resume) leaves training RNG untouched.
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    @contextmanager
    def _unwrapped_models(self):
        """Temporarily put the plain modules in ``task.models`` (no DDP collectives)."""
        wrapped = dict(self.task.models)
        self.task.models.update(self._plain_models)
        try:
            yield
        finally:
            self.task.models.update(wrapped)

    @contextmanager
    def _eval_mode(self):
        """Eval mode + no_grad; every submodule's previous mode is restored afterwards."""
        modes = [(m, m.training) for model in self._plain_models.values() for m in model.modules()]
        for model in self._plain_models.values():
            model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for module, training in modes:
                module.training = training

    # ---------------------------------------------------------------- setup

    def _setup(self) -> None:
        wrap_model = getattr(self.task, "wrap_model", None)
        for name, model in self._plain_models.items():
            model.to(self.device)
            if wrap_model is not None:
                self.task.models[name] = wrap_model(name, model, self.dist)
            else:
                self.task.models[name] = dist_utils.wrap_ddp(
                    model, self.dist, find_unused_parameters=self.cfg.find_unused_parameters
                )
        self.optimizers = dict(self.task.configure_optimizers() or {})

        resume_from = self._choose_checkpoint()
        if resume_from is not None:
            self._restore(resume_from)
        else:
            seed_everything(self.cfg.seed + self.dist.rank)
        self.start_step = self.step

        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter  # local: 0.35 s, only the main process writes logs

            self.writer = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=self.step)
            self._pbar = tqdm(
                total=self.total_steps,
                initial=self.step,
                desc=self.cfg.desc,
                disable=None if self.cfg.progress else True,  # None: off when not a TTY
                dynamic_ncols=True,
            )
        on_train_start = getattr(self.task, "on_train_start", None)
        if on_train_start is not None:
            on_train_start(self)

    def _choose_checkpoint(self) -> Path | None:
        """Rank 0 picks the newest valid checkpoint (or moves old ones aside when
        ``resume=False``); every rank gets the same answer."""
        choice = None
        if self.is_main:
            existing = ckpt.list_checkpoints(self.checkpoint_root)
            if self.cfg.resume:
                found = ckpt.find_latest_checkpoint(self.checkpoint_root)
                choice = str(found) if found is not None else None
            elif existing:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                aside, suffix = self.out_dir / f"checkpoints_prev_{stamp}", 1
                while aside.exists():
                    aside, suffix = self.out_dir / f"checkpoints_prev_{stamp}_{suffix}", suffix + 1
                os.replace(self.checkpoint_root, aside)
                warnings.warn(f"trainer.resume=false: moved existing checkpoints to {aside}", ckpt.CheckpointWarning)
        choice = dist_utils.broadcast_object(choice)
        return Path(choice) if choice is not None else None

    def _restore(self, ckpt_dir: Path) -> None:
        state = ckpt.load_checkpoint(ckpt_dir, self._plain_models, self.optimizers, map_location="cpu")
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        if state.get("batches_per_epoch") != self.train_sampler.batches_per_epoch and self.batch_in_epoch:
            warnings.warn(
                f"{ckpt_dir}: the dataset size or batch size changed since this checkpoint; continuing from the next epoch",
                ckpt.CheckpointWarning,
            )
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        load_extra = getattr(self.task, "load_extra_state", None)
        if load_extra is not None and state.get("task") is not None:
            load_extra(state["task"])
        rng_states = state.get("rng") or []
        if len(rng_states) == self.dist.world_size:
            ckpt.restore_rng_state(rng_states[self.dist.rank])
        else:
            warnings.warn(
                f"{ckpt_dir} was written by {len(rng_states)} process(es), now {self.dist.world_size}; RNG re-seeded",
                ckpt.CheckpointWarning,
            )
            seed_everything(mix_seed(self.cfg.seed, self.step, self.dist.rank))
        self.last_checkpoint = ckpt_dir
        self._last_saved_step = self.step
        if self.is_main:
            log.info("resumed from %s (step %d)", ckpt_dir, self.step)

    # ---------------------------------------------------------------- the loop

    def fit(self) -> dict[str, float]:
        """Train to ``total_steps`` (resuming if a checkpoint exists); returns the final
        validation metrics and ``step``."""
        try:
            self._setup()
            loader = self._loader(self.train_dataset, self.train_sampler)
            meter = _LossMeter()
            while self.step < self.total_steps and not self._stop_requested():
                self.train_sampler.set_epoch(self.epoch, self.batch_in_epoch)
                for batch in loader:
                    self._train_step(batch, meter)
                    if self.step >= self.total_steps or self._stop_requested():
                        break
            result = {"step": self.step}
            if self.val_dataset is not None:
                result.update(self.validate())
            if self.cfg.image_every and self._last_image_step != self.step:
                self._log_images(None)
            if self._last_saved_step != self.step:
                self.save_checkpoint()
            if self.writer is not None:
                self.writer.flush()
            return result
        finally:
            self._teardown()

    def _stop_requested(self) -> bool:
        """A task may end training early by setting ``should_stop`` (e.g. from its
        ``on_validation_end(step, metrics)`` hook, called after every periodic validation)."""
        return bool(getattr(self.task, "should_stop", False))

    def _train_step(self, batch: Any, meter: _LossMeter) -> None:
        batch = move_to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        losses = self.task.training_step(batch, self.step)
        values = self._reduce_losses(losses)
        for name, value in values.items():
            if not math.isfinite(value):
                raise self._non_finite_error(name, value)

        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= self.train_sampler.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        meter.add(values)
        if self._pbar is not None:
            self._pbar.update(1)
            self._pbar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

        cfg = self.cfg
        if cfg.log_every and self.step % cfg.log_every == 0:
            self._log_train(meter)
        if cfg.val_every and self.val_dataset is not None and self.step % cfg.val_every == 0:
            result = self.validate()
            on_validation_end = getattr(self.task, "on_validation_end", None)  # e.g. early stopping
            if on_validation_end is not None:
                on_validation_end(self.step, result)
        if cfg.image_every and self.step % cfg.image_every == 0:
            self._log_images(batch)
        if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
            self.save_checkpoint()

    def _reduce_losses(self, losses: Any) -> dict[str, float]:
        """Losses as floats (mean over ranks), with a single device sync."""
        if not isinstance(losses, Mapping):
            raise TypeError(f"training_step must return a dict of scalar losses, got {type(losses).__name__}")
        for name, value in losses.items():
            if torch.is_tensor(value) and value.numel() != 1:
                raise TypeError(f"training_step loss '{name}' has shape {tuple(value.shape)}; return scalars")
        return dist_utils.all_reduce_mean(losses)

    def _non_finite_error(self, name: str, value: float) -> TrainingError:
        if self.last_checkpoint is not None:
            kept = f"the last good checkpoint is kept at {self.last_checkpoint}"
        else:
            kept = f"no checkpoint was written yet (trainer.ckpt_every={self.cfg.ckpt_every})"
        return TrainingError(
            f"loss '{name}' became {value} at step {self.step + 1}; {kept}; lower the learning rate or clip gradients "
            "(trainer.grad_clip), then restart with trainer.resume=false or a new trainer.out_dir "
            "(resuming restores the old optimizer settings)"
        )

    # ---------------------------------------------------------------- logging

    def _log_train(self, meter: _LossMeter) -> None:
        if self.is_main and meter.count:
            elapsed = time.perf_counter() - meter.started
            for name, value in meter.means().items():
                self.writer.add_scalar(f"train/{name}", value, self.step)
            for opt_name, optimizer in self.optimizers.items():
                for i, group in enumerate(optimizer.param_groups):
                    tag = f"lr/{opt_name}" if i == 0 else f"lr/{opt_name}/group{i}"
                    self.writer.add_scalar(tag, float(group["lr"]), self.step)
            self.writer.add_scalar("perf/steps_per_sec", meter.count / max(elapsed, 1e-9), self.step)
            self.writer.add_scalar("progress/epoch", self.epoch, self.step)
            if self._pbar is None or self._pbar.disable:  # no bar (output to a file or a pipe): a line
                self._print_progress(meter.means(), meter.count / max(elapsed, 1e-9))
        meter.sums.clear()
        meter.count = 0
        meter.started = time.perf_counter()

    def _print_progress(self, losses: Mapping[str, float], steps_per_sec: float) -> None:
        """One line on stderr every ``log_every`` steps when no progress bar is shown (nohup, CI,
        a cluster job): ``train step 20/100 (20 %): total=0.0123 l1=0.01 | 3.4 steps/s | ETA 0:00:23``."""
        remaining = max(self.total_steps - self.step, 0) / max(steps_per_sec, 1e-9)
        eta = str(datetime.timedelta(seconds=round(remaining)))
        shown = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
        print(f"{self.cfg.desc} step {self.step}/{self.total_steps} ({100 * self.step // max(self.total_steps, 1)} %): "
              f"{shown} | {steps_per_sec:.2f} steps/s | ETA {eta}", file=sys.stderr, flush=True)

    def _log_images(self, batch: Any) -> None:
        log_images = getattr(self.task, "log_images", None)
        self._last_image_step = self.step
        if log_images is None or not self.is_main:
            return
        if self.val_dataset is not None:
            if self._image_batch is None:  # a fixed batch: the start of the validation set
                first = _validation_batches(len(self.val_dataset), self._val_batch_per_rank(), 0, 1, self.cfg.seed)[0]
                collate = getattr(self.task, "collate_fn", None) or default_collate
                samples = _SeededSamples(self.val_dataset)
                self._image_batch = move_to_device(collate([samples[key] for key in first]), self.device)
            batch = self._image_batch
        if batch is None:
            return
        with self._unwrapped_models(), self._eval_mode():
            log_images(self.writer, batch, self.step)

    # ---------------------------------------------------------------- validation

    def _val_batch_per_rank(self) -> int:
        return max((self.cfg.val_batch_size or self.cfg.batch_size) // self.dist.world_size, 1)

    def validate(self) -> dict[str, float]:
        """Sample-weighted mean of ``validation_step`` metrics over the whole validation set
        (all ranks); logged to TensorBoard under ``val/``."""
        if self.val_dataset is None:
            return {}
        if self._last_val is not None and self._last_val[0] == self.step:
            return dict(self._last_val[1])
        batches = _validation_batches(
            len(self.val_dataset), self._val_batch_per_rank(), self.dist.rank, self.dist.world_size, self.cfg.seed
        )
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        if batches:
            if self._val_loader is None:
                self._val_loader = self._loader(self.val_dataset, batches)
            loader = self._val_loader
            with self._unwrapped_models(), self._eval_mode():
                for indices, batch in zip(batches, loader):
                    metrics = self.task.validation_step(move_to_device(batch, self.device))
                    for name, value in metrics.items():
                        value = torch.as_tensor(value).detach().to(torch.float64).reshape(())
                        sums[name] = sums[name] + value * len(indices) if name in sums else value * len(indices)
                        counts[name] = counts.get(name, 0) + len(indices)
        local = ({name: float(total) for name, total in sums.items()}, counts)
        totals: dict[str, float] = {}
        numbers: dict[str, int] = {}
        for rank_sums, rank_counts in dist_utils.all_gather_objects(local):
            for name, total in rank_sums.items():
                totals[name] = totals.get(name, 0.0) + total
                numbers[name] = numbers.get(name, 0) + rank_counts[name]
        result = {name: totals[name] / numbers[name] for name in sorted(totals)}
        if self.writer is not None:  # rank 0 during fit()
            for name, value in result.items():
                self.writer.add_scalar(f"val/{name}", value, self.step)
            log.info("step %d validation: %s", self.step, ", ".join(f"{k}={v:.5g}" for k, v in result.items()))
        self._last_val = (self.step, result)
        return dict(result)

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``out_dir/checkpoints/step_XXXXXXX`` (rank 0) with every rank's RNG state."""
        rng_states = dist_utils.all_gather_objects(ckpt.capture_rng_state())
        path = self.checkpoint_root / ckpt.checkpoint_dir_name(self.step)
        if self.is_main:
            extra_state = getattr(self.task, "extra_state", None)
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "batches_per_epoch": self.train_sampler.batches_per_epoch,
                "world_size": self.dist.world_size,
                "rng": rng_states,
                "task": extra_state() if extra_state is not None else None,
            }
            meta = {
                "desc": self.cfg.desc,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.dist.world_size,
                "seed": self.cfg.seed,
                "batch_size": self.cfg.batch_size,
            }
            path = ckpt.save_checkpoint(
                self.checkpoint_root, self.step, self._plain_models, self.optimizers, state, meta, self.cfg.keep_last
            )
        dist_utils.barrier()
        self.last_checkpoint = path
        self._last_saved_step = self.step
        return path

    # ---------------------------------------------------------------- teardown

    def _teardown(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self._val_loader = None  # lets persistent workers shut down
        self.task.models.update(self._plain_models)  # leave the task with plain modules
