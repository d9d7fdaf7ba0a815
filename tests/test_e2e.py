"""End to end: fine-tuning job, demo, evaluation and tables.

Fast tests check the job logic and the outputs' formats without training. The slow test runs
the README's main job (``scripts/demo.py debug=tiny``) on a tiny synthetic corpus, then
``scripts/evaluate.py``, ``scripts/reproduce_tables.py`` and ``scripts/infer.py`` as real
subprocesses on its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from talkinghead.cli import compose_config
from talkinghead.data.clip import read_clip
from talkinghead.errors import ConfigError, InputError, TrainingError
from talkinghead.pipeline.demo import contact_sheet, ensure_corpus, stream_durations
from talkinghead.pipeline.finetune import finetune_person, parse_stages
from talkinghead.stagedir import is_done
from talkinghead.pipeline.tables import PersonTables, build_tables
from _clips import random_frame_clip

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


_clip = random_frame_clip  # tests/_clips.py


def _finetune_cfg(*extra: str):
    return compose_config("finetune", ["person=unused", "debug=tiny", *extra])


def _fake_done(stage_dir: Path) -> None:
    stage_dir.mkdir(parents=True)
    (stage_dir / "weights.safetensors").write_bytes(b"")
    (stage_dir / "done.json").write_text("{}")


# ----------------------------------------------------------------------------- fine-tuning job
def test_finetune_refuses_missing_clip_without_video(tmp_path):
    with pytest.raises(InputError, match="video=FILE"):
        finetune_person(tmp_path / "nobody", _finetune_cfg(), general=tmp_path / "general", progress=False)


def test_finetune_names_the_command_for_missing_general_models(tmp_path):
    person = _clip(tmp_path / "alice")
    with pytest.raises(TrainingError, match=r"scripts/train.py stage=audio2coeff .* out=.*general/audio2coeff"):
        finetune_person(person, _finetune_cfg(), general=tmp_path / "general", progress=False)
    assert not (person / "finetuned" / "audio2coeff").exists()


def test_finetune_skips_finished_stages_without_needing_general_models(tmp_path):
    person = _clip(tmp_path / "bob")
    for stage in ("audio2coeff", "refiner"):
        _fake_done(person / "finetuned" / stage)
    result = finetune_person(person, _finetune_cfg(), general=tmp_path / "missing", progress=False)
    assert result.ran == [] and result.skipped == ["audio2coeff", "refiner"]
    assert result.out == person / "finetuned"


def test_finetune_stage1_needs_audio(tmp_path):
    person = _clip(tmp_path / "mute", with_audio=False)
    _fake_done(tmp_path / "general" / "audio2coeff")
    with pytest.raises(InputError, match="no audio"):
        finetune_person(person, _finetune_cfg(), stages=("audio2coeff",), general=tmp_path / "general", progress=False)


def test_finetune_refuses_a_silent_video_before_preprocessing(tmp_path):
    from talkinghead.video import write_video

    video = write_video(tmp_path / "silent.mp4", np.zeros((10, 64, 64, 3), np.uint8))  # no face either: never reached
    _fake_done(tmp_path / "general" / "audio2coeff")
    _fake_done(tmp_path / "general" / "refiner")
    with pytest.raises(InputError, match=r"silent\.mp4 has no audio stream.*stage=refiner"):
        finetune_person(tmp_path / "me", _finetune_cfg(), video=video, general=tmp_path / "general", progress=False)
    assert not (tmp_path / "me").exists()


def test_stage_choice_is_validated():
    assert parse_stages("both") == ("audio2coeff", "refiner")
    assert parse_stages("refiner") == ("refiner",)
    with pytest.raises(ConfigError, match="stage="):
        parse_stages("everything")


def test_is_done_needs_marker_and_weights(tmp_path):
    stage = tmp_path / "s"
    stage.mkdir()
    (stage / "done.json").write_text("{}")
    assert not is_done(stage)
    (stage / "weights.safetensors").write_bytes(b"")
    assert is_done(stage)


# ----------------------------------------------------------------------------- demo pieces
def test_demo_refuses_a_corpus_of_another_size(tmp_path):
    (tmp_path / "corpus.json").write_text(json.dumps(
        {"format_version": 1, "frames": 40, "seed": 0, "persons": [{"name": "a", "split": "train"}]}))
    with pytest.raises(ConfigError, match="delete"):
        ensure_corpus(tmp_path, persons=3, heldout=1, frames=400, seed=0, workers=1, progress=False)
    assert ensure_corpus(tmp_path, persons=1, heldout=0, frames=40, seed=0, workers=1, progress=False) == tmp_path


def test_contact_sheet_and_stream_durations(tmp_path):
    import cv2

    from talkinghead.video import write_video

    clip = read_clip(_clip(tmp_path / "carol", n=12))
    video_frames = np.full((3, 32, 32, 3), 200, np.uint8)
    audio = np.sin(np.arange(int(0.12 * 16000)) * 0.1).astype(np.float32) * 0.5
    video = write_video(tmp_path / "v.mp4", video_frames, audio=audio)
    sheet = cv2.imread(str(contact_sheet(video, clip, slice(9, 12), tmp_path / "sheet.png", tile=64)))
    assert sheet.shape == (128, 3 * 64, 3)  # two rows (real, generated) of three tiles
    assert sheet[64 + 20:, :, :].mean() > 150  # the generated row shows the bright video frames
    video_s, audio_s = stream_durations(video)
    assert video_s == pytest.approx(0.12) and abs(audio_s - 0.12) <= 0.04


def _person_tables(name: str, better: bool) -> PersonTables:
    up, down = (1.0, -1.0) if better else (-1.0, 1.0)
    stage1 = {"general": {"lmd": 3.0, "lipsync_corr": 0.5, "lipsync_offset": 1.0, "hs": 0.5, "lmd_mean_expression": 4.0},
              "finetuned": {"lmd": 3.0 + 0.5 * down, "lipsync_corr": 0.5 + 0.1 * up, "lipsync_offset": 0.0,
                            "hs": 0.5 + 0.2 * up, "lmd_mean_expression": 4.0}}
    base = {"psnr": 20.0, "ssim": 0.7, "psnr_input": 18.0, "ssim_input": 0.6}
    stage2 = {m: {"zero": dict(base), "memory": {**base, "psnr": 20.0 + up, "ssim": 0.7 + 0.05 * up},
                  "clip": {**base, "psnr": 21.0}} for m in ("general", "finetuned")}
    pose = {"still": 0.3, "predicted": 0.5, "matched": 0.5 + 0.2 * up}
    return PersonTables(name, stage1, stage2, pose)


def test_tables_report_means_and_verdicts():
    markdown, numbers = build_tables([_person_tables("a", True), _person_tables("b", True)])
    for title in ("Table 1. Stage 1", "Table 2. Stage 2", "Table 3. Head pose"):
        assert title in markdown
    assert "does not hold" not in markdown and markdown.count("**holds**") == 8
    assert numbers["stage1"]["finetuned"]["hs"][:2] == pytest.approx((0.7, 0.0))
    assert "| fine-tuned (personalised) | 2.500 ± 0.000 |" in markdown
    assert "loudness" not in markdown  # no loudness baseline numbers: no row
    assert "| a | 0.500 | 0.700 | 3.000 | 2.500 | 4.000 |" in markdown  # per-person Table 1
    assert "fine-tuned HS > general HS: 2 of 2 persons" in markdown
    assert "general LMD < every baseline (mean expression): 2 of 2 persons" in markdown
    worse, _ = build_tables([_person_tables("c", False)])
    assert worse.count("does not hold") == 7
    assert "fine-tuned HS > general HS: 0 of 1 persons" in worse
    mixed, _ = build_tables([_person_tables("d", True), _person_tables("e", False)])
    assert "fine-tuned HS > general HS: 1 of 2 persons" in mixed


def test_tables_need_persons():
    with pytest.raises(InputError, match="no persons"):
        build_tables([])


# ----------------------------------------------------------------------------- the whole job
def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH: the scripts must import this checkout (not whatever `pip install -e` points at).
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=1800)


@pytest.mark.slow
def test_demo_end_to_end_then_evaluate_tables_and_infer(tmp_path):
    from talkinghead.pipeline.demo import demo_from_config

    out = tmp_path / "demo"
    cfg = compose_config("demo", [f"out={out}", "debug=tiny", "workers=1"])
    result = demo_from_config(cfg)

    # An mp4 with a video and an audio stream whose durations match the input audio within 40 ms.
    assert result.video.is_file() and result.contact_sheet.is_file()
    assert abs(result.video_seconds - result.input_audio_seconds) <= 0.040
    assert abs(result.audio_seconds - result.input_audio_seconds) <= 0.040
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["stage1"]) >= {"lmd", "lipsync_corr", "lipsync_offset", "hs"}
    assert set(metrics["stage2"]) >= {"psnr", "ssim", "psnr_input", "ssim_input"}
    assert set(metrics["pose"]) == {"matched", "predicted", "still"}
    assert all(np.isfinite(v) for v in metrics["pose"].values())

    # A rerun reuses the corpus and every trained stage.
    person = result.video.parent / "corpus" / result.video.name.replace("_heldout.mp4", "")
    markers = sorted(out.glob("general/*/done.json")) + sorted(person.glob("finetuned/*/done.json"))
    assert len(markers) == 4
    stamps = [m.stat().st_mtime_ns for m in markers]
    demo_from_config(cfg)
    assert [m.stat().st_mtime_ns for m in markers] == stamps

    # The scripts themselves, on the demo's corpus and models.
    corpus = out / "corpus"
    tables = _script("reproduce_tables", f"data.root={corpus}", f"general={out / 'general'}", f"out={tmp_path / 'tables'}",
                     "debug=tiny", cwd=tmp_path)
    assert tables.returncode == 0, tables.stderr
    text = (tmp_path / "tables" / "tables.md").read_text()
    assert "Table 1" in text and "Table 2" in text and "Table 3" in text and text in tables.stdout

    evaluated = _script("evaluate", f"person={person}", f"out={tmp_path / 'eval.json'}", "debug=tiny", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["person"] == person.name

    video = tmp_path / "cli.mp4"
    good = _script("infer", f"person={person}", f"audio={out / (person.name + '_heldout_audio.wav')}", f"out={video}",
                   "pose.mode=predicted", "debug=tiny", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert video.is_file()
    bad = _script("infer", f"person={person}", f"audio={tmp_path / 'missing.wav'}", f"out={tmp_path / 'bad.mp4'}", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error: ")
    assert not (tmp_path / "bad.mp4").exists()
