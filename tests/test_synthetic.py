"""The synthetic world: determinism, the clip format, phonetic mouth shapes, learnability
(a linear read of the spectrum beats loudness and the mean), distinguishable pose styles, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from talkinghead.audio.features import frame_windows
from talkinghead.data.clip import list_clips, read_clip
from talkinghead.data.synthetic.mouth import MOUTH_UNITS, Articulation, mouth_trajectory
from talkinghead.data.synthetic.people import sample_people
from talkinghead.data.synthetic.speech import SAMPLE_RATE, Timeline, Voice, synthesize
from talkinghead.data.synthetic.world import make_corpus, person_signals, speech_clips
from talkinghead.errors import ConfigError
from talkinghead.face.coeffs import SLICES
from talkinghead.face.procedural import EXPRESSION_UNITS
from talkinghead.metrics.pose import head_pose_similarity_matrix

REPO = Path(__file__).resolve().parents[1]
TINY = dict(persons=2, frames=40, seed=0, heldout=1)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "preview.png"}


@pytest.fixture(scope="module")
def cli_corpus(tmp_path_factory) -> Path:
    """A tiny corpus written through the script's entry point (config composition included),
    with the contact sheet."""
    import runpy

    from talkinghead.cli import run_cli

    out = tmp_path_factory.mktemp("cli") / "corpus"
    script = runpy.run_path(str(REPO / "scripts" / "make_synthetic.py"))  # not as __main__
    args = [f"{k}={v}" for k, v in TINY.items()] + [f"out={out}", "workers=1", "preview=true", "progress=false"]
    run_cli("make_synthetic", script["main"], args)  # exits only on error
    return out


@pytest.fixture(scope="module")
def world_signals():
    """Audio and coefficients (no frames) of 16 persons x 400 frames, the last 4 held out."""
    people = sample_people(16, seed=0, heldout=4)
    return people, [person_signals(p, 400) for p in people]


# ----------------------------------------------------------------------- corpus and CLI
def test_cli_writes_corpus_with_splits_and_valid_clips(cli_corpus):
    index = json.loads((cli_corpus / "corpus.json").read_text())
    assert [p["split"] for p in index["persons"]] == ["train", "heldout"]
    assert index["seed"] == 0 and index["frames"] == 40
    assert [c.name for c in list_clips(cli_corpus, "heldout")] == [index["persons"][1]["name"]]
    for clip_dir in list_clips(cli_corpus):
        clip = read_clip(clip_dir)
        assert clip.meta.source == "synthetic" and clip.num_frames == 40
        assert clip.meta.face_model["_target_"] == "talkinghead.face.procedural.make_procedural_model"
        assert clip.fixed.shape == clip.aligned.shape == (40, 224, 224, 3)
        np.testing.assert_array_equal(clip.fixed_transform, [[1, 0, 0], [0, 1, 0]])
        assert len(clip.audio) == 40 * SAMPLE_RATE // 25
        assert clip.meta.train_frames[1] == clip.meta.test_frames[0] and clip.meta.test_frames[1] == 40
        # frames are not blank and change over time (the head and mouth move)
        assert clip.fixed.std() > 20 and np.abs(clip.fixed[0].astype(int) - clip.fixed[-1]).mean() > 2


def test_landmarks_and_aligned_crops_follow_the_face_model(cli_corpus):
    from talkinghead.face.factory import make_face_model
    from talkinghead.face.align import apply_transform, five_point_template, five_points

    clip = read_clip(list_clips(cli_corpus)[0], load_audio=False)
    model = make_face_model(clip.meta.face_model)
    projected = model.landmarks_2d(torch.from_numpy(np.asarray(clip.coeffs))).numpy()
    np.testing.assert_allclose(clip.landmarks, projected, atol=1e-3)
    mapped = np.stack([apply_transform(p, t) for p, t in zip(five_points(clip.landmarks), clip.aligned_transforms)])
    assert np.abs(mapped - five_point_template(224)).max() < 8.0  # similarity fit of 5 points


def test_preview_contact_sheet(cli_corpus):
    import cv2

    sheet = cv2.imread(str(cli_corpus / "preview.png"))
    assert sheet is not None and sheet.shape == (2 * 2 * 224, 5 * 224, 3)  # 2 persons x (render, real)
    render_row, real_row = sheet[:224].astype(float), sheet[224:448].astype(float)
    assert (render_row.sum(-1) == 0).mean() > 0.2  # the plain render has an empty background
    assert (real_row.sum(-1) == 0).mean() < 0.01  # the real frame has a background everywhere


def test_same_seed_gives_identical_files(cli_corpus, tmp_path):
    again = make_corpus(tmp_path / "again", workers=1, progress=False, **TINY)
    assert _hashes(again) == _hashes(cli_corpus)


def test_different_seeds_give_different_people():
    a, b = sample_people(3, seed=0), sample_people(3, seed=1)
    for pa, pb in zip(a, b):
        assert not np.allclose(pa.identity, pb.identity) and not np.allclose(pa.texture, pb.texture)
        assert pa.pose_style != pb.pose_style and pa.voice != pb.voice
    # persons do not depend on how many are drawn, and differ from each other
    assert np.array_equal(sample_people(5, seed=0)[2].identity, sample_people(3, seed=0)[2].identity)
    assert not np.allclose(a[0].identity, a[1].identity)
    sa, sb = person_signals(a[0], 50), person_signals(b[0], 50)
    assert sa.audio.shape == sb.audio.shape and not np.allclose(sa.audio, sb.audio)


def test_bad_sizes_are_config_errors(tmp_path, capsys):
    from talkinghead.cli import run_cli
    from talkinghead.data.synthetic.world import main

    with pytest.raises(ConfigError, match="heldout"):
        make_corpus(tmp_path / "x", persons=2, frames=40, heldout=2, progress=False)
    with pytest.raises(ConfigError, match="persons"):
        make_corpus(tmp_path / "x", persons=0, frames=40, heldout=0, progress=False)
    with pytest.raises(SystemExit) as exit_info:  # what the script does with it: one line, exit 2
        run_cli("make_synthetic", main, [f"out={tmp_path / 'y'}", "persons=2", "heldout=5", "frames=40"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "heldout" in err
    assert not (tmp_path / "y").exists()


# ------------------------------------------------------------------------- speech, mouth
def test_articulation_gains_from_ranges_are_seeded_and_in_range():
    ranges = {"jaw_open": (0.5, 1.2), "lip_close": (0.3, 0.3)}
    base = Articulation(gain=(1.0, 0.9, 1.1, 1.0), lead=0.05)
    drawn = [base.with_gains_from(ranges, np.random.default_rng(s)) for s in range(20)]
    assert all(0.5 <= a.gain[0] <= 1.2 and a.gain[3] == pytest.approx(0.3) for a in drawn)
    assert all(a.gain[1:3] == (0.9, 1.1) and a.lead == 0.05 for a in drawn)  # units not named keep theirs
    assert len({a.gain[0] for a in drawn}) == 20
    assert base.with_gains_from(ranges, np.random.default_rng(3)) == drawn[3]
    for bad in ({"jaw": (0.1, 0.2)}, {"lip_round": (0.9, 0.2)}, {"lip_round": (-0.1, 0.2)}):
        with pytest.raises(ValueError, match="jaw|lip_round"):
            base.with_gains_from(bad, np.random.default_rng(0))


def test_extra_speakers_articulation_scales_the_mouth_not_the_audio():
    plain = speech_clips(2, frames=60, seed=3, speech="source_filter")
    ranges = {"lip_round": (0.2, 0.2), "lip_close": (0.5, 0.5)}
    quiet = speech_clips(2, frames=60, seed=3, speech="source_filter", articulation=ranges)
    for a, b in zip(plain, quiet):
        np.testing.assert_array_equal(a.audio, b.audio)
        ea, eb = (np.asarray(c.coeffs)[:, SLICES["expression"]] for c in (a, b))
        for unit, low, high in (("lip_round", 0.2 / 1.15, 0.2 / 0.85), ("lip_close", 0.5, 0.5)):  # world gains: round 0.85-1.15, close 1
            k = EXPRESSION_UNITS[unit]
            assert np.abs(ea[:, k]).max() > 0.05
            ratio = np.abs(eb[:, k]).max() / np.abs(ea[:, k]).max()
            assert low - 1e-6 <= ratio <= high + 1e-6, unit
            np.testing.assert_allclose(eb[:, k], ratio * ea[:, k], atol=1e-6)  # the same motion, scaled
        np.testing.assert_array_equal(ea[:, EXPRESSION_UNITS["jaw_open"]], eb[:, EXPRESSION_UNITS["jaw_open"]])
    again = speech_clips(2, frames=60, seed=3, speech="source_filter", articulation=ranges)
    np.testing.assert_array_equal(np.asarray(again[1].coeffs), np.asarray(quiet[1].coeffs))


def test_mouth_follows_phonemes():
    symbols = ["sil", "a", "m", "a", "sil", "u", "sil", "i", "sil", "p", "a", "sil", "e", "b", "i", "sil"]
    durations = [0.4, 0.2, 0.1, 0.2, 0.3, 0.2, 0.3, 0.2, 0.3, 0.1, 0.2, 0.3, 0.2, 0.08, 0.2, 0.4]
    timeline = Timeline.from_symbols(symbols, durations)
    fps, lead = 100, 0.06
    mouth = mouth_trajectory(timeline, int(timeline.duration * fps), Articulation(lead=lead), fps=fps)
    jaw, rnd, spread, close = (mouth[:, MOUTH_UNITS.index(u)] for u in MOUTH_UNITS)

    def at(k: int) -> int:  # frame showing the middle of segment k (the mouth leads the sound)
        return int(round(((timeline.start[k] + timeline.end[k]) / 2 - lead) * fps))

    a, m, u, i, p, b = at(1), at(2), at(5), at(7), at(9), at(13)
    assert jaw[a] > 0.8 and jaw[a] > 2 * max(jaw[i], jaw[u])  # open vowel opens the jaw
    assert rnd[u] > 0.8 and rnd[i] < 0.1 and rnd[a] < 0.1  # rounded vowel rounds the lips
    assert spread[i] > 0.8 and spread[u] < 0.1  # front vowel spreads them
    for k in (m, p, b):  # bilabials close the lips, even between open vowels
        assert close[k] > 0.75 and jaw[k] < 0.5
    assert close[a] < 0.15 and jaw[at(0)] < 0.05 and jaw[at(15)] < 0.05  # silence rests
    assert np.abs(np.diff(mouth, axis=0)).max() < 0.3  # co-articulated: no steps (a step would be ~1)
    # the mouth leads the sound: the jaw starts opening before the first vowel's onset
    onset = int(round(timeline.start[1] * fps))
    assert jaw[onset - 3] > 0.2
    # /m/ is loud (voiced) while the lips are closed: loudness alone cannot tell
    audio = synthesize(timeline, Voice(), np.random.default_rng(0))
    rms = lambda k: np.sqrt(np.mean(audio[int(timeline.start[k] * SAMPLE_RATE):int(timeline.end[k] * SAMPLE_RATE)] ** 2))  # noqa: E731
    assert rms(2) > 0.1 * rms(1) and rms(2) > 10 * rms(0)


def _loudness_windows(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """Log energy of the MFCC rows (25 ms every 10 ms) in the same 28-row windows: ``[N, 28]``."""
    pad = np.pad(audio.astype(np.float64), 1920)
    rows = 1 + (len(pad) - 400) // 160
    energy = np.log((pad[np.arange(rows)[:, None] * 160 + np.arange(400)] ** 2).sum(1) + 1e-8)
    return energy[np.clip(np.arange(num_frames)[:, None] * 4 + np.arange(28), 0, rows - 1)]


def _ridge(x_train, y_train, x_test, lam: float = 100.0):
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    b = np.c_[(x_test - mu) / sd, np.ones(len(x_test))]
    return b @ np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y_train)


def test_spectrum_predicts_mouth_better_than_loudness(world_signals):
    people, signals = world_signals
    mouth_cols = [SLICES["expression"].start + EXPRESSION_UNITS[u] for u in MOUTH_UNITS]
    split = {"train": [], "heldout": []}
    for person, sig in zip(people, signals):
        n = len(sig.coeffs)
        split[person.split].append((frame_windows(sig.audio, n).reshape(n, -1), _loudness_windows(sig.audio, n),
                                    sig.coeffs[:, mouth_cols]))
    (mfcc_tr, loud_tr, y_tr), (mfcc_te, loud_te, y_te) = (
        [np.concatenate(parts) for parts in zip(*split[s])] for s in ("train", "heldout"))
    variance = y_te.var(0)  # errors relative to each unit's variance (units differ in scale)
    errors = {}
    for name, prediction in (("mean", y_tr.mean(0)), ("loudness ridge", _ridge(loud_tr, y_tr, loud_te)),
                             ("MFCC ridge", _ridge(mfcc_tr, y_tr, mfcc_te))):
        mse = ((prediction - y_te) ** 2).mean(0)  # [4] jaw, round, spread, close
        errors[name] = float((mse / variance).mean())
        print(f"\nheld-out mouth error, {name:>14s}: relative MSE {errors[name]:.3f} (per unit {np.round(mse / variance, 3)})", end="")
    print()
    assert errors["loudness ridge"] < errors["mean"]  # loudness tells speech from silence ...
    assert errors["MFCC ridge"] < 0.7 * errors["loudness ridge"]  # ... the spectrum tells far more
    assert errors["MFCC ridge"] < 0.6 * errors["mean"]


def test_pose_styles_are_personal(world_signals):
    _, signals = world_signals
    angles = [s.coeffs[:, SLICES["angles"]] for s in signals]
    assert np.degrees(np.abs(np.concatenate(angles))).max() <= 15.0
    hs = head_pose_similarity_matrix([a[:300] for a in angles], [a[300:400] for a in angles])  # [P, P]
    own = np.diag(hs)
    others = np.where(np.eye(len(hs), dtype=bool), -np.inf, hs).max(1)
    print(f"\nHS own 300-399: min {own.min():.3f}; best other person: max {others.max():.3f}")
    assert (own > others).all()


@pytest.mark.slow
def test_worker_count_does_not_change_the_corpus(cli_corpus, tmp_path):
    parallel = make_corpus(tmp_path / "parallel", workers=2, progress=False, **TINY)
    assert _hashes(parallel) == _hashes(cli_corpus)
