"""The real-person benchmark (talkinghead/pipeline/benchmark.py, bench/real.py) end to end on a
small synthetic-world clip standing in for a preprocessed video: fine-tuning from one-step
general models, every metric, the renders, the contact sheet and the tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from talkinghead.audio import save_wav
from talkinghead.cli import compose_config
from talkinghead.data.clip import list_clips, read_clip
from talkinghead.data.synthetic import make_corpus
from talkinghead.errors import InputError
from talkinghead.face.factory import make_face_model
from talkinghead.pipeline.benchmark import cross_speaker_sync, find_videos, format_tables, run_video, write_report
from talkinghead.pipeline.evaluate_stage1 import evaluate_audio2coeff
from talkinghead.pipeline.stage1 import load_audio2coeff

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["debug=tiny", "trainer.log_every=0", "trainer.image_every=0", "trainer.val_every=0", "trainer.ckpt_every=0"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from talkinghead.train.audio2coeff import train_audio2coeff
    from talkinghead.train.refiner import train_refiner

    root = tmp_path_factory.mktemp("bench")
    make_corpus(root / "world", persons=2, heldout=1, frames=60, seed=5)
    clips = [read_clip(p) for p in list_clips(root / "world")]
    cfg = compose_config("train", [*FAST, "audio2coeff.train.max_steps=2", "refiner.train.max_steps=2"])
    general = root / "general"
    train_audio2coeff(clips[:1], general / "audio2coeff", cfg, mode="general")
    train_refiner(clips[:1], general / "refiner", cfg, mode="general")
    out = root / "out"
    out.mkdir()
    person = clips[1].root
    (out / "tiny").symlink_to(person)  # a "preprocessed" video: the cached clip is used as is
    foreign = save_wav(root / "foreign.wav", np.asarray(clips[0].audio_for_frames(slice(0, 30))))
    finetune_cfg = compose_config("finetune", ["person=unused", *FAST])
    row = run_video(root / "tiny.mp4", out, general, finetune_cfg, foreign=foreign, device="cpu")
    return {"row": row, "out": out, "clip": clips[1], "other": clips[0], "general": general}


def test_a_row_has_every_metric_step_time_and_file(bench):
    row, clip = bench["row"], bench["clip"]
    assert row["name"] == "tiny" and row["cached_preprocess"]
    assert row["frames"] == [clip.test_slice.start, clip.test_slice.stop]
    for key in ("lmd", "lipsync_corr", "lipsync_offset", "lmd_mean_expression", "ridge_lmd", "ridge_lipsync_corr"):
        assert np.isfinite(row["stage1"][key]), key
    assert np.isfinite(row["stage1_general"]["lmd"]) and np.isfinite(row["stage1_general"]["lipsync_corr"])
    assert set(row["pose"]) == {"still", "predicted", "matched"}
    assert row["mouth"]["size"] == 224 and row["mouth"]["sharpness_ratio"] > 0.5
    assert row["refiner"]["size"] == 32 and 0 < row["refiner"]["sharpness_ratio"]  # debug=tiny refiner
    assert set(row["seconds"]) >= {"preprocess", "finetune_audio2coeff", "finetune_refiner", "evaluate",
                                   "render_heldout", "render_foreign", "render_foreign_pasted"}
    assert all(v >= 0 for v in row["seconds"].values())
    assert row["renders"]["heldout"]["frames"] == clip.test_slice.stop - clip.test_slice.start
    for label in ("heldout", "foreign", "foreign_pasted", "contact_sheet"):
        assert (bench["out"] / row["files"][label].split("/")[-1]).is_file(), label
    assert (bench["out"] / "tiny" / "finetuned" / "audio2coeff" / "done.json").is_file()


def test_contact_sheet_has_real_generated_and_pasted_rows(bench):
    import cv2

    sheet = cv2.imread(bench["row"]["files"]["contact_sheet"])
    assert sheet.shape[0] == 3 * 224 and sheet.shape[1] >= 224 * 4


def test_report_files_and_tables(bench, tmp_path):
    row = bench["row"]
    json_path, md_path = write_report([row, {**row, "name": "copy"}], tmp_path)
    assert json.loads(json_path.read_text())[0]["name"] == "tiny"
    text = md_path.read_text()
    assert text == format_tables([row, {**row, "name": "copy"}])
    lmd = f"{row['stage1']['lmd']:.3f}"
    assert "| tiny |" in text and "| **mean** |" in text and lmd in text


def test_cross_speaker_sync_drives_each_model_with_the_other_videos_speech(bench, tmp_path):
    """Two "videos": each person's models run on the other clip's whole audio, scored against
    that clip's own mouth; the table gains its section."""
    out, general = tmp_path / "out", bench["general"]
    out.mkdir()
    (out / "tiny").symlink_to(bench["out"] / "tiny")
    (out / "other").mkdir()
    for item in bench["other"].root.iterdir():
        (out / "other" / item.name).symlink_to(item)
    (out / "other" / "finetuned").symlink_to(bench["out"] / "tiny" / "finetuned")  # any fine-tuned model will do
    rows = [{**bench["row"]}, {**bench["row"], "name": "other"}]
    cross_speaker_sync(rows, out, general)
    other = bench["other"]
    expected = evaluate_audio2coeff(load_audio2coeff(bench["out"] / "tiny" / "finetuned" / "audio2coeff"), other,
                                    make_face_model(other.meta.face_model), slice(0, other.num_frames), ridge_lam=None)
    assert rows[0]["cross_speaker"]["pairs"].keys() == {"other"} and rows[1]["cross_speaker"]["pairs"].keys() == {"tiny"}
    assert rows[0]["cross_speaker"]["finetuned"] == pytest.approx(expected["lipsync_corr"], abs=1e-6)
    for row in rows:
        assert all(-1.0 <= row["cross_speaker"][tag] <= 1.0 for tag in ("general", "finetuned"))
    text = format_tables(rows)
    assert "driven by the other videos' speech" in text
    assert f"{rows[1]['cross_speaker']['general']:.3f}" in text.split("driven by the other videos")[1]
    single = [{**bench["row"]}]
    cross_speaker_sync(single, out, general)  # one video: nothing to cross
    assert "cross_speaker" not in single[0] and "driven by the other" not in format_tables(single)


def test_find_videos(tmp_path):
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / "a.mov").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_videos(tmp_path)] == ["a.mov", "b.mp4"]
    with pytest.raises(InputError, match="no such file or folder"):
        find_videos(tmp_path / "missing")
    with pytest.raises(InputError, match="no video files"):
        find_videos([])
