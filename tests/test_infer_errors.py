"""scripts/infer.py behaviour: every bad input exits non-zero with one clear line and leaves no
mp4 behind; a good run afterwards works; chunked streaming equals one pass; batch manifests.

The CLI is exercised in-process through ``run_cli`` (the same wrapper scripts/infer.py uses).
Models are the real Stage-1/Stage-2 trainers run for one step at ``debug=tiny`` size on a small
hand-made clip, so the whole file stays fast.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from talkinghead.audio import load_audio, save_wav
from talkinghead.cli import compose_config, run_cli
from talkinghead.data.clip import ClipMeta, read_clip, write_clip
from talkinghead.errors import ConfigError, InputError
from talkinghead.pipeline import infer as infer_mod
from talkinghead.pipeline.infer import (
    InferenceOptions,
    generate_video,
    infer_from_config,
    load_person,
    run_manifest,
)
from talkinghead.video import probe_media

from _clips import speech_like, write_stand_in_clip

NUM_FRAMES = 24
ONE_STEP = [
    "debug=tiny", "trainer.log_every=0", "trainer.image_every=0", "trainer.val_every=0", "trainer.ckpt_every=0",
    "audio2coeff.train.max_steps=1", "audio2coeff.train.batch_size=2",
    "refiner.train.max_steps=1", "refiner.train.val_frames=[18,24]",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


_speech_like = speech_like  # tests/_clips.py


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A person clip (no fine-tuned models) and one-step general models usable as ``weights=``."""
    from talkinghead.train.audio2coeff import train_audio2coeff
    from talkinghead.train.refiner import train_refiner

    root = tmp_path_factory.mktemp("infer")
    rng = np.random.default_rng(0)
    coeffs = np.zeros((NUM_FRAMES, 257), np.float32)
    coeffs[:, 80:144] = rng.normal(0, 0.3, (NUM_FRAMES, 64))
    coeffs[:, 224:227] = rng.normal(0, 0.05, (NUM_FRAMES, 3))
    frames = rng.integers(0, 255, (NUM_FRAMES, 224, 224, 3), dtype=np.uint8)
    meta = ClipMeta(name="tiny", num_frames=NUM_FRAMES, source="synthetic", train_frames=(0, 18), test_frames=(18, 24))
    person = write_stand_in_clip(root / "tiny", meta, coeffs, frames, _speech_like(NUM_FRAMES / 25))
    cfg = compose_config("train", ONE_STEP)
    weights = root / "models"
    train_audio2coeff([person], weights / "audio2coeff", cfg, mode="general")
    train_refiner([person], weights / "refiner", cfg, mode="general")

    audio = save_wav(root / "speech.wav", _speech_like(1.01, seed=1))
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file" * 4)
    save_wav(bad / "silent.wav", np.zeros(16000, np.float32))
    save_wav(bad / "empty.wav", np.zeros(0, np.float32))
    import soundfile

    broken = _speech_like(1.01, seed=2)
    broken[100:105] = np.nan  # a float WAV can hold them (save_wav would not write such audio)
    soundfile.write(bad / "nan.wav", broken, 16000, subtype="FLOAT")
    return {"root": root, "person": person, "weights": weights, "audio": audio, "bad": bad}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Run the infer CLI in-process: (exit code, stderr)."""
    try:
        run_cli("infer", infer_from_config, argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".mp4", ".wav") or ".tmp" in p.name
                  or p.name.startswith("."))


def _bad_cases(world) -> dict[str, tuple[list[str], str]]:
    out = world["root"] / "outs"
    person, weights, audio, bad = world["person"], world["weights"], world["audio"], world["bad"]
    good = [f"person={person}", f"weights={weights}", f"audio={audio}"]
    return {
        "missing person": ([f"person={world['root'] / 'nobody'}", f"audio={audio}", f"out={out / 'a.mp4'}"],
                           "person clip not found"),
        "no fine-tuned weights": ([f"person={person}", f"audio={audio}", f"out={out / 'b.mp4'}"], "finetune.py"),
        "corrupt audio": ([*good[:2], f"audio={bad / 'corrupt.wav'}", f"out={out / 'c.mp4'}"], "corrupt.wav"),
        "silent audio": ([*good[:2], f"audio={bad / 'silent.wav'}", f"out={out / 'd.mp4'}"], "silent"),
        "empty audio": ([*good[:2], f"audio={bad / 'empty.wav'}", f"out={out / 'e.mp4'}"], "no samples"),
        "missing audio": ([*good[:2], f"audio={bad / 'nothing.wav'}", f"out={out / 'f.mp4'}"], "not found"),
        "nan audio": ([*good[:2], f"audio={bad / 'nan.wav'}", f"out={out / 'k.mp4'}"], "5 NaN or infinite samples"),
        "missing out folder": ([*good, f"out={out / 'no_such_dir' / 'g.mp4'}"], "does not exist"),
        "out under a file": ([*good, f"out={world['audio'] / 'g.mp4'}"], "is a file, not a folder"),
        "unwritable out": ([*good, f"out={out / 'g.mp4'}"], "not writable"),  # mkstemp refuses (below)
        "out is not a video": ([*good, f"out={out / 'h.txt'}"], ".mp4"),
        "unknown config key": ([*good, f"out={out / 'i.mp4'}", "bogus_key=1"], "bogus_key"),
        "bad pose mode": ([*good, f"out={out / 'j.mp4'}", "pose.mode=wobble"], "pose.mode"),
    }


BAD_CASES = ["missing person", "no fine-tuned weights", "corrupt audio", "silent audio", "empty audio", "missing audio",
             "nan audio",
             "missing out folder", "out under a file", "unwritable out", "out is not a video", "unknown config key",
             "bad pose mode"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_nonzero_with_one_line_and_no_mp4(world, capsys, case, monkeypatch):
    argv, expected = _bad_cases(world)[case]
    if case == "unwritable out":
        # A read-only folder, simulated: chmod does not stop root (CI runs as root).
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    outs = world["root"] / "outs"
    outs.mkdir(exist_ok=True)
    code, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert _leftovers(outs) == []


def test_good_run_after_bad_inputs_writes_synchronised_mp4(world, capsys):
    outs = world["root"] / "good"
    outs.mkdir()
    code, _ = _run([f"person={world['person']}", f"audio={world['bad'] / 'silent.wav'}", f"weights={world['weights']}",
                    f"out={outs / 'talk.mp4'}"], capsys)
    assert code != 0
    code, err = _run([f"person={world['person']}", f"audio={world['audio']}", f"weights={world['weights']}",
                      f"out={outs / 'talk.mp4'}"], capsys)
    assert code == 0, err
    assert _leftovers(outs) == ["talk.mp4"]
    info = probe_media(outs / "talk.mp4", count_frames=True)
    assert info.video_codec == "h264" and info.audio_codec == "aac" and info.fps == 25
    input_seconds = len(load_audio(world["audio"])) / 16000
    assert abs(info.num_frames / 25 - input_seconds) <= 0.040
    assert abs(len(load_audio(outs / "talk.mp4")) / 16000 - input_seconds) <= 0.040
    assert (info.width, info.height) == (224, 224)  # mouth synthesis (matched pose): the clip's full crop size
    code, err = _run([f"person={world['person']}", f"audio={world['audio']}", f"weights={world['weights']}",
                      f"out={outs / 'refined.mp4'}", "synthesis=refiner"], capsys)
    assert code == 0, err
    assert probe_media(outs / "refined.mp4").width == 32  # the refiner's image size (debug=tiny)


@pytest.fixture(scope="module")
def person_models(world):
    return load_person(world["person"], world["weights"], device="cpu")


def _capture_frames(monkeypatch) -> list[np.ndarray]:
    """Record every batch of frames handed to the encoder."""
    from talkinghead.video import io as video_io

    written: list[np.ndarray] = []

    original = video_io.VideoWriter.write

    def spy(self, frames):
        written.append(np.array(frames, copy=True))
        return original(self, frames)

    monkeypatch.setattr(video_io.VideoWriter, "write", spy)
    return written


def test_chunked_streaming_equals_one_pass(world, person_models, tmp_path, monkeypatch):
    """Chunks of 3 frames (Stage 2 holding frames back until the next memory keyframe, 2 frames
    of context carried) give the frames of one 250-frame chunk (up to float rounding: batches
    of different sizes may round differently, moving a pixel by one level)."""
    written = _capture_frames(monkeypatch)
    results = {}
    for chunk in (3, 250):
        written.clear()
        result = generate_video(person_models, world["audio"], tmp_path / f"c{chunk}.mp4", InferenceOptions(chunk_frames=chunk, synthesis="refiner"))
        results[chunk] = np.concatenate(written)
        assert len(results[chunk]) == result.num_frames == 25
    difference = np.abs(results[3].astype(int) - results[250].astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    # method.md section 8: frames 0 and 1 copy frame 2
    np.testing.assert_array_equal(results[250][0], results[250][2])
    np.testing.assert_array_equal(results[250][1], results[250][2])
    assert not np.array_equal(results[250][2], results[250][-1])  # the face does move


def test_failure_mid_stream_leaves_no_file(world, person_models, tmp_path, monkeypatch):
    from talkinghead.pipeline import stage2

    calls = {"n": 0}
    original = stage2.RefinerStream.push

    def failing_push(self, frames):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in Stage 2")
        return original(self, frames)

    monkeypatch.setattr(stage2.RefinerStream, "push", failing_push)
    with pytest.raises(RuntimeError, match="simulated"):
        generate_video(person_models, world["audio"], tmp_path / "crash.mp4", InferenceOptions(chunk_frames=5, synthesis="refiner"))
    assert list(tmp_path.iterdir()) == []


def test_paste_back_of_a_synthetic_clip_uses_the_full_crop(world, person_models, tmp_path):
    result = generate_video(person_models, world["audio"], tmp_path / "pasted.mp4",
                            InferenceOptions(paste_back=True, pose=infer_mod.PoseControls(mode="still")))
    info = probe_media(result.path, count_frames=True)
    assert (info.width, info.height) == (224, 224) and info.num_frames == result.num_frames
    assert set(result.timings) >= {"audio", "stage1", "pose", "render", "stage2", "encode", "paste_back"}
    assert np.all(result.ref_index == 0)  # still mode: reference frame 0 throughout


def test_manifest_loads_each_person_once_and_reports_bad_rows(world, tmp_path, monkeypatch, capsys):
    loads = []
    original = infer_mod.load_person

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(infer_mod, "load_person", counting_load)
    manifest = tmp_path / "jobs.csv"
    with open(manifest, "w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["person", "audio", "out"])
        rows.writerow([world["person"], world["audio"], "one.mp4"])  # relative out: next to the manifest
        rows.writerow([world["person"], world["bad"] / "silent.wav", "two.mp4"])
        rows.writerow([world["person"], world["audio"], "three.mp4"])
    options = InferenceOptions()
    with pytest.raises(InputError, match=r"1 of 3 manifest rows failed \(first: line 3"):
        run_manifest(manifest, options, weights=world["weights"], device="cpu")
    assert len(loads) == 1
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["one.mp4", "three.mp4"]
    assert "silent" in capsys.readouterr().out


def test_manifest_format_errors(tmp_path):
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("who,audio,out\np,a.wav,o.mp4\n")
    with pytest.raises(InputError, match="lacks column"):
        infer_mod.read_manifest(bad_header)
    empty_cell = tmp_path / "empty.csv"
    empty_cell.write_text("person,audio,out\np,,o.mp4\n")
    with pytest.raises(InputError, match="line 2: empty"):
        infer_mod.read_manifest(empty_cell)
    no_rows = tmp_path / "none.csv"
    no_rows.write_text("person,audio,out\n\n")
    with pytest.raises(InputError, match="no rows"):
        infer_mod.read_manifest(no_rows)
    good = tmp_path / "good.csv"
    good.write_text("person,audio,out,comment\nclips/p,a.wav,/abs/o.mp4,hi\n\n")
    (row,) = infer_mod.read_manifest(good)
    assert row.person == tmp_path / "clips/p" and row.out == Path("/abs/o.mp4") and row.line == 2


@pytest.mark.parametrize("override, key", [
    ({"chunk_frames": 2}, "chunk_frames"),
    ({"batch_size": 0}, "batch_size"),
    ({"identity": "nobody"}, "identity"),
    ({"out_size": 3}, "out_size"),
])
def test_inference_options_are_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        InferenceOptions(**override)


def test_options_from_config_read_infer_yaml():
    cfg = compose_config("infer", ["person=p", "audio=a.wav", "out=o.mp4", "pose.mode=still", "chunk_frames=50",
                                   "identity=clip", "out_size=128"])
    options = InferenceOptions.from_config(cfg)
    assert (options.pose.mode, options.chunk_frames, options.identity, options.out_size) == ("still", 50, "clip", 128)


def _framed_person(world, tmp_path, source_frames: np.ndarray, fps: float = 25):
    """The tiny person as if cut from a larger video: ``source.mp4`` holds ``source_frames``
    (uint8 [M, 240, 320, 3] at ``fps``) and the fixed crop is its 160 x 160 square at (80, 40)."""
    from talkinghead.video import write_video

    n = NUM_FRAMES
    tmp_path.mkdir(parents=True, exist_ok=True)
    frame_to_crop = np.array([[224 / 160, 0, -80 * 224 / 160], [0, 224 / 160, -40 * 224 / 160]], np.float32)
    source = write_video(tmp_path / "source.mp4", source_frames, fps=fps)
    tiny = read_clip(world["person"])
    meta = ClipMeta(name="framed", num_frames=n, source="video", train_frames=(0, 18), test_frames=(18, 24))
    return write_clip(tmp_path / "framed", meta, np.asarray(tiny.coeffs), np.asarray(tiny.landmarks),
                      np.asarray(tiny.fixed), np.asarray(tiny.aligned), frame_to_crop, np.asarray(tiny.aligned_transforms),
                      _speech_like(NUM_FRAMES / 25), source_video=source)


def _distinct_frames(n: int, height: int = 240, width: int = 320) -> np.ndarray:
    """Frame k: a flat colour 9 levels per frame apart from every other frame's (far above codec
    noise) plus a horizontal ramp, so pasting into the wrong frame cannot pass."""
    k = np.arange(n, dtype=np.int64)[:, None, None]
    ramp = np.linspace(0, 40, width)[None, None, :]
    frames = np.zeros((n, height, width, 3), np.uint8)
    frames[..., 0] = np.clip(20 + 9 * k + ramp, 0, 255)
    frames[..., 1] = np.clip(220 - 9 * k, 0, 255)
    frames[..., 2] = 90
    return frames


OUTSIDE = np.ones((240, 320), bool)
OUTSIDE[40 - 4:40 + 160 + 4, 80 - 4:80 + 160 + 4] = False  # the crop's footprint (+ a margin)


def _assert_pasted_into_own_frames(frames: np.ndarray, full: np.ndarray, ref_index: np.ndarray) -> None:
    """Outside the face each output frame is its own reference frame (codec noise only), and
    never a neighbouring one."""
    assert len(frames) == len(ref_index)
    assert len(set(ref_index.tolist())) >= 3, ref_index  # the check needs several reference frames
    for t, index in enumerate(ref_index):
        own = np.abs(frames[t, OUTSIDE].astype(int) - full[index, OUTSIDE].astype(int)).mean()
        assert own <= 3.5, (t, index, own)  # H.264 noise: 2.5 measured; a neighbour is 6.8 away
        for other in {max(index - 1, 0), min(index + 1, len(full) - 1)} - {index}:
            assert np.abs(frames[t, OUTSIDE].astype(int) - full[other, OUTSIDE].astype(int)).mean() > 5.5


@pytest.mark.parametrize("synthesis", ["refiner", "mouth"])
def test_paste_back_into_the_source_video_frames(world, tmp_path, synthesis):
    """A clip cut from a larger video: each output frame's face goes back into its own
    reference frame of source.mp4 (``ref_index``), at the place transforms.fixed says, and only there."""
    from talkinghead.video import read_video

    full = _distinct_frames(NUM_FRAMES)
    models = load_person(_framed_person(world, tmp_path, full), world["weights"], device="cpu")
    result = generate_video(models, world["audio"], tmp_path / "pasted.mp4",
                            InferenceOptions(paste_back=True, synthesis=synthesis))
    frames = read_video(result.path)
    assert frames.shape == (result.num_frames, 240, 320, 3)
    _assert_pasted_into_own_frames(frames, full, result.ref_index)
    if synthesis == "mouth":
        return  # the mouth region comes from other (flat) frames: no Poisson structure to look for
    # Inside, the face (Poisson-blended: its gradients, the frame's colour at the border) adds
    # structure; outside, each row is the smooth ramp.
    inside = frames[:, 100:140, 140:180].astype(float)
    background = frames[:, 100:140, 10:50].astype(float)  # same size, left of the crop
    assert inside.std(axis=(1, 2)).mean() > 4 * background.std(axis=(1, 2)).mean() + 2


def test_paste_back_with_a_source_of_another_frame_rate_and_length(world, tmp_path):
    """source.mp4 at 50 fps (each 25-fps frame twice) with frames beyond the clip's: it is read
    at 25 fps, so output frames still land in their own reference frames; a source shorter
    than the reference frames is one error line and no video."""
    from talkinghead.video import read_video

    full = _distinct_frames(NUM_FRAMES + 4)  # 4 frames past the clip's end
    person = _framed_person(world, tmp_path / "fifty", np.repeat(full, 2, axis=0), fps=50)
    result = generate_video(load_person(person, world["weights"], device="cpu"), world["audio"],
                            tmp_path / "fifty.mp4", InferenceOptions(paste_back=True, synthesis="refiner"))
    _assert_pasted_into_own_frames(read_video(result.path), full, result.ref_index)

    short = _framed_person(world, tmp_path / "short", full[:10])
    with pytest.raises(InputError, match=r"has 10 frames, fewer than the clip's 18 reference frames"):
        generate_video(load_person(short, world["weights"], device="cpu"), world["audio"], tmp_path / "short.mp4",
                       InferenceOptions(paste_back=True))
    assert not (tmp_path / "short.mp4").exists()

