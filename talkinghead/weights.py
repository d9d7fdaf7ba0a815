"""Model weights in ``.safetensors`` files <-> modules: the one loader, shared by training
(checkpoints, resume, initial weights: ``talkinghead/train/checkpoint.py``) and inference
(``pipeline/stage1.py``, ``pipeline/stage2.py``), so that loading a trained stage never imports
training code. A file holds every model of a task under ``<model name>.<state-dict key>``.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Mapping

import safetensors.torch
import torch

from talkinghead.errors import MissingWeightsError, TrainingError


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (partial or corrupt) or could not be used fully."""


def _check_model_names(models: Mapping[str, torch.nn.Module]) -> None:
    for name in models:
        if not name or "." in name:
            raise TrainingError(f"model name {name!r} must be non-empty and contain no '.'; rename the entry in task.models")


def _describe_keys(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _load_model_tensors(
    models: Mapping[str, torch.nn.Module],
    tensors: Mapping[str, torch.Tensor],
    source: Path,
    strict: bool,
) -> None:
    """Copy prefixed tensors into each model in place (parameter objects are kept, so
    optimisers built over them stay valid). Model names in the file that are not in
    ``models`` are ignored (e.g. a discriminator when only the generator is loaded)."""
    _check_model_names(models)
    by_model: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        by_model.setdefault(name, {})[rest] = value
    for name, model in models.items():
        module = unwrap(model)
        expected = module.state_dict()
        given = by_model.get(name)
        if given is None:
            if not expected:
                continue
            if strict:
                raise TrainingError(
                    f"{source} has no weights for model '{name}' (it holds: {', '.join(sorted(by_model)) or 'nothing'}); "
                    "pass the weights produced by the matching training stage"
                )
            warnings.warn(f"{source} has no weights for model '{name}'; left as initialised", CheckpointWarning)
            continue
        mismatched = [
            f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in given and tuple(given[k].shape) != tuple(v.shape)
        ]
        if mismatched:
            raise TrainingError(
                f"{source}: weights of model '{name}' have other shapes ({_describe_keys(mismatched)}); "
                "they were made with a different model config, use the same model config as the run that wrote them"
            )
        missing = [k for k in expected if k not in given]
        unexpected = [k for k in given if k not in expected]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {_describe_keys(missing)}")
            if unexpected:
                parts.append(f"unexpected {_describe_keys(unexpected)}")
            raise TrainingError(
                f"{source}: weights of model '{name}' do not match the model ({'; '.join(parts)}); "
                "use the same model config as the run that wrote them"
            )
        module.load_state_dict({k: v for k, v in given.items() if k in expected}, strict=False)


def load_weights(models: Mapping[str, torch.nn.Module], path: str | os.PathLike, strict: bool = True) -> None:
    """Load a ``.safetensors`` file written by :func:`export_weights` (or a checkpoint's
    ``models.safetensors``) into ``models`` in place.

    ``strict``: every model must be in the file with exactly its keys; extra models in the
    file are always ignored. Shape mismatches always raise :class:`TrainingError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file not found: {path}; train the model first or pass the right path")
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001
        raise TrainingError(f"cannot read weights file {path} ({type(err).__name__}: {err}); re-export or re-train it") from None
    _load_model_tensors(models, tensors, path, strict=strict)


@torch.no_grad()
def average_weights(name: str, model: torch.nn.Module, paths: "list[str | os.PathLike]") -> None:
    """A weight average ("model soup", Wortsman et al. 2022): set ``model``'s floating-point
    parameters and buffers (BatchNorm statistics included) to the mean of its own values and those
    of model ``name`` in each weight file of ``paths``, in place. The files must hold the same
    architecture (runs from the same starting weights: averaging unrelated runs is meaningless).
    Integer buffers (BatchNorm's step counters) keep ``model``'s values."""
    module = unwrap(model)
    total = {k: v.double() for k, v in module.state_dict().items() if v.is_floating_point()}
    for path in paths:
        member = copy.deepcopy(module)
        load_weights({name: member}, path)
        for key, value in member.state_dict().items():
            if key in total:
                total[key] += value.double()
    state = module.state_dict()
    for key, value in total.items():
        state[key].copy_((value / (len(paths) + 1)).to(state[key].dtype))
