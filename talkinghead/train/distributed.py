"""Process-group helpers for multi-process (``torchrun``) training.

One process per device, launched by ``torchrun --nproc_per_node=N`` (or
``python -m torch.distributed.run``), which sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
Without those variables everything here is a no-op and training runs in one process.

Why plain ``torch.distributed`` and not Lightning Fabric: Fabric would give us process-group
setup, DDP wrapping and rank-zero helpers, but it is not installed here, and the part we need
is small (init from env vars, wrap models that have trainable parameters, average a few
scalars, a barrier; and for Stage 2, whose key network and identity memory are trained and
updated outside any wrapped ``forward``: average a list of gradients, gather rows from every
rank, broadcast tensors, check that tensors agree across ranks). Writing it directly keeps the
dependency list short and the behaviour visible; the :class:`~talkinghead.train.loop.Trainer`
owns the rest (sharded sampling, rank-0 checkpoints and logging).

Backends: ``nccl`` when the process drives a CUDA device, ``gloo`` on CPU.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.distributed as dist

from talkinghead.devices import resolve_device
from talkinghead.errors import ConfigError, TrainingError

__all__ = [
    "DistInfo",
    "init_distributed",
    "resolve_device",
    "is_distributed",
    "is_main",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_reduce_mean",
    "all_gather_objects",
    "all_gather_rows",
    "average_gradients",
    "broadcast_object",
    "broadcast_tensors",
    "check_same_on_all_ranks",
    "wrap_ddp",
    "unwrap",
    "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``rank`` of ``world_size``; ``device`` it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; unset it or launch with torchrun") from None


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's env vars (idempotent).

    Single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``): nothing is initialised and the
    returned info is rank 0 of 1. On CUDA the process's current device is set to
    ``cuda:LOCAL_RANK`` so that NCCL collectives use the right GPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device, local_rank, key="trainer.device")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def is_distributed() -> bool:
    """True when a process group with more than one member is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that logs and writes checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL collectives need CUDA tensors; gloo works on CPU tensors."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Average scalar values across ranks; returns plain floats.

    Every rank must pass the same keys. Keys are sorted so that dict order cannot differ.
    One collective for the whole dict.
    """
    keys = sorted(values)
    if not keys:
        return {}
    tensors = [torch.as_tensor(values[k]).detach().reshape(()) for k in keys]
    if is_distributed():
        device = _collective_device()
    else:  # stay where the losses are, so there is one device->host copy in all
        device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    stacked = torch.stack([t.to(device=device, dtype=torch.float64) for t in tensors])  # [K]
    if is_distributed():
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked = stacked / dist.get_world_size()
    return dict(zip(keys, stacked.cpu().tolist()))


def all_gather_objects(obj) -> list:
    """Gather one picklable object from every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    """Return rank ``src``'s ``obj`` on every rank (identity in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` ``[n_r, ...]`` concatenated along dim 0 in rank order (rank 0's
    rows first), the same ``[sum n_r, ...]`` on every rank; ``n_r`` may differ between ranks.
    No gradient flows through it. In a single process: ``tensor`` detached."""
    if not is_distributed():
        return tensor.detach()
    device = _collective_device()
    local = tensor.detach().to(device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=device))
    counts = [int(size) for size in sizes]
    padded = local.new_zeros((max(counts), *local.shape[1:]))  # all_gather needs equal shapes
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:count] for rows, count in zip(gathered, counts)]).to(tensor.device)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks, in one collective (no-op in a
    single process): what DDP does for a wrapped module, for parameters trained by a loss that
    is not computed through a wrapped ``forward``. A parameter without a gradient counts as
    zero on that rank and receives the mean. Every rank passes the same parameters in the same
    order."""
    params = list(params)
    if not is_distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_collective_device())  # [sum numel]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    for p, chunk in zip(params, flat.split([p.numel() for p in params])):
        mean = chunk.view_as(p).to(p.device)
        if p.grad is None:
            p.grad = mean.clone()
        else:
            p.grad.copy_(mean)


def _as_collective(tensor: torch.Tensor) -> torch.Tensor:
    """A copy on the collective device; bool as uint8 (not every backend takes bools)."""
    return tensor.detach().to(device=_collective_device(), dtype=torch.uint8 if tensor.dtype == torch.bool else None)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor in place with rank ``src``'s values (no-op in a single process)."""
    if not is_distributed():
        return
    for tensor in tensors:
        buffer = _as_collective(tensor).contiguous()
        dist.broadcast(buffer, src=src)
        with torch.no_grad():
            tensor.copy_(buffer.to(device=tensor.device, dtype=tensor.dtype))


def check_same_on_all_ranks(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`TrainingError` naming the first tensor whose bytes differ between ranks
    (one gather of SHA-1 digests; no-op in a single process)."""
    if not is_distributed():
        return
    names = sorted(tensors)
    digests = [hashlib.sha1(tensors[n].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
               for n in names]
    gathered = all_gather_objects(digests)
    for i, name in enumerate(names):
        values = {rank_digests[i] for rank_digests in gathered}
        if len(values) > 1:
            raise TrainingError(f"{what}: '{name}' differs between the {len(gathered)} processes (a non-deterministic "
                                "op?); rerun the same command to resume from the last checkpoint (rank 0's copy)")


def wrap_ddp(model: torch.nn.Module, info: DistInfo, **ddp_kwargs) -> torch.nn.Module:
    """Wrap in :class:`DistributedDataParallel` when ``world_size > 1`` and the model has
    trainable parameters; otherwise return it unchanged (buffer-only modules stay plain)."""
    if info.world_size <= 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def cleanup() -> None:
    """Destroy the process group if one is active (call once at the end of a script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
