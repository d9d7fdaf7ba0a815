"""The user-facing jobs as processes, on the paths nothing else drives: the fine-tuning job
killed with ``kill -9`` and rerun, ``finetune.py video=FILE`` (preprocess, then fine-tune), and
the one-line errors of ``preprocess.py``, ``evaluate.py`` and ``reproduce_tables.py``.

General models are the real trainers run for one step at ``debug=tiny`` size on a stand-in clip
(tests/_clips.py); every run uses one thread, so reruns are bit-identical.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from talkinghead.cli import compose_config
from talkinghead.data.clip import ClipMeta, read_clip

from _clips import speech_like, write_stand_in_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES = 24
#: Tiny runs sized for a 24-frame clip (refiner validation on its frames 18-23).
TINY = ["debug=tiny", "device=cpu", "renderer=torch", "progress=false",
        "refiner.train.val_frames=[18,24]", "refiner.finetune.val_frames=[18,24]",
        "audio2coeff.finetune.early_stop=null", "audio2coeff.finetune.batch_size=2"]  # 18 fine-tuning frames: 3 windows

# A script run with kill -9 at a given training step of a given stage, once (when that stage has
# no checkpoint yet): the process dies in the middle of its work, as with `kill -9 PID`.
KILL_WRAPPER = """
import os, runpy, signal, sys
from pathlib import Path
stage, kill_at = os.environ["KILL_STAGE"], int(os.environ["KILL_AT"])
if stage == "refiner":
    from talkinghead.train.refiner import RefinerTask as Task
else:
    from talkinghead.train.audio2coeff import Audio2CoeffTask as Task
original = Task.training_step
def training_step(self, batch, step):
    if step == kill_at and not os.path.exists(os.environ["KILL_ONCE"]):
        Path(os.environ["KILL_ONCE"]).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, batch, step)
Task.training_step = training_step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script(name: str, *args: str, kill: tuple[str, int, Path] | None = None, timeout: float = 600):
    """``python scripts/NAME.py ARGS`` (one thread); ``kill=(stage, step, marker)`` kills it with
    SIGKILL at that training step the first time (the marker file records that it happened)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = str(ROOT / "scripts" / f"{name}.py")
    command = [sys.executable, script, *args]
    if kill is not None:
        env.update(KILL_STAGE=kill[0], KILL_AT=str(kill[1]), KILL_ONCE=str(kill[2]))
        command = [sys.executable, "-c", KILL_WRAPPER, script, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


_speech_like = speech_like  # tests/_clips.py


def _person(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    coeffs = np.zeros((NUM_FRAMES, 257), np.float32)
    coeffs[:, 80:144] = rng.normal(0, 0.3, (NUM_FRAMES, 64))
    coeffs[:, 224:227] = rng.normal(0, 0.05, (NUM_FRAMES, 3))
    frames = rng.integers(0, 255, (NUM_FRAMES, 224, 224, 3), dtype=np.uint8)
    meta = ClipMeta(name=path.name, num_frames=NUM_FRAMES, source="synthetic", train_frames=(0, 18),
                    test_frames=(18, 24))
    return write_stand_in_clip(path, meta, coeffs, frames, _speech_like(NUM_FRAMES / 25, seed))


@pytest.fixture(scope="module")
def general(tmp_path_factory) -> Path:
    """One-step general models of both stages: GENERAL/audio2coeff, GENERAL/refiner."""
    from talkinghead.train.audio2coeff import train_audio2coeff
    from talkinghead.train.refiner import train_refiner

    root = tmp_path_factory.mktemp("general")
    clip = _person(root / "corpus_person", seed=1)
    cfg = compose_config("train", [*TINY, "audio2coeff.train.max_steps=1", "audio2coeff.train.batch_size=2",
                                   "refiner.train.max_steps=1"])
    train_audio2coeff([clip], root / "models" / "audio2coeff", cfg, mode="general")
    train_refiner([clip], root / "models" / "refiner", cfg, mode="general")
    return root / "models"


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(stage_dir / "weights.safetensors"))


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------ fine-tuning
FINETUNE_ARGS = [*TINY, "trainer.ckpt_every=2"]


@pytest.fixture(scope="module")
def straight(general, tmp_path_factory) -> Path:
    """The fine-tuning job run without interruption: PERSON/finetuned/{audio2coeff,refiner}."""
    person = _person(tmp_path_factory.mktemp("straight") / "person")
    done = run_script("finetune", f"person={person}", f"general={general}", *FINETUNE_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    return person / "finetuned"


@pytest.mark.parametrize("stage, kill_at", [("audio2coeff", 3), ("refiner", 3)])
def test_finetune_killed_and_rerun_ends_bit_identical(general, straight, tmp_path, stage, kill_at):
    """``finetune.py`` killed with SIGKILL in the middle of a stage (after its step-2
    checkpoint; Stage 1's first run is a soup member), then the same command rerun: both stages'
    weights (Stage 1's pose network too) are bit-identical to an uninterrupted job's."""
    args = [f"general={general}", *FINETUNE_ARGS]
    person = _person(tmp_path / "person")
    marker = tmp_path / "killed"
    killed = run_script("finetune", f"person={person}", *args, kill=(stage, kill_at, marker))
    assert killed.returncode == -signal.SIGKILL and marker.exists(), killed.stderr[-3000:]
    assert list((person / "finetuned" / stage).rglob("checkpoints/step_0000002"))  # the stage's own or a soup member's
    assert not (person / "finetuned" / stage / "done.json").exists()
    rerun = run_script("finetune", f"person={person}", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in ("audio2coeff", "refiner"):
        _assert_identical(_weights(person / "finetuned" / name), _weights(straight / name))
    pose = "audio2coeff/pose_weights.safetensors"
    _assert_identical(safetensors.torch.load_file(str(person / "finetuned" / pose)),
                      safetensors.torch.load_file(str(straight / pose)))
    assert f"models in {person / 'finetuned'}" in rerun.stdout


def test_finetune_from_a_video_preprocesses_then_fine_tunes(general, tmp_path):
    """``finetune.py person=NEW video=FILE``: the video (a synthetic person with speech, ground-
    truth landmarks so no detector is needed) becomes the clip, then both stages are fine-tuned;
    rerunning the command does nothing more."""
    from talkinghead.data.synthetic.people import sample_people
    from talkinghead.data.synthetic.world import make_person
    from talkinghead.video import write_video

    truth = make_person(tmp_path / "truth", sample_people(1, seed=3)[0], 30, {"_target_": "talkinghead.face.procedural.make_procedural_model", "seed": 0,
                                                                            "resolution": 64}, crop_size=128)
    clip = read_clip(truth)
    video = write_video(tmp_path / "me.mp4", clip.fixed, audio=clip.audio)
    person = tmp_path / "me"
    args = [f"person={person}", f"video={video}", f"general={general}", *TINY, "detector=ground_truth",
            f"ground_truth_clip={truth}", "min_frames=25", "max_frames=30", "fitting.landmark_steps=20",
            "fitting.photometric_steps=0", "refiner.finetune.val_frames=[24,30]"]
    first = run_script("finetune", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    made = read_clip(person)
    assert made.num_frames == 30 and made.meta.source == "video" and made.meta.has_audio
    for name in ("audio2coeff", "refiner"):
        assert (person / "finetuned" / name / "done.json").is_file()
    assert first.stdout.strip().splitlines()[-1] == f"fine-tuned {person}: ran preprocess, audio2coeff, refiner; " \
                                                    f"models in {person / 'finetuned'}"
    # Output to a pipe, so no progress bar: a progress line every trainer.log_every steps instead.
    for stage in ("audio2coeff (finetune)", "refiner (finetune)"):
        assert any(line.startswith(f"{stage} step 2/") and "steps/s | ETA" in line for line in first.stderr.splitlines()), \
            first.stderr[-2000:]
    again = run_script("finetune", *args)
    assert again.returncode == 0 and "ran nothing" in again.stdout, again.stdout + again.stderr[-2000:]


# ------------------------------------------------------------------------------------ one-line errors
def _one_line_error(run: subprocess.CompletedProcess, *expected: str) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _cli(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run ``scripts/SCRIPT.py ARGV`` in-process (its ``main`` through ``run_cli``): (exit code, stderr)."""
    import runpy

    saved = sys.argv
    sys.argv = [str(ROOT / "scripts" / f"{script}.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = saved
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    from talkinghead.video import write_video

    root = tmp_path_factory.mktemp("bad")
    (root / "notes.txt").write_text("not a folder")
    (root / "corrupt.mp4").write_bytes(b"not a video" * 10)
    write_video(root / "short.mp4", np.zeros((10, 64, 64, 3), np.uint8))
    write_video(root / "flat.mp4", np.full((30, 96, 96, 3), 128, np.uint8), audio=_speech_like(1.2))
    (root / "taken").mkdir()
    (root / "taken" / "meta.json").write_text("{}")
    (root / "no_corpus").mkdir()
    return root


PREPROCESS_ERRORS = {
    "missing video": (["video={root}/nothing.mp4", "out={root}/a"], "video not found"),
    "corrupt video": (["video={root}/corrupt.mp4", "out={root}/b"], "not a readable video"),
    "short video": (["video={root}/short.mp4", "out={root}/c"], "at least 150 frames"),
    "out exists": (["video={root}/flat.mp4", "out={root}/taken", "min_frames=25"], "taken"),
    "out under a file": (["video={root}/flat.mp4", "out={root}/notes.txt/p", "min_frames=25"], "is a file, not a folder"),
    "unknown detector": (["video={root}/flat.mp4", "out={root}/e", "detector=nope"], "detector/nope"),
    "unknown key": (["video={root}/flat.mp4", "out={root}/f", "bogus=1"], "bogus"),
}


@pytest.mark.parametrize("case", list(PREPROCESS_ERRORS))
def test_preprocess_cli_errors_are_one_line(bad_inputs, capsys, case):
    argv, expected = PREPROCESS_ERRORS[case]
    before = sorted(p.name for p in bad_inputs.iterdir())
    code, err = _cli("preprocess", [a.format(root=bad_inputs) for a in argv] + ["progress=false"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert sorted(p.name for p in bad_inputs.iterdir()) == before  # nothing half-written


def test_preprocess_no_face_through_the_script(bad_inputs, tmp_path):
    """A video without a face, as a process: the error is the last line of stderr, and stderr holds
    nothing but the project's own lines (no native mediapipe/TensorFlow Lite log)."""
    run = run_script("preprocess", f"video={bad_inputs / 'flat.mp4'}", f"out={tmp_path / 'p'}", "min_frames=25",
                     "debug=tiny")
    line = _one_line_error(run, "no face found in any of its 30 frames")  # MediaPipe ran: its log stays silent
    assert "flat.mp4" in line and not (tmp_path / "p").exists()


EVALUATE_ERRORS = {
    "missing person": (["person={root}/nobody"], "person clip not found"),
    "incomplete clip": (["person={root}/taken"], "incomplete clip"),
    "unknown key": (["person={root}/taken", "bogus=1"], "unknown config key 'bogus'"),
}


@pytest.mark.parametrize("case", list(EVALUATE_ERRORS))
def test_evaluate_cli_errors_are_one_line(bad_inputs, capsys, case):
    argv, expected = EVALUATE_ERRORS[case]
    code, err = _cli("evaluate", [a.format(root=bad_inputs) for a in argv] + ["debug=tiny"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


def test_evaluate_without_fine_tuned_models_names_the_fix(general, tmp_path, capsys):
    person = _person(tmp_path / "fresh")
    code, err = _cli("evaluate", [f"person={person}", f"general={general}", "debug=tiny"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "finetune.py" in lines[0], err


TABLES_ERRORS = {
    "no corpus": (["data.root={root}/nowhere"], "no corpus at"),
    "person without models": (["data.root={root}/no_corpus", "persons=[p1]", "finetune=false"],
                              "has no fine-tuned models"),
    "unknown key": (["bogus=1"], "unknown config key 'bogus'"),
}


@pytest.mark.parametrize("case", list(TABLES_ERRORS))
def test_reproduce_tables_cli_errors_are_one_line(bad_inputs, tmp_path, capsys, case):
    argv, expected = TABLES_ERRORS[case]
    code, err = _cli("reproduce_tables", [a.format(root=bad_inputs) for a in argv] + [f"out={tmp_path / 't'}",
                                                                                         "debug=tiny"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------------ make_synthetic
@pytest.mark.parametrize("persons, heldout", [(2, 1), (3, 2), (6, 4)])
def test_make_synthetic_with_default_heldout_works_for_any_size(tmp_path, capsys, persons, heldout):
    """``make_synthetic.py persons=N`` with the default held-out count (4) lowered to N - 1."""
    import json

    code, err = _cli("make_synthetic", [f"out={tmp_path / 'c'}", f"persons={persons}", "frames=8", "workers=1",
                                        "progress=false"], capsys)
    assert code == 0, err
    index = json.loads((tmp_path / "c" / "corpus.json").read_text())
    splits = [p["split"] for p in index["persons"]]
    assert len(splits) == persons and splits.count("heldout") == heldout and splits[-heldout:] == ["heldout"] * heldout


def test_make_synthetic_bad_heldout_suggests_one_that_works(tmp_path, capsys):
    code, err = _cli("make_synthetic", [f"out={tmp_path / 'c'}", "persons=3", "heldout=3", "frames=8"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "e.g. heldout=2" in lines[0], err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------ progress
def test_train_script_to_a_file_prints_progress_lines_and_what_it_wrote(tmp_path):
    """``scripts/train.py ... > log 2>&1``: no progress bar (not a terminal), so a line every
    ``trainer.log_every`` steps with step, losses, steps/s and ETA; the last line says what was
    written where."""
    from _clips import write_tiny_corpus

    corpus = write_tiny_corpus(tmp_path / "corpus", lambda root, name, n, seed, split: _person(root / name, seed),
                               2, NUM_FRAMES, NUM_FRAMES)
    out = tmp_path / "run"
    log = tmp_path / "log"
    with open(log, "w") as handle:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        code = subprocess.call([sys.executable, str(ROOT / "scripts" / "train.py"), "stage=audio2coeff", *TINY,
                                f"data.root={corpus}", f"out={out}"], cwd=ROOT, env=env, stdout=handle,
                               stderr=subprocess.STDOUT, timeout=600)
    lines = log.read_text().strip().splitlines()
    assert code == 0, lines[-20:]
    cfg = compose_config("train", TINY)
    total, every = cfg.audio2coeff.train.max_steps, cfg.trainer.log_every
    progress = [line for line in lines if line.startswith("audio2coeff (general) step ")]
    assert [line.split()[3] for line in progress] == [f"{s}/{total}" for s in range(every, total + 1, every)]
    assert all(" total=" in line and " steps/s | ETA " in line for line in progress), progress
    assert lines[-1].startswith(f"wrote {out}: the general audio2coeff model")
