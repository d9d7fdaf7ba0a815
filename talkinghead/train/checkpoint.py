"""Checkpoints (for resuming) and exported weights (for inference and fine-tuning).

A training checkpoint is a directory ``OUT_DIR/checkpoints/step_XXXXXXX/`` holding

- ``models.safetensors``: every model's ``state_dict`` (parameters and persistent buffers),
  keys prefixed by the model's name (``"generator.conv1.weight"``), unwrapped from DDP;
- ``state.pt``: optimiser states, the position in training (step, epoch, batch within the
  epoch), every rank's RNG states (torch, CUDA, numpy, python) and the task's extra state;
  loadable with ``torch.load(weights_only=True)``;
- ``meta.json``: written last, with the SHA-256 of the two files above.

It is written into a hidden temporary directory, fsynced, then renamed into place with
:func:`os.replace`, so a crash never leaves a half-written ``step_*`` directory; a directory
that fails the checksum anyway (disk trouble, someone truncated a file) is skipped with a
warning in favour of the previous one. The newest ``keep_last`` checkpoints are kept.

Exported weights are a single ``.safetensors`` file with the same prefixed keys
(:func:`export_weights` / :func:`load_weights`); :func:`load_initial_weights` starts a
fine-tuning run from a general run's weights file, checkpoint directory or output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import safetensors.torch
import torch

from talkinghead.errors import TrainingError
from talkinghead.train.distributed import unwrap
from talkinghead.weights import CheckpointWarning, _check_model_names, _load_model_tensors, load_weights  # noqa: F401 (re-exported)

__all__ = [
    "CHECKPOINTS_DIRNAME",
    "CheckpointWarning",
    "checkpoint_dir_name",
    "list_checkpoints",
    "verify_checkpoint",
    "find_latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "models_state_tensors",
    "export_weights",
    "load_weights",
    "load_initial_weights",
    "resolve_weights_file",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINTS_DIRNAME = "checkpoints"
MODELS_FILE = "models.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT_NAME = "talkinghead-checkpoint"
FORMAT_VERSION = 1

_STEP_DIR_RE = re.compile(r"^step_(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA if in use, numpy global, python ``random``),
    in types that ``torch.load(weights_only=True)`` accepts."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss),
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn("checkpoint CUDA RNG state is for a different number of GPUs; not restored", CheckpointWarning)
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------------------------
# Small file helpers
# ----------------------------------------------------------------------------------------------


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """Serialise in memory and write with a normal ``open`` (honours the umask; the library's
    own writer creates owner-only files), then fsync."""
    payload = safetensors.torch.save(tensors, metadata=dict(metadata))
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on some platforms/filesystems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Model weights <-> flat tensor dicts
# ----------------------------------------------------------------------------------------------


def models_state_tensors(models: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """All models' state dicts as one flat dict of CPU tensors, keys ``"<model>.<key>"``.

    Tensors are copied (so tied weights do not share storage, which safetensors refuses).
    """
    _check_model_names(models)
    flat: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        for key, value in unwrap(model).state_dict().items():
            if not isinstance(value, torch.Tensor):
                raise TrainingError(
                    f"model '{name}' has non-tensor state '{key}' (get_extra_state); store it as a buffer so it can be saved"
                )
            flat[f"{name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    return flat


# ----------------------------------------------------------------------------------------------
# Training checkpoints
# ----------------------------------------------------------------------------------------------


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, dir)`` of every ``step_*`` directory under ``root``, oldest first (not verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def verify_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Return the checkpoint's meta if it is complete and its files match their checksums;
    raise :class:`TrainingError` saying what is wrong otherwise."""
    ckpt_dir = Path(ckpt_dir)
    meta_path = ckpt_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise TrainingError(f"{ckpt_dir} is incomplete (no {META_FILE})") from None
    except (OSError, ValueError) as err:
        raise TrainingError(f"{meta_path} is unreadable ({err})") from None
    if meta.get("format") != FORMAT_NAME or not isinstance(meta.get("files"), dict):
        raise TrainingError(f"{meta_path} is not a {FORMAT_NAME} meta file")
    for filename, info in meta["files"].items():
        path = ckpt_dir / filename
        if not path.is_file():
            raise TrainingError(f"{path} is missing")
        if path.stat().st_size != info.get("bytes") or _sha256(path) != info.get("sha256"):
            raise TrainingError(f"{path} is corrupt (size or checksum differs from {META_FILE})")
    return meta


def find_latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``root`` that passes :func:`verify_checkpoint`; newer ones
    that fail are skipped with a :class:`CheckpointWarning`."""
    for _step, ckpt_dir in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(ckpt_dir)
        except TrainingError as err:
            warnings.warn(f"skipping checkpoint {ckpt_dir}: {err}", CheckpointWarning)
            continue
        return ckpt_dir
    return None


def _remove_stale(root: Path) -> None:
    """Delete temporary/trash directories left by a writer that was killed."""
    for child in root.iterdir():
        if child.name.startswith((".tmp_", ".trash_")) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    keep_last: int = 2,
) -> Path:
    """Atomically write ``root/step_XXXXXXX/`` and prune to the newest ``keep_last``.

    ``state`` is stored in ``state.pt`` next to the optimiser states (call this on rank 0
    only). An existing directory for the same step is replaced.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    final = root / checkpoint_dir_name(step)
    tmp = root / f".tmp_{final.name}_{os.getpid()}"
    tmp.mkdir()
    try:
        models_path = tmp / MODELS_FILE
        _write_safetensors(
            models_state_tensors(models),
            models_path,
            {"format": FORMAT_NAME, "models": json.dumps(sorted(models)), "step": str(step)},
        )
        state_path = tmp / STATE_FILE
        torch.save(
            {"optimizers": {name: opt.state_dict() for name, opt in optimizers.items()}, **state},
            state_path,
        )
        _fsync_file(state_path)
        files = {
            path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)} for path in (models_path, state_path)
        }
        full_meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": sorted(models),
            "optimizers": sorted(optimizers),
            **(dict(meta) if meta else {}),
            "files": files,
        }
        meta_path = tmp / META_FILE
        meta_path.write_text(json.dumps(full_meta, indent=2, default=str))
        _fsync_file(meta_path)
        _fsync_dir(tmp)
        if final.exists():  # same step written before (e.g. a corrupt one): swap it out
            trash = root / f".trash_{final.name}_{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _step, old in list_checkpoints(root)[: -max(int(keep_last), 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    ckpt_dir: str | os.PathLike,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load weights into ``models`` (strict) and, if given, optimiser states; return the rest
    of ``state.pt`` (step, epoch, RNG states, ...). Raises :class:`TrainingError` on any
    problem, naming the directory."""
    ckpt_dir = Path(ckpt_dir)
    try:
        tensors = safetensors.torch.load_file(str(ckpt_dir / MODELS_FILE), device="cpu")
        state = torch.load(ckpt_dir / STATE_FILE, map_location=map_location, weights_only=True)
    except TrainingError:
        raise
    except Exception as err:  # noqa: BLE001 - any read failure means the checkpoint is unusable
        raise TrainingError(f"cannot read checkpoint {ckpt_dir} ({type(err).__name__}: {err})") from None
    _load_model_tensors(models, tensors, ckpt_dir / MODELS_FILE, strict=True)
    saved_optimizers = state.pop("optimizers", {})
    for name, optimizer in (optimizers or {}).items():
        if name not in saved_optimizers:
            raise TrainingError(
                f"checkpoint {ckpt_dir} has no state for optimizer '{name}' (it has: {', '.join(saved_optimizers) or 'none'}); "
                "resume with the same task, or start a fresh run with trainer.resume=false"
            )
        try:
            optimizer.load_state_dict(saved_optimizers[name])
        except (ValueError, KeyError, RuntimeError) as err:
            raise TrainingError(
                f"checkpoint {ckpt_dir}: optimizer '{name}' state does not fit ({err}); "
                "resume with the same task config, or start a fresh run with trainer.resume=false"
            ) from None
    return state


# ----------------------------------------------------------------------------------------------
# Exported weights
# ----------------------------------------------------------------------------------------------


def export_weights(task_or_models, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the models' weights (a task's ``.models`` or a ``{name: module}`` dict) to one
    ``.safetensors`` file, atomically. Returns the path."""
    models = getattr(task_or_models, "models", task_or_models)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}_{os.getpid()}")
    info = {"format": FORMAT_NAME, "models": json.dumps(sorted(models)), **{str(k): str(v) for k, v in (metadata or {}).items()}}
    try:
        _write_safetensors(models_state_tensors(models), tmp, info)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def resolve_weights_file(path: str | os.PathLike) -> Path | None:
    """Map what a user may pass as "the general weights" to a ``.safetensors`` file:
    the file itself, a checkpoint directory, or a training output directory (its newest valid
    checkpoint). ``None`` if nothing usable is there."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / MODELS_FILE).is_file() and (path / META_FILE).is_file():
        try:
            verify_checkpoint(path)
        except TrainingError as err:
            warnings.warn(f"skipping checkpoint {path}: {err}", CheckpointWarning)
            return None
        return path / MODELS_FILE
    for root in (path / CHECKPOINTS_DIRNAME, path):
        latest = find_latest_checkpoint(root)
        if latest is not None:
            return latest / MODELS_FILE
    return None


def load_initial_weights(
    models: Mapping[str, torch.nn.Module],
    path: str | os.PathLike,
    produced_by: str = "python scripts/train.py",
    strict: bool = True,
) -> Path:
    """Initialise ``models`` from a general run before fine-tuning.

    ``path`` may be a ``.safetensors`` file, a checkpoint directory or a training output
    directory. ``produced_by`` is the command that creates it, quoted in the error when it is
    missing. Returns the file actually loaded.
    """
    weights = resolve_weights_file(path)
    if weights is None:
        raise TrainingError(
            f"initial weights not found at {Path(path).expanduser()}; produce them with `{produced_by}` "
            "or point the config at an existing weights file / training output directory"
        )
    load_weights(models, weights, strict=strict)
    return weights
