"""The GPU check (bench/gpu_check.py) and its carry (bench/gpu_carry.py) on the CPU.

The check itself needs a CUDA machine; its ``--quick`` mode runs the very same sections at tiny
sizes on the CPU, so CI knows the command the GPU run will use works (imports, configs, the
clip round trip, every section producing its figures). The carry's compact clip must decode
back to the clip it came from, and its size check must count what travels with the tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import gpu_carry  # noqa: E402
import gpu_check  # noqa: E402


def test_quick_check_measures_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = results["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    errors = {name: s.get("error") for name, s in sections.items() if s["status"] == "error"}
    assert not errors
    for name in ("env", "tests", "render", "fit", "stage1", "stage2", "e2e"):
        assert sections[name]["status"] == "ok" and sections[name]["figures"] and sections[name]["goals"], name
    # parity needs CUDA and says so on the CPU
    assert sections["parity"]["status"] in ("ok", "skipped") and sections["parity"].get("reason", "CUDA")

    assert 4 <= sections["tests"]["figures"]["collected"] < 50  # the gpu-marked tests, not the whole suite
    rows = sections["render"]["figures"]["rows"]
    assert [r["batch"] for r in rows] == list(gpu_check.quick_sizes().render_batches)
    assert all(r["renders_per_s"] > 0 for r in rows)
    fit = sections["fit"]["figures"]
    assert fit["frames"] == gpu_check.quick_sizes().fit_frames and fit["seconds"] > 0
    assert 0 <= fit["landmark_error_px_mean"] < 5.0  # the tiny fit still finds the synthetic face
    for stage in ("stage1", "stage2"):
        figures = sections[stage]["figures"]
        assert figures["steps"] >= 3 and figures["steps_per_s"] > 0
        assert figures["paper_schedule_s"] >= figures["paper_steps"] / figures["steps_per_s"]
    assert sections["stage2"]["figures"]["preparation_s"] > fit["seconds"]
    runs = sections["e2e"]["figures"]["runs"]
    assert [r["audio_s"] for r in runs] == list(gpu_check.quick_sizes().e2e_seconds)
    for run in runs:
        assert run["frames"] == round(run["audio_s"] * 25) and run["frames_per_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") >= 12 and all(f"| {name} |" in table for name in gpu_check.SECTIONS)
    assert "| FAIL |" not in table  # quick mode judges nothing it cannot measure


def test_markdown_marks_errors_and_goals():
    results = {"mode": "full", "elapsed_s": 3.0, "sections": {
        "fit": {"status": "ok", "goals": [gpu_check.goal("3DMM fit", 42.0, "<= 60 s", True, "s")]},
        "e2e": {"status": "error", "error": "RuntimeError: boom", "goals": []},
    }}
    table = gpu_check.markdown(results)
    assert "| fit | 3DMM fit | 42 s | <= 60 s | PASS |" in table
    assert "| e2e | (section) | error | RuntimeError: boom | FAIL |" in table


def test_carried_clip_round_trip(tmp_path):
    """A clip packed by the carry (JPEG crops, int16 audio) loads back as the clip it came from."""
    from e2e import make_person_clip

    from talkinghead.data.clip import read_clip

    clip_dir = make_person_clip(tmp_path / "clip", size=64)
    path = gpu_carry.pack_clip(clip_dir, tmp_path / "carry" / "clip.npz", frames=40)
    loaded = gpu_check._load_inputs(path)
    clip = read_clip(clip_dir)
    assert loaded["crops"].shape == (40, 64, 64, 3) and loaded["crops"].dtype == np.uint8
    assert np.abs(loaded["crops"].astype(int) - np.asarray(clip.fixed[:40]).astype(int)).mean() < 2.0
    assert np.array_equal(loaded["landmarks"], np.asarray(clip.landmarks[:40]))
    assert np.array_equal(loaded["coeffs"], np.asarray(clip.coeffs[:40]))
    audio = np.asarray(clip.audio[: 40 * 640])
    assert loaded["audio"].shape == audio.shape and np.abs(loaded["audio"] - audio).max() <= 1.5 / 32767
    assert loaded["meta"]["num_frames"] == 40 and loaded["meta"]["test_frames"][1] <= 40
    with pytest.raises(gpu_carry.CarryError, match="meta.json"):
        gpu_carry.pack_clip(tmp_path / "nothing", tmp_path / "x.npz")


def test_size_check_counts_what_travels(tmp_path):
    """Tracked and untracked-but-not-ignored files count; ignored ones (the carry) do not."""
    run = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / ".gitignore").write_text(".carry/\n")
    (tmp_path / "tracked.bin").write_bytes(b"x" * 1000)
    run("add", ".gitignore", "tracked.bin")
    (tmp_path / "untracked.bin").write_bytes(b"y" * 500)
    (tmp_path / ".carry").mkdir()
    (tmp_path / ".carry" / "big.whl").write_bytes(b"z" * 3000)
    assert gpu_carry.tree_bytes(tmp_path) == 1000 + 500 + len(".carry/\n")
    assert gpu_carry.dir_bytes(tmp_path / ".carry") == 3000
    assert "limit 64 MiB" in gpu_carry.check_size(60 * gpu_carry.MIB, 3 * gpu_carry.MIB)
    with pytest.raises(gpu_carry.CarryError, match="over the limit"):
        gpu_carry.check_size(30 * gpu_carry.MIB, 35 * gpu_carry.MIB)


def test_an_overrunning_section_is_stopped_and_keeps_its_figures(tmp_path):
    """The hard limit (SIGALRM) stops a section that overruns; what it measured before stays in
    the JSON, the error names the limit, and the next section still runs."""
    import argparse
    import time

    sizes = gpu_check.quick_sizes()
    sizes.section_budget = {"render": 2, "fit": 2}
    args = argparse.Namespace(out=str(tmp_path), quick=True, budget=60.0, inputs=None, parity_device="cuda")
    check = gpu_check.Check(args, sizes)

    def slow(budget):
        check.partial["figures"] = {"rows": [1, 2]}
        time.sleep(30)

    started = time.perf_counter()
    check.run("render", slow)
    check.run("fit", lambda budget: {"figures": {"x": 1}, "goals": []})
    assert time.perf_counter() - started < 15
    results = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert results["render"]["status"] == "error" and "SectionTimeout" in results["render"]["error"]
    assert results["render"]["figures"] == {"rows": [1, 2]}
    assert results["fit"]["status"] == "ok" and results["fit"]["figures"] == {"x": 1}


def test_carried_phone_model_gives_the_same_phone_posteriors(tmp_path, monkeypatch):
    """The three files the carry copies are all the phone features read: pointed at them through
    TALKINGHEAD_PHONE_MODEL (what gpu_check.sh does), the posteriors are unchanged."""
    from talkinghead.audio import phones

    audio = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    shipped = phones.phone_log_posteriors(audio)
    carried = gpu_carry.carry_phone_model(tmp_path / "phone_model")
    assert sorted(p.name for p in carried.iterdir()) == sorted(phones.MODEL_FILES)
    monkeypatch.setenv(phones.MODEL_DIR_ENV, str(carried))
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # as on the GPU image: not installed
    assert phones.default_model_dir() == carried
    assert np.array_equal(phones.AcousticModel(carried).log_posteriors(audio), shipped)
