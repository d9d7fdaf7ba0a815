"""Unit tests of talkinghead/train/checkpoint.py and talkinghead/weights.py, without training:
RNG state, what checkpoint and weights files hold and say about themselves, atomic writes and
pruning, verification, resolving initial weights, and the one-line errors and warnings. They are
what mutation testing runs for these two modules (pyproject's [tool.mutmut]), so each is fast;
the training-loop tests (test_train_loop.py) check resuming end to end."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors
import torch

from talkinghead.errors import MissingWeightsError, TrainingError
from talkinghead import weights
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


# ------------------------------------------------------------------------------------ RNG state


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    np.random.randn(1)  # leaves a cached Gaussian in numpy's state
    random.seed(3)
    state = ckpt.capture_rng_state()
    expected = _draws()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)  # only tensors and plain types inside
    assert sorted(loaded) == ["cuda", "numpy", "python", "torch"] and loaded["cuda"] == []  # no CUDA in use here
    _draws()  # move every generator on
    ckpt.restore_rng_state(loaded)
    assert _draws() == expected


class _FakeCuda:
    """Stands in for ``torch.cuda`` on a machine without it: ``count`` devices, records what is set."""

    def __init__(self, count: int, initialized: bool = True):
        self.count, self.initialized, self.restored = count, initialized, None

    def is_available(self):
        return self.count > 0

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return self.count

    def get_rng_state_all(self):
        return [torch.full((4,), i, dtype=torch.uint8) for i in range(self.count)]

    def set_rng_state_all(self, states):
        self.restored = states


@pytest.mark.parametrize("count, initialized, saved", [(2, True, 2), (2, False, 0), (0, False, 0), (0, True, 0)])
def test_cuda_rng_state_is_captured_only_when_cuda_is_in_use(monkeypatch, count, initialized, saved):
    fake = _FakeCuda(count, initialized)
    monkeypatch.setattr(torch, "cuda", fake)
    cuda = ckpt.capture_rng_state()["cuda"]
    assert cuda == [] if saved == 0 else [s.tolist() for s in cuda] == [[i] * 4 for i in range(saved)]


def test_cuda_rng_state_is_restored_on_as_many_gpus_only(monkeypatch):
    saved = ckpt.capture_rng_state()
    two = [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]
    fake = _FakeCuda(2)
    monkeypatch.setattr(torch, "cuda", fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.restore_rng_state({**saved, "cuda": two})
        assert fake.restored is two
        fake.restored = None
        ckpt.restore_rng_state(saved)  # saved on a CPU-only process: CUDA left alone
        assert fake.restored is None
    with pytest.warns(ckpt.CheckpointWarning, match="^checkpoint CUDA RNG state is for a different number of GPUs; not restored$"):
        ckpt.restore_rng_state({**saved, "cuda": two[:1]})
    assert fake.restored is None
    no_gpu = _FakeCuda(0)
    monkeypatch.setattr(torch, "cuda", no_gpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resumed on a CPU machine: nothing to restore, no warning
        ckpt.restore_rng_state({**saved, "cuda": two})
    assert no_gpu.restored is None


# ------------------------------------------------------------------------------------ checkpoints


def _trained(seed: int = 0):
    """Two small models and an Adam optimiser with state (one step taken)."""
    torch.manual_seed(seed)
    models = {"net": torch.nn.Linear(3, 2), "aux": torch.nn.BatchNorm1d(2)}
    opt = torch.optim.Adam([*models["net"].parameters(), *models["aux"].parameters()], lr=0.1)
    models["aux"](models["net"](torch.randn(4, 3))).square().mean().backward()
    opt.step()
    return models, {"adam": opt}


def _hidden(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_checkpoint_round_trip_restores_weights_optimiser_and_state(tmp_path):
    models, opts = _trained(0)
    extra = {"step": 5, "epoch": 1, "rng": ckpt.capture_rng_state(), "task": {"best": 0.5}}
    step_dir = ckpt.save_checkpoint(tmp_path / "a" / "b", 5, models, opts, extra, meta={"stage": "toy", "data": tmp_path})
    assert step_dir == tmp_path / "a" / "b" / "step_0000005" and _hidden(step_dir.parent) == []
    assert sorted(p.name for p in step_dir.iterdir()) == ["meta.json", "models.safetensors", "state.pt"]

    fresh, fresh_opts = _trained(1)
    state = ckpt.load_checkpoint(step_dir, fresh, fresh_opts)
    assert sorted(state) == ["epoch", "rng", "step", "task"] and state["task"] == {"best": 0.5}
    assert (state["step"], state["epoch"]) == (5, 1) and torch.equal(state["rng"]["torch"], extra["rng"]["torch"])
    for name in models:
        for key, value in models[name].state_dict().items():
            assert torch.equal(fresh[name].state_dict()[key], value), (name, key)  # incl. BatchNorm's buffers
    saved_adam, loaded_adam = opts["adam"].state_dict(), fresh_opts["adam"].state_dict()
    assert loaded_adam["param_groups"] == saved_adam["param_groups"]
    for index, param_state in saved_adam["state"].items():
        for key, value in param_state.items():
            assert torch.equal(loaded_adam["state"][index][key], value), (index, key)
    # the state's tensors go where the caller says (the training device; "meta" here: no CUDA needed)
    assert ckpt.load_checkpoint(step_dir, _trained(1)[0], map_location="meta")["rng"]["torch"].device.type == "meta"
    # without optimisers: only the weights and the state come back
    weights_only, _ = _trained(2)
    assert sorted(ckpt.load_checkpoint(step_dir, weights_only)) == ["epoch", "rng", "step", "task"]
    assert torch.equal(weights_only["net"].weight, models["net"].weight)


def test_checkpoint_files_describe_themselves(tmp_path):
    models, opts = _trained(0)
    step_dir = ckpt.save_checkpoint(tmp_path, 12, models, opts, {"step": 12}, meta={"stage": "toy", "data": tmp_path})
    meta_text = (step_dir / "meta.json").read_text()
    assert meta_text.splitlines()[:2] == ["{", '  "format": "talkinghead-checkpoint",']  # indented for people to read
    meta = json.loads(meta_text)
    created = meta.pop("created")
    assert datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").tzinfo is not None
    files = {name: {"bytes": (step_dir / name).stat().st_size, "sha256": hashlib.sha256((step_dir / name).read_bytes()).hexdigest()}
             for name in ("models.safetensors", "state.pt")}
    assert meta == {"format": "talkinghead-checkpoint", "version": 1, "step": 12, "models": ["aux", "net"],
                    "optimizers": ["adam"], "stage": "toy", "data": str(tmp_path), "files": files}
    assert ckpt.verify_checkpoint(step_dir) == {**meta, "created": created}
    with safetensors.safe_open(str(step_dir / "models.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "talkinghead-checkpoint", "models": '["aux", "net"]', "step": "12"}
        assert sorted(handle.keys()) == sorted(ckpt.models_state_tensors(models))
    saved = torch.load(step_dir / "state.pt", weights_only=True)
    assert sorted(saved) == ["optimizers", "step"] and sorted(saved["optimizers"]) == ["adam"]
    no_meta = ckpt.save_checkpoint(tmp_path, 13, models, {}, {})
    assert sorted(json.loads((no_meta / "meta.json").read_text())) == [
        "created", "files", "format", "models", "optimizers", "step", "version"]


def test_checkpoints_are_pruned_to_the_newest(tmp_path):
    models, opts = _trained(0)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path / "default", step, models, opts, {})
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "default")] == [3, 4]
    for keep_last, kept in ((1, [4]), (3, [2, 3, 4]), (0, [4])):  # at least the newest one stays
        root = tmp_path / f"keep{keep_last}"
        for step in (1, 2, 3, 4):
            ckpt.save_checkpoint(root, step, models, opts, {}, keep_last=keep_last)
        assert [s for s, _ in ckpt.list_checkpoints(root)] == kept


def test_saving_a_step_again_replaces_it_and_clears_leftovers(tmp_path):
    models, opts = _trained(0)
    first = ckpt.save_checkpoint(tmp_path, 7, models, opts, {"step": 7, "try": 1})
    (tmp_path / ".tmp_step_0000009_12345").mkdir()  # left by a writer killed mid-save
    (tmp_path / ".trash_step_0000003_12345").mkdir()
    (tmp_path / ".tmp_note").write_text("a file, not a writer's folder")
    (tmp_path / "other").mkdir()
    newer, _ = _trained(3)
    again = ckpt.save_checkpoint(tmp_path, 7, newer, opts, {"step": 7, "try": 2})
    assert again == first and _hidden(tmp_path) == [".tmp_note"] and (tmp_path / "other").is_dir()
    fresh, _ = _trained(4)
    assert ckpt.load_checkpoint(again, fresh)["try"] == 2
    assert torch.equal(fresh["net"].weight, newer["net"].weight)
    ckpt.verify_checkpoint(again)


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    models, opts = _trained(0)
    ckpt.save_checkpoint(tmp_path, 1, models, opts, {})
    expected = r"^model 'extra' has non-tensor state '_extra_state' \(get_extra_state\); store it as a buffer"
    with pytest.raises(TrainingError, match=expected):
        ckpt.save_checkpoint(tmp_path, 2, {**models, "extra": _WithExtraState()}, opts, {})
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1] and _hidden(tmp_path) == []
    with pytest.raises(TrainingError, match="non-tensor state"):
        ckpt.export_weights({"extra": _WithExtraState()}, tmp_path / "w" / "extra.safetensors")
    assert list((tmp_path / "w").iterdir()) == []


def test_saved_tensors_are_copies_so_tied_weights_save(tmp_path):
    tied = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    tied[1].weight = tied[0].weight  # one parameter under two keys
    flat = ckpt.models_state_tensors({"tied": tied})
    assert sorted(flat) == ["tied.0.weight", "tied.1.weight"]
    assert flat["tied.0.weight"].data_ptr() != tied[0].weight.data_ptr()
    with torch.no_grad():
        tied[0].weight.add_(1.0)
    assert not torch.equal(flat["tied.0.weight"], tied[0].weight)  # a snapshot, not a view
    ckpt.save_checkpoint(tmp_path, 1, {"tied": tied}, {}, {})
    ckpt.export_weights({"tied": tied}, tmp_path / "tied.safetensors")


def test_listing_checkpoints_orders_by_step_and_ignores_other_names(tmp_path):
    assert ckpt.list_checkpoints(tmp_path / "missing") == []
    for name in ("step_10", "step_9", "step_0000100", "stepx_1", "step_3a", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "step_5").write_text("a file")
    assert ckpt.list_checkpoints(tmp_path) == [(9, tmp_path / "step_9"), (10, tmp_path / "step_10"),
                                               (100, tmp_path / "step_0000100")]
    assert [ckpt.checkpoint_dir_name(s) for s in (0, 42, 12345678)] == ["step_0000000", "step_0000042", "step_12345678"]


def _corrupt(step_dir, how):
    path = step_dir / "models.safetensors"
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF  # same size, other bytes
    else:
        data += b"\0"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    ("no meta", r"is incomplete \(no meta\.json\)$"),
    ("meta not json", r"meta\.json is unreadable \(.+\)$"),
    ("meta a folder", r"meta\.json is unreadable \(.+\)$"),
    ("other format", r"meta\.json is not a talkinghead-checkpoint meta file$"),
    ("files not a dict", r"meta\.json is not a talkinghead-checkpoint meta file$"),
    ("file missing", r"state\.pt is missing$"),
    ("flip", r"models\.safetensors is corrupt \(size or checksum differs from meta\.json\)$"),
    ("grow", r"models\.safetensors is corrupt"),
])
def test_verify_says_what_is_wrong(tmp_path, damage, message):
    step_dir = ckpt.save_checkpoint(tmp_path, 1, _trained(0)[0], {}, {})
    meta_path = step_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    if damage == "no meta":
        meta_path.unlink()
    elif damage == "meta not json":
        meta_path.write_text("{")
    elif damage == "meta a folder":
        meta_path.unlink()
        meta_path.mkdir()
    elif damage == "other format":
        meta_path.write_text(json.dumps({**meta, "format": "other"}))
    elif damage == "files not a dict":
        meta_path.write_text(json.dumps({**meta, "files": list(meta["files"])}))
    elif damage == "file missing":
        (step_dir / "state.pt").unlink()
    else:
        _corrupt(step_dir, damage)
    with pytest.raises(TrainingError, match=message) as err:
        ckpt.verify_checkpoint(step_dir)
    assert str(step_dir) in str(err.value)


def test_latest_valid_checkpoint_skips_damaged_newer_ones(tmp_path):
    models, _ = _trained(0)
    dirs = [ckpt.save_checkpoint(tmp_path, step, models, {}, {}, keep_last=5) for step in (1, 2, 3, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.find_latest_checkpoint(tmp_path) == dirs[3]
    _corrupt(dirs[3], "flip")
    (dirs[2] / "meta.json").unlink()
    with pytest.warns(ckpt.CheckpointWarning) as caught:
        assert ckpt.find_latest_checkpoint(tmp_path) == dirs[1]
    assert [str(w.message).split(":")[0] for w in caught] == [f"skipping checkpoint {dirs[3]}", f"skipping checkpoint {dirs[2]}"]
    for step_dir in dirs[:2]:
        (step_dir / "meta.json").unlink()
    with pytest.warns(ckpt.CheckpointWarning):
        assert ckpt.find_latest_checkpoint(tmp_path) is None
    assert ckpt.find_latest_checkpoint(tmp_path / "nothing") is None


def test_loading_a_checkpoint_says_what_does_not_fit(tmp_path):
    models, opts = _trained(0)
    step_dir = ckpt.save_checkpoint(tmp_path, 3, models, opts, {"step": 3})
    with pytest.raises(TrainingError) as err:
        ckpt.load_checkpoint(step_dir, _trained(1)[0], {"sgd": opts["adam"]})
    assert str(err.value) == (f"checkpoint {step_dir} has no state for optimizer 'sgd' (it has: adam); resume with the "
                              "same task, or start a fresh run with trainer.resume=false")
    bare = ckpt.save_checkpoint(tmp_path, 4, models, {}, {})
    with pytest.raises(TrainingError, match=r"has no state for optimizer 'adam' \(it has: none\)"):
        ckpt.load_checkpoint(bare, _trained(1)[0], opts)
    fewer = torch.optim.Adam(_trained(1)[0]["net"].parameters())  # other parameter groups than the saved one
    with pytest.raises(TrainingError, match=rf"^checkpoint {step_dir}: optimizer 'adam' state does not fit \(.+\); resume with"):
        ckpt.load_checkpoint(step_dir, _trained(1)[0], {"adam": fewer})
    with pytest.raises(TrainingError, match=rf"^{step_dir / 'models.safetensors'} has no weights for model 'other'"):
        ckpt.load_checkpoint(step_dir, {**_trained(1)[0], "other": torch.nn.Linear(1, 1)})  # weights are loaded strictly
    two = ckpt.save_checkpoint(tmp_path, 5, models, {**opts, "sgd": torch.optim.SGD(models["net"].parameters(), lr=0.1)}, {},
                               keep_last=5)
    with pytest.raises(TrainingError, match=r"has no state for optimizer 'd' \(it has: adam, sgd\)"):
        ckpt.load_checkpoint(two, _trained(1)[0], {"d": opts["adam"]})
    (step_dir / "models.safetensors").unlink()
    with pytest.raises(TrainingError, match=rf"^cannot read checkpoint {step_dir} \(\w+: .+\)$"):
        ckpt.load_checkpoint(step_dir, _trained(1)[0])


def test_a_state_file_without_optimizers_loads_weights_and_state(tmp_path):
    models, opts = _trained(0)
    step_dir = ckpt.save_checkpoint(tmp_path, 1, models, {}, {})
    torch.save({"step": 1}, step_dir / "state.pt")  # written by hand or by an older version
    fresh, fresh_opts = _trained(1)
    assert ckpt.load_checkpoint(step_dir, fresh) == {"step": 1}
    assert torch.equal(fresh["net"].weight, models["net"].weight)
    with pytest.raises(TrainingError, match=r"has no state for optimizer 'adam' \(it has: none\)"):
        ckpt.load_checkpoint(step_dir, fresh, fresh_opts)


def test_folders_that_cannot_be_deleted_do_not_stop_saving(tmp_path, monkeypatch):
    """Removing a leftover, a replaced or an old checkpoint is best effort (a busy network file
    system may refuse): the new checkpoint is written all the same."""
    models, opts = _trained(0)
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, models, opts, {})
    (tmp_path / ".tmp_step_0000009_1").mkdir()

    def refuse(path, *args, **kwargs):
        raise PermissionError(f"busy: {path}")

    monkeypatch.setattr(os, "rmdir", refuse)
    third = ckpt.save_checkpoint(tmp_path, 3, models, opts, {"step": 3})  # prunes step 1, clears the leftover
    again = ckpt.save_checkpoint(tmp_path, 3, models, opts, {"step": 3, "again": True})  # replaces step 3
    assert third == again and ckpt.load_checkpoint(again, _trained(1)[0])["again"] is True
    with pytest.raises(TrainingError, match="non-tensor state"):  # the error, not the failed clean-up
        ckpt.save_checkpoint(tmp_path, 4, {"bad": _WithExtraState()}, {}, {})
    monkeypatch.undo()
    assert ckpt.find_latest_checkpoint(tmp_path) == third


class _WithExtraState(torch.nn.Module):
    def get_extra_state(self):
        return {"not": "a tensor"}

    def set_extra_state(self, state):
        pass


class _NotATensor:
    pass


def test_checkpoint_state_is_loaded_without_running_pickled_code(tmp_path):
    models, _ = _trained(0)
    step_dir = ckpt.save_checkpoint(tmp_path, 1, models, {}, {"step": 1})
    torch.save({"optimizers": {}, "step": 1, "object": _NotATensor()}, step_dir / "state.pt")
    with pytest.raises(TrainingError, match=rf"^cannot read checkpoint {step_dir} \(UnpicklingError: "):
        ckpt.load_checkpoint(step_dir, _trained(1)[0])


def test_exported_weights_are_written_atomically(tmp_path):
    models, _ = _trained(0)
    target = tmp_path / "w.safetensors"
    ckpt.export_weights(models, target)
    newer, _ = _trained(5)
    assert ckpt.export_weights(newer, target) == target  # replaced in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temporary file left
    fresh, _ = _trained(6)
    ckpt.load_weights(fresh, target)
    assert torch.equal(fresh["net"].weight, newer["net"].weight)


def test_resolving_weights_from_every_kind_of_path(tmp_path, monkeypatch):
    models, _ = _trained(0)
    run = tmp_path / "run"
    ckpt.save_checkpoint(run / "checkpoints", 1, models, {}, {})
    newest = ckpt.save_checkpoint(run / "checkpoints", 2, models, {}, {})
    loose = tmp_path / "loose"  # checkpoints straight under the folder
    loose_newest = ckpt.save_checkpoint(loose, 8, models, {}, {})
    exported = ckpt.export_weights(models, tmp_path / "w.safetensors")
    monkeypatch.setenv("HOME", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.resolve_weights_file(run) == newest / "models.safetensors"
        assert ckpt.resolve_weights_file(loose) == loose_newest / "models.safetensors"
        assert ckpt.resolve_weights_file(newest) == newest / "models.safetensors"
        assert ckpt.resolve_weights_file("~/w.safetensors") == exported
        assert ckpt.resolve_weights_file("~/run") == newest / "models.safetensors"
        lone = tmp_path / "lone"  # a models file without meta.json is not a checkpoint: no warning
        lone.mkdir()
        (lone / "models.safetensors").write_bytes(exported.read_bytes())
        assert ckpt.resolve_weights_file(lone) is None
        assert ckpt.resolve_weights_file(tmp_path / "empty") is None
    (newest / "meta.json").unlink()  # the run's newest checkpoint is incomplete: the one before
    with pytest.warns(ckpt.CheckpointWarning, match="step_0000002"):
        assert ckpt.resolve_weights_file(run) == run / "checkpoints" / "step_0000001" / "models.safetensors"


def test_initial_weights_non_strict_leaves_missing_models_as_they_are(tmp_path):
    models, _ = _trained(0)
    partial = ckpt.export_weights({"net": models["net"]}, tmp_path / "partial.safetensors")
    fresh, _ = _trained(1)
    aux_before = {k: v.clone() for k, v in fresh["aux"].state_dict().items()}
    with pytest.warns(ckpt.CheckpointWarning, match=r"partial\.safetensors has no weights for model 'aux'; left as initialised$"):
        assert ckpt.load_initial_weights(fresh, partial, strict=False) == partial
    assert torch.equal(fresh["net"].weight, models["net"].weight)
    assert all(torch.equal(fresh["aux"].state_dict()[k], v) for k, v in aux_before.items())
    later = torch.nn.Linear(3, 2)  # a missing model before one in the file: the later one still loads
    with pytest.warns(ckpt.CheckpointWarning, match="no weights for model 'aux'"):
        ckpt.load_initial_weights({"aux": fresh["aux"], "net": later}, partial, strict=False)
    assert torch.equal(later.weight, models["net"].weight)
    with pytest.raises(TrainingError, match=r"^initial weights not found at .*; produce them with `make weights` or point"):
        ckpt.load_initial_weights(fresh, tmp_path / "none", produced_by="make weights")


# ------------------------------------------------------------------------------------ talkinghead/weights.py


def test_ddp_wrapped_models_are_saved_and_loaded_as_plain_modules(tmp_path):
    net = torch.nn.Linear(3, 2)
    wrapped = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(wrapped)  # a DDP wrapper without a process group: only .module is used
    wrapped.module = net
    assert weights.unwrap(wrapped) is net and weights.unwrap(net) is net
    assert sorted(ckpt.models_state_tensors({"net": wrapped})) == ["net.bias", "net.weight"]  # no "module." inside
    path = ckpt.export_weights({"net": net}, tmp_path / "w.safetensors")
    other = torch.nn.Linear(3, 2)
    wrapped.module = other
    ckpt.load_weights({"net": wrapped}, path)
    assert torch.equal(other.weight, net.weight)


@pytest.mark.parametrize("name", ["", "a.b"])
def test_model_names_must_be_plain(tmp_path, name):
    message = rf"^model name {name!r} must be non-empty and contain no '\.'; rename the entry in task\.models$"
    with pytest.raises(TrainingError, match=message):
        ckpt.export_weights({name: torch.nn.Linear(1, 1)}, tmp_path / "w.safetensors")
    with pytest.raises(TrainingError, match=message):
        weights._load_model_tensors({name: torch.nn.Linear(1, 1)}, {}, tmp_path / "w.safetensors", strict=False)
    weights._check_model_names({"generator": None, "d2": None})  # plain names pass


def test_loading_keeps_parameter_objects_and_ignores_other_models(tmp_path):
    source = {"net": torch.nn.Linear(3, 2), "disc": torch.nn.Linear(2, 1)}
    path = ckpt.export_weights(source, tmp_path / "w.safetensors")
    net = torch.nn.Linear(3, 2)
    param = net.weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights.load_weights({"stateless": torch.nn.ReLU(), "net": net}, path)  # a model without state needs no weights
    assert net.weight is param and torch.equal(param, source["net"].weight)  # in place: optimisers stay valid


def test_key_mismatches_are_named(tmp_path):
    source = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    path = ckpt.export_weights({"m": source}, tmp_path / "w.safetensors")
    grown = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with pytest.raises(TrainingError) as err:
        weights.load_weights({"m": grown}, path)
    assert str(err.value) == (f"{path}: weights of model 'm' do not match the model (missing 2.weight, 2.bias); "
                              "use the same model config as the run that wrote them")
    with pytest.raises(TrainingError, match=r"\(unexpected 1\.bias, 1\.weight\); use the same"):
        weights.load_weights({"m": torch.nn.Sequential(torch.nn.Linear(2, 2))}, path)
    renamed = torch.nn.Sequential(torch.nn.Linear(2, 2))
    renamed.add_module("extra", torch.nn.Linear(2, 2))
    with pytest.raises(TrainingError, match=r"\(missing extra\.weight, extra\.bias; unexpected 1\.bias, 1\.weight\)"):
        weights.load_weights({"m": renamed}, path)
    weights.load_weights({"m": renamed}, path, strict=False)  # not strict: the common keys are loaded
    assert torch.equal(renamed[0].weight, source[0].weight)
    weights.load_weights({"m": grown}, path, strict=False)
    assert torch.equal(grown[1].bias, source[1].bias)
    with pytest.raises(TrainingError) as err:  # shapes are checked even when not strict
        weights.load_weights({"m": torch.nn.Sequential(torch.nn.Linear(2, 3))}, path, strict=False)
    assert str(err.value) == (f"{path}: weights of model 'm' have other shapes (0.weight (2, 2) vs (3, 2), 0.bias (2,) vs (3,)); "
                              "they were made with a different model config, use the same model config as the run that wrote them")


def test_a_model_missing_from_the_file_is_named(tmp_path):
    path = ckpt.export_weights({"net": torch.nn.Linear(1, 1), "aux": torch.nn.Linear(1, 1)}, tmp_path / "w.safetensors")
    with pytest.raises(TrainingError) as err:
        weights.load_weights({"gen": torch.nn.Linear(1, 1)}, path)
    assert str(err.value) == (f"{path} has no weights for model 'gen' (it holds: aux, net); "
                              "pass the weights produced by the matching training stage")
    with pytest.raises(TrainingError, match=r"has no weights for model 'gen' \(it holds: nothing\)"):
        weights._load_model_tensors({"gen": torch.nn.Linear(1, 1)}, {}, path, strict=True)
    assert weights._describe_keys(list("abcde")) == "a, b, c, d, ... (5 in all)"
    assert weights._describe_keys(list("abcd")) == "a, b, c, d"
    assert weights._describe_keys(list("abc"), limit=2) == "a, b, ... (3 in all)"
