"""The real-person benchmark (talkinghead/pipeline/benchmark.py, bench/real.py) end to end on a
small synthetic-world clip standing in for a preprocessed video: fine-tuning from one-step
general models, every metric, the renders, the contact sheet and the tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _clips import write_stand_in_clip

from talkinghead.audio import save_wav
from talkinghead.cli import compose_config
from talkinghead.data.clip import ClipMeta, held_out_fold, list_clips, num_folds, read_clip
from talkinghead.data.synthetic import make_corpus
from talkinghead.errors import InputError
from talkinghead.face.factory import make_face_model
from talkinghead.pipeline.benchmark import (cross_speaker_sync, cross_validated_stage1, find_videos, format_tables, run_video,
                                            write_report)
from talkinghead.pipeline.evaluate import evaluate_stage1
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


def _numbered_clip(path, n: int, train: tuple[int, int], test: tuple[int, int]):
    """A clip whose frame ``i`` is recognisable: coefficient 0, landmark x, pixel value and every
    audio sample of the frame are ``i``."""
    coeffs = np.zeros((n, 257), np.float32)
    coeffs[:, 0] = np.arange(n)
    landmarks = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 68, 2)).copy()
    frames = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 8, 8, 3)).copy()
    audio = np.repeat(np.arange(n, dtype=np.float32), 640) / 100.0
    meta = ClipMeta(name=path.name, num_frames=n, crop_size=8, source="synthetic", train_frames=train, test_frames=test)
    return read_clip(write_stand_in_clip(path, meta, coeffs, frames, audio, landmarks))


def test_held_out_fold_moves_one_block_to_the_end(tmp_path):
    clip = _numbered_clip(tmp_path / "p", 22, (0, 15), (15, 20))  # span 20, blocks of 5, 2 frames after
    assert num_folds(clip) == 4
    frame_ids = lambda view: view.coeffs[:, 0].astype(int).tolist()  # noqa: E731
    own = held_out_fold(clip, 3)  # the clip's own split, frames after the span dropped
    assert frame_ids(own) == list(range(20)) and own.meta.train_frames == (0, 15) and own.meta.test_frames == (15, 20)
    np.testing.assert_array_equal(own.audio, clip.audio[:20 * 640])
    view = held_out_fold(clip, 1)
    assert view.name == "p_fold1" and view.num_frames == 20
    assert frame_ids(view) == [*range(5), *range(10, 20), *range(5, 10)]
    assert view.test_slice == slice(15, 20) and view.train_slice == slice(0, 15)
    for array in (view.landmarks[:, 0, 0], view.fixed[:, 0, 0, 0], view.aligned[:, 0, 0, 0]):
        assert array.astype(int).tolist() == frame_ids(view)
    assert len(view.audio) == 20 * 640
    np.testing.assert_array_equal(view.audio_for_frames(view.test_slice), clip.audio_for_frames(slice(5, 10)))
    np.testing.assert_allclose(view.audio[::640] * 100, frame_ids(view), atol=0.01)  # audio follows its frames (16-bit wav)
    # 20 frames in blocks of 6: three folds, the first two frames always fine-tune
    odd = _numbered_clip(tmp_path / "odd", 20, (0, 14), (14, 20))
    assert num_folds(odd) == 3
    assert frame_ids(held_out_fold(odd, 0)) == [0, 1, *range(8, 20), *range(2, 8)]
    with pytest.raises(InputError, match="fold 3 does not exist; the clip has 3 folds"):
        held_out_fold(odd, 3)
    gap = _numbered_clip(tmp_path / "gap", 20, (0, 10), (12, 20))
    with pytest.raises(InputError, match="cross-validation needs the fine-tuning frames"):
        num_folds(gap)


def test_cross_validation_fine_tunes_and_evaluates_every_fold(bench, tmp_path):
    """Each block held out in turn: the protocol's own split (the last fold) reproduces the
    benchmark's figures, each fold's general figure is evaluate_stage1 on that fold's view, and
    the table gains its section."""
    out, general, clip = tmp_path / "out", bench["general"], bench["clip"]
    out.mkdir()
    (out / "tiny").mkdir()
    for item in clip.root.iterdir():
        (out / "tiny" / item.name).symlink_to(item)
    rows = [{**bench["row"], "seconds": dict(bench["row"]["seconds"])}]
    cfg = compose_config("finetune", ["person=unused", *FAST])
    cross_validated_stage1(rows, out, general, cfg)
    cv = rows[0]["stage1_cv"]
    assert len(cv["folds"]) == num_folds(clip) == 4
    assert [f["held_out"] for f in cv["folds"]] == [[0, 15], [15, 30], [30, 45], [45, 60]]
    for key in ("lipsync_corr", "lmd", "ridge_lipsync_corr", "ridge_lmd", "lmd_mean_expression"):
        assert cv["folds"][-1]["finetuned"][key] == pytest.approx(rows[0]["stage1"][key], abs=1e-5), key
    view = held_out_fold(clip, 1)
    direct = evaluate_stage1(load_audio2coeff(general / "audio2coeff"), view, make_face_model(clip.meta.face_model),
                             view.test_slice, ridge_lam=None)
    assert cv["folds"][1]["general"]["lipsync_corr"] == pytest.approx(direct["lipsync_corr"], abs=1e-6)
    assert cv["finetuned_corr"] == pytest.approx(np.mean([f["finetuned"]["lipsync_corr"] for f in cv["folds"]]))
    assert cv["finetuned_corr_min"] <= cv["finetuned_corr"] <= cv["finetuned_corr_max"]
    assert (out / "tiny" / "cv" / "fold0" / "audio2coeff" / "done.json").is_file()
    assert rows[0]["seconds"]["cross_validation"] > 0
    text = format_tables(rows)
    assert "cross-validated" in text and f"{cv['ridge_lmd']:.3f}" in text.split("cross-validated")[1]
    assert "cross-validated" not in format_tables([bench["row"]])


def test_find_videos(tmp_path):
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / "a.mov").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_videos(tmp_path)] == ["a.mov", "b.mp4"]
    with pytest.raises(InputError, match="no such file or folder"):
        find_videos(tmp_path / "missing")
    with pytest.raises(InputError, match="no video files"):
        find_videos([])
