"""Edges of talkinghead/train/checkpoint.py the training-loop tests do not reach: what an
exported weights file says about itself, where it may be written, and the one-line errors and
warnings of loading and resolving initial weights."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import safetensors
import torch

from talkinghead.errors import MissingWeightsError, TrainingError
from talkinghead.train import checkpoint as ckpt


def _models():
    torch.manual_seed(0)
    return {"net": torch.nn.Linear(3, 2), "aux": torch.nn.Linear(2, 1)}


def test_exported_weights_describe_themselves(tmp_path):
    models = _models()
    path = ckpt.export_weights(SimpleNamespace(models=models), tmp_path / "a" / "b" / "w.safetensors",
                               metadata={"step": 7, "stage": "toy"})
    assert path == tmp_path / "a" / "b" / "w.safetensors"  # parent folders created
    with safetensors.safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert meta == {"format": ckpt.FORMAT_NAME, "models": json.dumps(["aux", "net"]), "step": "7", "stage": "toy"}
    # a plain {name: module} dict works too, and loads back
    again = ckpt.export_weights(models, tmp_path / "w2.safetensors")
    fresh = {"net": torch.nn.Linear(3, 2), "aux": torch.nn.Linear(2, 1)}
    ckpt.load_weights(fresh, again)
    assert torch.equal(fresh["net"].weight, models["net"].weight)


def test_loading_errors_are_one_line(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"^weights file not found: .*nothing\.safetensors; train the model first"):
        ckpt.load_weights(_models(), tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(TrainingError, match=r"^cannot read weights file .*bad\.safetensors \(\w*Error: .*\); re-export"):
        ckpt.load_weights(_models(), bad)
    with pytest.raises(TrainingError) as err:
        ckpt.load_initial_weights(_models(), tmp_path / "no_run")
    assert str(err.value) == (f"initial weights not found at {tmp_path / 'no_run'}; produce them with "
                              "`python scripts/train.py` or point the config at an existing weights file / "
                              "training output directory")
    # strict by default: a file without one of the models is refused
    partial = ckpt.export_weights({"net": _models()["net"]}, tmp_path / "partial.safetensors")
    with pytest.raises(TrainingError, match="has no weights for model 'aux'"):
        ckpt.load_initial_weights(_models(), partial)


def test_resolving_initial_weights(tmp_path):
    models = _models()
    root = tmp_path / "run"
    step_dir = ckpt.save_checkpoint(root / "checkpoints", 3, models, {}, {"step": 3})
    assert ckpt.resolve_weights_file(step_dir) == step_dir / ckpt.MODELS_FILE
    assert ckpt.resolve_weights_file(root) == step_dir / ckpt.MODELS_FILE
    # a folder holding only models.safetensors (no meta.json) is not a checkpoint
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / ckpt.MODELS_FILE).write_bytes((step_dir / ckpt.MODELS_FILE).read_bytes())
    assert ckpt.resolve_weights_file(lone) is None
    # a corrupt checkpoint is skipped with a warning naming it
    (step_dir / ckpt.MODELS_FILE).write_bytes(b"corrupt")
    with pytest.warns(ckpt.CheckpointWarning, match=rf"^skipping checkpoint {step_dir}: .*corrupt"):
        assert ckpt.resolve_weights_file(step_dir) is None


def test_shape_mismatch_lists_at_most_four_keys():
    big = torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(3)])  # 6 tensors
    small = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(3)])
    tensors = ckpt.models_state_tensors({"m": big})
    with pytest.raises(TrainingError) as err:
        ckpt._load_model_tensors({"m": small}, tensors, ckpt.Path("x.safetensors"), strict=True)
    message = str(err.value)
    assert message.count(" vs ") == 4 and ", ... (6 in all)" in message
    two = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=True))  # 2 tensors: no "in all"
    with pytest.raises(TrainingError) as err:
        ckpt._load_model_tensors({"m": torch.nn.Sequential(torch.nn.Linear(2, 2))},
                                 ckpt.models_state_tensors({"m": two}), ckpt.Path("y.safetensors"), strict=True)
    assert "in all" not in str(err.value) and str(err.value).count(" vs ") == 2
