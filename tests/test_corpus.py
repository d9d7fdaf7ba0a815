"""Tests of corpus preprocessing (talkinghead/preprocess/corpus.py, scripts/preprocess_corpus.py):
stable sharding, LRW names and splits, resume after a killed run, rejections, the index, and the
Hydra joblib launcher fanning the shards out over two worker processes.

The source corpus is a few synthetic-world people written as LRW-style word-clip videos; the
``ground_truth`` detector takes each video's landmarks from its true coefficients (no MediaPipe)
and the fit is ``debug=tiny``'s, so a clip costs about a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from talkinghead.cli import compose_config
from talkinghead.data.clip import list_clips, read_clip
from talkinghead.errors import ConfigError, InputError
from talkinghead.preprocess.corpus import (
    STATE_DIR,
    CorpusVideo,
    clip_name,
    find_videos,
    preprocess_corpus_from_config,
    preprocess_shard,
    rejection_file,
    selected,
    shard_of,
    shard_videos,
)
from talkinghead.video import write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "preprocess_corpus.py"
FACE_MODEL = {"kind": "procedural", "seed": 0, "resolution": 64}
FRAMES = 29  # an LRW word clip
# (word, LRW split, number): the synthetic people behind the videos, in this order
WORDS = [("ABOUT", "train", 1), ("ABOUT", "train", 2), ("ABOUT", "val", 1), ("BLACK", "train", 1),
         ("BLACK", "test", 1), ("BLACK", "val", 3)]


def _rel(word: str, split: str, number: int) -> str:
    return f"{word}/{split}/{word}_{number:05d}.mp4"


@pytest.fixture(scope="module")
def lrw_like(tmp_path_factory) -> tuple[Path, Path]:
    """``src``: LRW-layout videos of synthetic people (64 px, 29 frames, with audio) plus one
    10-frame video (``ABOUT/train/ABOUT_00009.mp4``, too short: rejected); ``truth``: each video's
    clip with the true coefficients, named as the corpus clip (for ``detector=ground_truth``)."""
    from talkinghead.data.synthetic.people import sample_people
    from talkinghead.data.synthetic.world import make_person

    root = tmp_path_factory.mktemp("lrw_like")
    src, truth = root / "src", root / "truth"
    people = sample_people(len(WORDS), seed=5)
    for person, (word, split, number) in zip(people, WORDS):
        rel = _rel(word, split, number)
        clip = read_clip(make_person(truth / clip_name(rel), person, FRAMES, FACE_MODEL, crop_size=64))
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(src / rel, np.asarray(clip.fixed), audio=clip.audio)
    short = read_clip(truth / clip_name(_rel("ABOUT", "train", 1)))
    write_video(src / _rel("ABOUT", "train", 9), np.asarray(short.fixed[:10]), audio=short.audio[: 10 * 640])
    return src, truth


def _overrides(src: Path, truth: Path, out: Path, *extra: str) -> list[str]:
    return [f"src={src}", f"out={out}", "detector=ground_truth", f"ground_truth_root={truth}", "debug=tiny",
            "device=cpu", *extra]


def _clip_identities(out: Path) -> dict[str, tuple[int, int]]:
    """Each finished clip's (inode of its folder, mtime of its meta.json): a clip written again
    gets a new folder (write_clip renames a temporary one into place)."""
    return {p.name: (p.stat().st_ino, (p / "meta.json").stat().st_mtime_ns)
            for p in out.iterdir() if not p.name.startswith(".") and (p / "meta.json").is_file()}  # not temporaries


def _report(out: Path, shard: int, shards: int) -> dict:
    return json.loads((out / STATE_DIR / "reports" / f"shard-{shard}-of-{shards}.json").read_text())


# ---------------------------------------------------------------------------------------------
# Names, splits, shards


def test_lrw_names_splits_and_the_listing(tmp_path):
    """LRW paths become WORD_split_NNNNN with LRW's val -> heldout and test left out; other
    videos are named by their path; hidden files, other suffixes and the output folder are not
    listed; two videos with one clip name are a one-line error."""
    for rel in ["ABOUT/train/ABOUT_00001.mp4", "ABOUT/val/ABOUT_00002.mp4", "ABOUT/test/ABOUT_00003.mp4",
                "speaker 1/talk.MP4", "loose.mp4", ".hidden/x.mp4", "ABOUT/train/._ABOUT_00001.mp4", "notes.txt",
                "out/clip/source.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    videos = find_videos(tmp_path, {"train": "train", "val": "heldout", "test": None}, "train", exclude=tmp_path / "out")
    assert [(v.rel, v.name, v.split) for v in videos] == [
        ("ABOUT/test/ABOUT_00003.mp4", "ABOUT_test_00003", None),
        ("ABOUT/train/ABOUT_00001.mp4", "ABOUT_train_00001", "train"),
        ("ABOUT/val/ABOUT_00002.mp4", "ABOUT_val_00002", "heldout"),
        ("loose.mp4", "loose", "train"),
        ("speaker 1/talk.MP4", "speaker 1_talk", "train"),
    ]
    assert [v.name for v in selected(videos)] == ["ABOUT_train_00001", "ABOUT_val_00002", "loose", "speaker 1_talk"]
    (tmp_path / "speaker 1_talk.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="both become clip 'speaker 1_talk'"):
        find_videos(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        find_videos(tmp_path / "missing")


def test_sharding_is_stable_disjoint_balanced_and_covers_all():
    """Every video is in exactly one shard; shards are within 25% of an even share; a video's
    shard does not change when other videos come or go, nor in another Python process with
    another hash seed (Python's hash() of a str would change)."""
    rels = [f"W{w:03d}/train/W{w:03d}_{i:05d}.mp4" for w in range(40) for i in range(50)]  # 2000 paths
    shards = 8
    assigned = [shard_of(rel, shards) for rel in rels]
    assert all(0 <= k < shards for k in assigned)
    counts = np.bincount(assigned, minlength=shards)
    assert counts.min() > 0.75 * len(rels) / shards and counts.max() < 1.25 * len(rels) / shards, counts
    videos = [CorpusVideo(Path(rel), rel, clip_name(rel), "train") for rel in rels]
    parts = [shard_videos(videos, k, shards) for k in range(shards)]
    assert sorted(v.rel for part in parts for v in part) == sorted(rels)  # covers all, each once
    fewer = [shard_of(rel, shards) for rel in rels[::3]]
    assert fewer == assigned[::3]
    code = ("import json, sys; from talkinghead.preprocess.corpus import shard_of; "
            "print(json.dumps([shard_of(r, 8) for r in json.loads(sys.stdin.read())]))")
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(REPO)}  # another str hash() than ours
    other = subprocess.run([sys.executable, "-c", code], input=json.dumps(rels), capture_output=True, text=True,
                           env=env, check=True)
    assert json.loads(other.stdout) == assigned


# ---------------------------------------------------------------------------------------------
# Preprocessing shards: skip, resume, reject, index


def test_shards_write_each_clip_once_reject_bad_videos_and_a_rerun_does_nothing(tmp_path, lrw_like):
    """Two shards in one process (shard=null): every video with a split becomes a valid clip in
    exactly one shard, the 10-frame video is rejected with its reason, LRW's test clip is left
    out, corpus.json lists train and heldout clips; the same command again writes nothing and
    does not even look at the rejected video again."""
    src, truth = lrw_like
    out = tmp_path / "corpus"
    index = preprocess_corpus_from_config(compose_config("preprocess_corpus", _overrides(src, truth, out, "shards=2")))
    names = {clip_name(_rel(*w)) for w in WORDS if w[1] != "test"}
    reports = [_report(out, k, 2) for k in range(2)]
    assert sum(r["videos"] for r in reports) == len(names) + 1  # + the short video
    assert sum(r["written"] for r in reports) == len(names) and sum(r["rejected"] for r in reports) == 1
    rejected = json.loads(rejection_file(out, "ABOUT_train_00009").read_text())
    assert rejected["video"] == "ABOUT/train/ABOUT_00009.mp4" and "frames" in rejected["error"]
    corpus = json.loads(Path(index).read_text())
    assert {p["name"] for p in corpus["persons"]} == names and corpus["rejected"] == 1 and corpus["missing"] == 0
    assert {p["split"] for p in corpus["persons"] if "_val_" in p["name"]} == {"heldout"}
    assert [c.name for c in list_clips(out, "heldout")] == ["ABOUT_val_00001", "BLACK_val_00003"]
    clip = read_clip(out / "BLACK_train_00001")
    assert clip.num_frames == FRAMES and clip.meta.has_audio and clip.meta.name == "BLACK_train_00001"
    assert clip.source_video is None  # keep_source=false
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [STATE_DIR]  # no temporary leftovers

    before = _clip_identities(out)
    preprocess_corpus_from_config(compose_config("preprocess_corpus", _overrides(src, truth, out, "shards=2")))
    again = [_report(out, k, 2) for k in range(2)]
    assert sum(r["written"] for r in again) == 0 and sum(r["rejected"] for r in again) == 0
    assert sum(r["finished_before"] for r in again) == len(names) and sum(r["rejected_before"] for r in again) == 1
    assert _clip_identities(out) == before


def test_a_killed_run_resumes_and_writes_only_the_missing_clips(tmp_path, lrw_like):
    """What SIGKILL leaves behind (a finished clip, a half-written temporary clip folder, an
    output folder without meta.json) -> the rerun removes the temporary folder, keeps the
    finished clip as it is and writes every other clip once."""
    src, truth = lrw_like
    out = tmp_path / "corpus"
    videos = [v for v in selected(find_videos(src, {"train": "train", "val": "heldout", "test": None}))
              if v.name.startswith("ABOUT")]  # 3 clips and the short video
    cfg = compose_config("preprocess_corpus", _overrides(src, truth, out))
    common = dict(detector={"_target_": "talkinghead.preprocess.landmarks.ground_truth_detector"}, ground_truth_root=truth, face_model_cfg=FACE_MODEL,
                  fitting_cfg=dict(cfg.fitting), min_frames=25, max_frames=FRAMES, device="cpu")
    first = [v for v in videos if v.name == "ABOUT_train_00001"]
    assert preprocess_shard(first, out, **common).written == 1
    finished = _clip_identities(out)
    half = out / ".ABOUT_val_00001.tmp-abc123"  # write_clip's temporary sibling, killed mid-write
    half.mkdir()
    (half / "coeffs.npy").write_bytes(b"\x93NUMPY")
    (out / "ABOUT_train_00002").mkdir()  # not a clip (no meta.json): redone

    report = preprocess_shard(videos, out, **common)
    assert report.stale_temps_removed == 1 and not half.exists()
    assert report.finished_before == 1 and report.written == len(videos) - 2 and report.rejected == 1
    assert _clip_identities(out)["ABOUT_train_00001"] == finished["ABOUT_train_00001"]
    for v in videos:
        if v.name != "ABOUT_train_00009":
            assert read_clip(out / v.name).num_frames == FRAMES


def test_corpus_config_errors_are_one_line(tmp_path, lrw_like):
    src, truth = lrw_like
    with pytest.raises(ConfigError, match="ground_truth_root"):
        preprocess_corpus_from_config(compose_config("preprocess_corpus", [f"src={src}", f"out={tmp_path}",
                                                                           "detector=ground_truth"]))
    with pytest.raises(ConfigError, match="detector=saved"):
        preprocess_corpus_from_config(compose_config("preprocess_corpus", [f"src={src}", f"out={tmp_path}",
                                                                           "detector=saved"]))
    with pytest.raises(ConfigError, match="shards=0"):
        preprocess_corpus_from_config(compose_config("preprocess_corpus", _overrides(src, truth, tmp_path, "shards=0")))
    with pytest.raises(ConfigError, match="shard=3 is outside 0..1"):
        preprocess_corpus_from_config(compose_config("preprocess_corpus",
                                                     _overrides(src, truth, tmp_path, "shards=2", "shard=3")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .mp4 videos"):
        preprocess_corpus_from_config(compose_config("preprocess_corpus", _overrides(empty, truth, tmp_path / "o")))


# ---------------------------------------------------------------------------------------------
# The command: Hydra's joblib launcher, and SIGKILL


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=600, **kwargs)


@pytest.mark.slow
def test_joblib_launcher_fans_shards_out_over_two_workers(tmp_path, lrw_like):
    """``--multirun shards=3 hydra/launcher=corpus_joblib`` (2 workers): each shard ran as a job
    in one of two worker processes, every clip written once, the index written when the sweep
    ended; the same command again writes nothing."""
    src, truth = lrw_like
    out = tmp_path / "corpus"
    args = ["--multirun", *_overrides(src, truth, out, "shards=3"), "hydra/launcher=corpus_joblib",
            "hydra.launcher.n_jobs=2"]
    run = _run(args)
    assert run.returncode == 0, run.stderr[-2000:]
    reports = [_report(out, k, 3) for k in range(3)]
    assert len({r["pid"] for r in reports}) == 2 and os.getpid() not in {r["pid"] for r in reports}
    names = {clip_name(_rel(*w)) for w in WORDS if w[1] != "test"}
    assert sum(r["written"] for r in reports) == len(names) and sum(r["rejected"] for r in reports) == 1
    assert {p.name for p in list_clips(out)} == names
    assert "wrote" in run.stdout and "corpus.json" in run.stdout
    assert sorted(p.name for p in (out / STATE_DIR / "logs").iterdir().__next__().iterdir()
                  if p.name.startswith("shard")) == ["shard0", "shard1", "shard2"]
    before = _clip_identities(out)
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sum(_report(out, k, 3)["written"] for k in range(3)) == 0 and _clip_identities(out) == before


@pytest.mark.slow
def test_sigkill_midway_then_rerun_completes_every_clip_once(tmp_path, lrw_like):
    """The command killed with SIGKILL once two clips are finished: nothing half-written is
    visible as a clip, and the rerun finishes the corpus without rewriting those two."""
    src, truth = lrw_like
    out = tmp_path / "corpus"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # one clip per fit, so that the kill lands inside a fit, not in a batch's burst of writes
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *_overrides(src, truth, out, "fitting.batch_clips=1")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(_clip_identities(out)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = _clip_identities(out)
    assert len(survivors) >= 2 and not (out / "corpus.json").exists()
    for path in out.iterdir():
        if not path.name.startswith("."):
            read_clip(path)  # every visible folder is a whole clip
    run = _run(_overrides(src, truth, out))
    assert run.returncode == 0, run.stderr[-2000:]
    names = {clip_name(_rel(*w)) for w in WORDS if w[1] != "test"}
    after = _clip_identities(out)
    assert set(after) == names and all(after[n] == survivors[n] for n in survivors)
    assert _report(out, 0, 1)["written"] == len(names) - len(survivors)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [STATE_DIR]


def test_the_command_checks_before_launching_and_composes_the_slurm_preset(tmp_path):
    """A bad src= stops a --multirun sweep before any job starts, as one line with exit code 2;
    hydra/launcher=corpus_slurm composes to submitit's Slurm launcher with one GPU per shard and
    the sweep over range(shards)."""
    bad = _run(["--multirun", f"src={tmp_path / 'missing'}", f"out={tmp_path / 'out'}", "shards=2",
                "hydra/launcher=corpus_joblib"])
    assert bad.returncode == 2 and "Launching" not in bad.stdout + bad.stderr
    assert bad.stderr.strip().splitlines() == [f"error: src={tmp_path / 'missing'} is not a folder; point src= at "
                                               "the folder of videos (e.g. LRW's lipread_mp4/)"]
    cfg = _run([f"src={tmp_path}", f"out={tmp_path / 'out'}", "shards=64", "hydra/launcher=corpus_slurm",
                "--cfg", "all", "--resolve"])
    assert cfg.returncode == 0, cfg.stderr
    import yaml

    hydra_cfg = yaml.safe_load(cfg.stdout)["hydra"]
    assert hydra_cfg["launcher"]["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert hydra_cfg["launcher"]["gpus_per_node"] == 1 and hydra_cfg["launcher"]["max_num_timeout"] > 0
    assert hydra_cfg["sweeper"]["params"] == {"shard": "range(64)"}


def test_a_shard_fits_its_clips_in_batches_as_if_one_at_a_time(lrw_like, tmp_path, monkeypatch):
    """A shard fits ``fitting.batch_clips`` videos in one optimisation: the clips come out as when
    each is fitted alone (batch of 1), up to float rounding, and the too-short video is still
    rejected with its reason while its batch companions are written."""
    src, truth = lrw_like
    videos = [v for v in selected(find_videos(src, {"train": "train", "val": "heldout", "test": None}))
              if v.name.startswith("ABOUT")]  # 3 clips and the short video
    cfg = compose_config("preprocess_corpus", _overrides(src, truth, tmp_path / "unused"))
    import talkinghead.preprocess.pipeline as pipeline

    sizes = []  # clips per fit_clips call
    real_fit_clips = pipeline.fit_clips
    monkeypatch.setattr(pipeline, "fit_clips", lambda crops, *a, **k: sizes.append(len(crops)) or real_fit_clips(crops, *a, **k))
    coeffs = {}
    for batch_clips in (1, 3):
        out = tmp_path / f"batch{batch_clips}"
        common = dict(detector={"_target_": "talkinghead.preprocess.landmarks.ground_truth_detector"},
                      ground_truth_root=truth, face_model_cfg=FACE_MODEL,
                      fitting_cfg={**dict(cfg.fitting), "batch_clips": batch_clips}, min_frames=25,
                      max_frames=FRAMES, device="cpu")
        report = preprocess_shard(videos, out, **common)
        assert (report.written, report.rejected) == (3, 1)
        assert sizes == [1, 1, 1] if batch_clips == 1 else sizes == [3]
        sizes.clear()
        assert "frames" in json.loads(rejection_file(out, "ABOUT_train_00009").read_text())["error"]
        coeffs[batch_clips] = {v.name: np.asarray(read_clip(out / v.name).coeffs) for v in videos
                               if v.name != "ABOUT_train_00009"}
    for name, alone in coeffs[1].items():
        diff = np.abs(coeffs[3][name] - alone)  # float rounding, grown over the steps in weakly
        assert np.median(diff) < 1e-4 and np.quantile(diff, 0.999) < 1e-2  # constrained coefficients
        assert np.abs(alone).max() > 0.01  # a real fit, not zeros
