"""Tests for the shared training loop (talkinghead/train/) on the toy task in _toy_train.py."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from talkinghead.errors import ConfigError, MissingWeightsError, TrainingError
from talkinghead.train import (
    CheckpointWarning,
    EpochBatchSampler,
    Trainer,
    TrainerConfig,
    export_weights,
    find_latest_checkpoint,
    load_initial_weights,
    load_weights,
)
from talkinghead.train import checkpoint as ckpt
from talkinghead.train.loop import _SeededSamples, mix_seed

TESTS_DIR = Path(__file__).resolve().parent
TOY_SCRIPT = TESTS_DIR / "_toy_train.py"
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))
import _toy_train  # noqa: E402


@contextmanager
def single_thread():
    """Match the subprocess runs (the toy script uses one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_toy_script(out_dir: Path, *args: str, launcher: list[str] | None = None, timeout: float = 240):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    command = [*(launcher or [sys.executable]), str(TOY_SCRIPT), str(out_dir), *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def checkpoint_tensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Model weights and optimizer state of a checkpoint, flattened (copied: safetensors maps
    the file, so a later edit of the file would show through)."""
    tensors = {k: v.clone() for k, v in safetensors.torch.load_file(str(ckpt_dir / "models.safetensors")).items()}
    state = torch.load(ckpt_dir / "state.pt", weights_only=True)
    for name, opt_state in state["optimizers"].items():
        for param_id, param_state in opt_state["state"].items():
            for key, value in param_state.items():
                tensors[f"opt.{name}.{param_id}.{key}"] = torch.as_tensor(value)
    return tensors


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert not different, f"tensors differ: {different}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short in-process toy run, shared by several tests."""
    out_dir = tmp_path_factory.mktemp("toy_run")
    task, train_set, val_set = _toy_train.build(seed=0)
    with torch.no_grad():  # validation loss of the untrained model
        initial = torch.nn.functional.mse_loss(task.models["net"].eval()(val_set.inputs), val_set.targets).item()
    with single_thread():
        task, trainer, result = _toy_train.run(out_dir, steps=40, ckpt_every=10)
    return {"out_dir": out_dir, "task": task, "trainer": trainer, "result": result, "initial_val": initial}


# ------------------------------------------------------------------------------------ training


def test_training_lowers_the_validation_loss(trained_run):
    result = trained_run["result"]
    assert result["step"] == 40
    assert result["mse"] < 0.5 * trained_run["initial_val"]
    # the buffer-only module was trained along and saved: 40 steps x 8 samples
    assert int(trained_run["task"].models["counter"].samples_seen) == 320
    saved = safetensors.torch.load_file(str(trained_run["out_dir"] / "checkpoints/step_0000040/models.safetensors"))
    assert int(saved["counter.samples_seen"]) == 320


def test_keeps_the_newest_checkpoints_and_logs_to_tensorboard(trained_run):
    out_dir = trained_run["out_dir"]
    assert [step for step, _ in ckpt.list_checkpoints(out_dir / "checkpoints")] == [30, 40]  # keep_last=2
    assert not [p for p in (out_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out_dir / "tb").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(out_dir / "tb"))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/abs_err", "val/mse", "lr/net"} <= scalars
    assert [e.step for e in accumulator.Scalars("val/mse")] == [10, 20, 30, 40]
    lrs = [e.value for e in accumulator.Scalars("lr/net")]
    assert lrs[0] == pytest.approx(1e-2) and lrs[-1] < lrs[0]  # StepLR decayed it
    assert "toy/prediction_vs_target" in accumulator.Tags()["images"]
    assert trained_run["task"].images_logged == 4


def test_task_models_are_plain_modules_after_fit(trained_run):
    models = trained_run["task"].models
    assert all(not isinstance(m, torch.nn.parallel.DistributedDataParallel) for m in models.values())
    assert models["net"].training  # eval mode during validation was undone


# ------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize(
    "kill_at, workers",
    [
        (13, 0),  # between checkpoints: steps 11-13 are redone
        pytest.param(10, 0, marks=pytest.mark.slow),  # right after the checkpoint at step 10
        pytest.param(13, 2, marks=pytest.mark.slow),  # samples loaded in worker processes
    ],
)
def test_killed_run_resumes_to_the_same_weights(tmp_path, kill_at, workers):
    with single_thread():
        _, _, reference = _toy_train.run(tmp_path / "reference", steps=20)
    expected = checkpoint_tensors(tmp_path / "reference/checkpoints/step_0000020")

    out_dir = tmp_path / "killed"
    command = ["--steps", "20", "--kill-at", str(kill_at), "--workers", str(workers)]
    killed = run_toy_script(out_dir, *command)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [step for step, _ in ckpt.list_checkpoints(out_dir / "checkpoints")] == [5, 10]
    assert not (out_dir / "result.json").exists()

    resumed = run_toy_script(out_dir, *command)  # the same command again
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out_dir / "result.json").read_text()) == reference
    assert_same_tensors(checkpoint_tensors(out_dir / "checkpoints/step_0000020"), expected)
    exported = safetensors.torch.load_file(str(out_dir / "weights.safetensors"))
    assert_same_tensors(exported, safetensors.torch.load_file(str(tmp_path / "reference/checkpoints/step_0000020/models.safetensors")))


def test_corrupt_or_partial_newest_checkpoint_is_skipped(tmp_path):
    with single_thread():
        _toy_train.run(tmp_path, steps=10, keep_last=5)
    expected = checkpoint_tensors(tmp_path / "checkpoints/step_0000010")
    # newest: a partial directory (no meta.json); next: a corrupted weights file; a stale temp dir
    partial = tmp_path / "checkpoints/step_0000015"
    partial.mkdir()
    (partial / "models.safetensors").write_bytes(b"\0" * 64)
    weights = tmp_path / "checkpoints/step_0000010/models.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    (tmp_path / "checkpoints/.tmp_step_0000020_999").mkdir()

    with pytest.warns(CheckpointWarning) as caught:
        found = find_latest_checkpoint(tmp_path / "checkpoints")
    assert found == tmp_path / "checkpoints/step_0000005"
    messages = " ".join(str(w.message) for w in caught)
    assert "step_0000015" in messages and "step_0000010" in messages

    with single_thread(), pytest.warns(CheckpointWarning):
        task, trainer, result = _toy_train.run(tmp_path, steps=10, keep_last=5)
    assert trainer.start_step == 5 and result["step"] == 10
    assert_same_tensors(checkpoint_tensors(tmp_path / "checkpoints/step_0000010"), expected)  # rewritten, valid again
    ckpt.verify_checkpoint(tmp_path / "checkpoints/step_0000010")
    assert not (tmp_path / "checkpoints/.tmp_step_0000020_999").exists()


def test_finished_run_is_not_retrained(tmp_path):
    with single_thread():
        _, _, first = _toy_train.run(tmp_path, steps=10)
        task, trainer, second = _toy_train.run(tmp_path, steps=10)
    assert trainer.start_step == 10 and second == first
    assert int(task.models["counter"].samples_seen) == 80


def test_resume_false_moves_old_checkpoints_aside(tmp_path):
    with single_thread():
        _toy_train.run(tmp_path, steps=5)
        with pytest.warns(CheckpointWarning, match="moved existing checkpoints"):
            _, trainer, _ = _toy_train.run(tmp_path, steps=5, resume=False)
    assert trainer.start_step == 0
    assert len(list(tmp_path.glob("checkpoints_prev_*"))) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_matches_uninterrupted(tmp_path):
    _toy_train.run(tmp_path / "reference", steps=10, device="cuda")
    _toy_train.run(tmp_path / "resumed", steps=5, device="cuda")
    _, trainer, _ = _toy_train.run(tmp_path / "resumed", steps=10, device="cuda")
    assert trainer.start_step == 5 and trainer.device.type == "cuda"
    assert_same_tensors(
        checkpoint_tensors(tmp_path / "resumed/checkpoints/step_0000010"),
        checkpoint_tensors(tmp_path / "reference/checkpoints/step_0000010"),
    )


# ------------------------------------------------------------------------------------ NaN


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with single_thread(), pytest.raises(TrainingError) as caught:
        _toy_train.run(tmp_path, steps=20, nan_at=12)
    message = str(caught.value)
    good = tmp_path / "checkpoints/step_0000010"
    assert "\n" not in message
    assert "loss 'loss' became nan at step 13" in message
    assert str(good) in message and "learning rate" in message
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [5, 10]
    assert ckpt.verify_checkpoint(good)["step"] == 10  # checksums from the save still match
    weights = safetensors.torch.load_file(str(good / "models.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_nan_before_any_checkpoint_says_so(tmp_path):
    with single_thread(), pytest.raises(TrainingError, match="no checkpoint was written yet"):
        _toy_train.run(tmp_path, steps=20, nan_at=2)
    assert ckpt.list_checkpoints(tmp_path / "checkpoints") == []


# ------------------------------------------------------------------------------------ weights


def test_export_and_load_weights_round_trip(trained_run, tmp_path):
    path = export_weights(trained_run["task"], tmp_path / "w.safetensors")
    fresh, _, _ = _toy_train.build(seed=123)
    load_weights(fresh.models, path)
    for name, model in trained_run["task"].models.items():
        assert_same_tensors(fresh.models[name].state_dict(), model.state_dict())


def test_load_weights_errors_name_the_file(trained_run, tmp_path):
    path = export_weights(trained_run["task"], tmp_path / "w.safetensors")
    with pytest.raises(MissingWeightsError, match="missing.safetensors"):
        load_weights({"net": torch.nn.Linear(4, 1)}, tmp_path / "missing.safetensors")
    with pytest.raises(TrainingError, match=r"w\.safetensors.*other shapes"):
        load_weights({"net": torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(), torch.nn.Linear(16, 1))}, path)
    with pytest.raises(TrainingError, match=r"no weights for model 'generator'"):
        load_weights({"generator": torch.nn.Linear(4, 1)}, path)
    # extra models in the file are ignored; only "net" is loaded
    only_net = {"net": _toy_train.build(seed=5)[0].models["net"]}
    load_weights(only_net, path)
    assert torch.equal(only_net["net"][0].weight, trained_run["task"].models["net"][0].weight)


def test_load_initial_weights_from_a_run_directory(trained_run, tmp_path):
    task, _, _ = _toy_train.build(seed=7)
    loaded = load_initial_weights(task.models, trained_run["out_dir"])
    assert loaded == trained_run["out_dir"] / "checkpoints/step_0000040/models.safetensors"
    assert torch.equal(task.models["net"][3].weight, trained_run["task"].models["net"][3].weight)

    missing = tmp_path / "general_run"
    command = "python scripts/train.py stage=audio2coeff data.root=DATA out=" + str(missing)
    with pytest.raises(TrainingError) as caught:
        load_initial_weights(task.models, missing, produced_by=command)
    assert str(missing) in str(caught.value) and command in str(caught.value)


# ------------------------------------------------------------------------------------ data order


def test_rank_shards_of_each_global_batch_equal_the_single_process_batch():
    single = EpochBatchSampler(50, 8, seed=3)
    ranks = [EpochBatchSampler(50, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        full = list(single)
        shards = [list(r) for r in ranks]
        assert len(full) == 6 == len(shards[0]) == len(shards[1])
        for batch, part0, part1 in zip(full, *shards):
            assert len(part0) == len(part1) == 4
            assert part0 + part1 == batch
        flat = [index for batch in full for index, _ in batch]
        assert len(set(flat)) == 48  # no repeats within an epoch
    single.set_epoch(0)
    epoch0 = list(single)
    single.set_epoch(1)
    assert list(single) != epoch0


def test_sampler_resumes_mid_epoch_by_index_and_is_deterministic():
    sampler = EpochBatchSampler(30, 4, seed=11)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_batch=5)
    assert len(sampler) == len(full) - 5
    assert list(sampler) == full[5:]
    again = EpochBatchSampler(30, 4, seed=11)
    again.set_epoch(2)
    assert list(again) == full
    other_seed = EpochBatchSampler(30, 4, seed=12)
    other_seed.set_epoch(2)
    assert list(other_seed) != full


def test_sampler_without_drop_last_pads_the_last_batch_for_all_ranks():
    ranks = [EpochBatchSampler(11, 4, rank=r, world_size=2, drop_last=False, shuffle=False) for r in range(2)]
    shards = [list(r) for r in ranks]
    assert [len(b) for b in shards[0]] == [2, 2, 2] == [len(b) for b in shards[1]]
    seen = {index for shard in shards for batch in shard for index, _ in batch}
    assert seen == set(range(11))
    with pytest.raises(ConfigError, match="batch_size=5"):
        EpochBatchSampler(11, 5, world_size=2)


def test_per_sample_seeding_is_repeatable_and_leaves_global_rng_alone():
    dataset = _toy_train.ToyDataset(10, data_seed=0)
    seeded = _SeededSamples(dataset)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first = seeded[(3, mix_seed(0, 1, 3))]["x"]
    assert torch.equal(seeded[(3, mix_seed(0, 1, 3))]["x"], first)
    assert not torch.equal(seeded[(3, mix_seed(0, 2, 3))]["x"], first)  # next epoch: new noise
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


# ------------------------------------------------------------------------------------ config


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="trainer.max_steps or trainer.max_epochs"):
        TrainerConfig(**_toy_train.loop_settings(out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="trainer.bacth_size"):
        TrainerConfig.coerce({"out_dir": str(tmp_path), "max_steps": 3, "bacth_size": 4})
    merged = TrainerConfig.coerce(_toy_train.loop_settings(device="cpu", ckpt_every=300), out_dir=str(tmp_path), max_steps=7)
    assert (merged.device, merged.ckpt_every, merged.max_steps) == ("cpu", 300, 7)
    without_keep_last = {k: v for k, v in _toy_train.loop_settings().items() if k != "keep_last"}
    with pytest.raises(ConfigError, match="trainer.keep_last is not set; see configs/trainer/cpu.yaml"):
        TrainerConfig.coerce(without_keep_last, out_dir=str(tmp_path), max_steps=7)
    with pytest.raises(ConfigError, match="trainer.batch_size=0"):
        TrainerConfig(**_toy_train.loop_settings(out_dir=str(tmp_path), max_steps=3, batch_size=0))
    task, train_set, _ = _toy_train.build()
    with pytest.raises(ConfigError, match="fewer than trainer.batch_size=200"):
        Trainer(task, train_set, None, _toy_train.loop_settings(out_dir=str(tmp_path), max_steps=3, batch_size=200))


def test_max_epochs_sets_the_number_of_steps(tmp_path):
    task, train_set, val_set = _toy_train.build()
    trainer = Trainer(task, train_set, val_set, TrainerConfig(**_toy_train.loop_settings(out_dir=str(tmp_path), max_epochs=2, batch_size=32)))
    result = trainer.fit()
    assert result["step"] == 6 and trainer.epoch == 2 and trainer.batch_in_epoch == 0  # 96 samples / 32


# ------------------------------------------------------------------------------------ distributed


COLLECTIVES_SCRIPT = """
import json, sys
import torch
from talkinghead.errors import TrainingError
from talkinghead.train import distributed as d
info = d.init_distributed("cpu")
rank = info.rank
result = {}
rows = torch.arange(3 * (rank + 1) * 2, dtype=torch.float32).reshape(-1, 2) + 100 * rank  # rank r: 3(r+1) rows
result["gathered"] = d.all_gather_rows(rows).tolist()
weight, bias = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(3))
weight.grad = torch.full((2, 2), float(rank + 1))  # 1 on rank 0, 2 on rank 1
if rank == 0:
    bias.grad = torch.tensor([2.0, 4.0, 6.0])  # none on rank 1: counts as zero there
d.average_gradients([weight, bias])
result["weight_grad"], result["bias_grad"] = weight.grad.tolist(), bias.grad.tolist()
flags, ages = torch.tensor([True, False]) if rank == 0 else torch.tensor([False, True]), torch.tensor([5 * rank, 7])
d.broadcast_tensors([flags, ages])
result["flags"], result["ages"] = flags.tolist(), ages.tolist()
d.check_same_on_all_ranks({"flags": flags, "ages": ages}, "the test tensors")
try:
    d.check_same_on_all_ranks({"same": torch.ones(2), "rank": torch.tensor([rank])}, "the test tensors")
except TrainingError as err:
    result["error"] = str(err)
json.dump(result, open(f"{sys.argv[1]}/rank{rank}.json", "w"))
d.cleanup()
"""


def test_stage2_collectives_on_two_processes(tmp_path):
    """The helpers Stage 2 keeps its memory and key network in step with (gloo, 2 processes)."""
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(script), str(tmp_path)]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    expected_rows = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]] + [[100.0 + i, 101.0 + i] for i in range(0, 12, 2)]
    for result in results:
        assert result["gathered"] == expected_rows  # rank 0's 3 rows, then rank 1's 6, on both
        assert result["weight_grad"] == [[1.5, 1.5], [1.5, 1.5]]
        assert result["bias_grad"] == [1.0, 2.0, 3.0]
        assert result["flags"] == [True, False] and result["ages"] == [0, 7]  # rank 0's
        assert "'rank' differs between the 2 processes" in result["error"] and "\n" not in result["error"]


def test_two_process_cpu_run_matches_one_process(tmp_path):
    with single_thread():
        _, _, single = _toy_train.run(tmp_path / "single", steps=12, dropout=0.0)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    completed = run_toy_script(tmp_path / "ddp", "--steps", "12", "--dropout", "0", launcher=launcher)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp/result.json").read_text())
    assert ddp["step"] == 12
    assert ddp["mse"] == pytest.approx(single["mse"], rel=1e-4)
    state = torch.load(tmp_path / "ddp/checkpoints/step_0000012/state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    weights = safetensors.torch.load_file(str(tmp_path / "ddp/weights.safetensors"))
    assert not any(key.startswith("net.module.") for key in weights)  # unwrapped from DDP
    assert int(weights["counter.samples_seen"]) == 12 * 4  # rank 0's buffer: its half of each batch
