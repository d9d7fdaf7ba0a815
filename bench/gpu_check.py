"""The GPU path, measured in one run: every GPU goal of the README with its figure and pass/fail.

    bash bench/gpu_check.sh                         # on a CUDA machine: installs .carry/whl, then the below
    python bench/gpu_check.py --out DIR             # the check itself (CUDA; the carried inputs in .carry/inputs)
    python bench/gpu_check.py --quick --out DIR     # the same code at tiny sizes on the CPU (tests run this)

Sections (each in try/except: a failure is recorded with its error line and the rest still runs;
each has a time budget and a global guard keeps the whole run under ``--budget`` seconds):

``env``     torch, CUDA device, which optional packages import.
``tests``   ``pytest -m gpu`` (the CUDA tests; all skip without CUDA): passed / failed / skipped.
``parity``  the renderer (coeffs -> RGBA on the BFM-size mesh) and a short 3DMM fit, CPU vs CUDA.
``render``  coeffs -> RGBA on the BFM-size procedural mesh (~35k vertices, 224 px), batch 8/64/256:
            renders/s (``bench/render.py``'s mesh and coefficients).
``fit``     the 3DMM fit (``configs/fitting/default.yaml``) of 300 frames of ``31.mp4``: inside
            ``preprocess_video`` with ``detector=saved`` on the carried video and landmarks
            (``.carry/inputs/clip31.{npz,mp4}``, ``bench/gpu_carry.py``), else on the carried
            crops directly: seconds (goal <= 60 s), and the whole preprocessing's seconds.
``stage1``  Stage-1 fine-tuning at paper size (``audio2coeff=paper``) on that clip for a fixed
            number of steps: steps/s after warm-up, and the paper's schedule extrapolated
            (100 epochs x 18 batches of 16 windows = ``audio2coeff.finetune.max_steps``).
``stage2``  Stage-2 fine-tuning at paper size (``refiner=paper``, 256 px U-Net) likewise
            (60 epochs x 298 windows, batch 1 = ``refiner.finetune.max_steps``); the per-person
            preparation (fit + both schedules) is checked against 5 minutes.
``e2e``     end to end (``generate_video``: Stage 1, pose, render + blend, Stage 2 in bf16,
            uint8 + H.264 when ffmpeg is there) at 256 px with the paper U-Net and memory, for
            10 s and 10 min of audio: frames/s (goal >= 250) and peak GPU memory
            (``bench/e2e.py``'s person and audio).

Without carried inputs (``--quick``, or no ``.carry/inputs``) the fit and fine-tuning run on a
synthetic clip instead, and the JSON says so. Results: ``OUT/gpu_check.json`` (written after
every section, so a killed run keeps what it measured) and ``OUT/gpu_check.md`` (the table,
also printed). Progress lines go to stdout with a timestamp.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (str(ROOT), str(BENCH)):  # this checkout's package and the bench helpers
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _timing import calls_per_second, synchronize  # noqa: E402

DEFAULT_INPUTS = ROOT / ".carry" / "inputs" / "clip31.npz"
SECTIONS = ("env", "tests", "parity", "render", "fit", "stage1", "stage2", "e2e")
#: Goals (README): fit of 300 frames, per-person preparation, end-to-end frames/s.
FIT_GOAL_S, PREP_GOAL_S, E2E_GOAL_FPS = 60.0, 300.0, 250.0
#: 10 min of audio may use at most this multiple of the 10-s run's peak GPU memory (bounded memory).
MEMORY_GROWTH_GOAL = 1.25


class SectionTimeout(Exception):
    """Raised inside a section by the alarm when it overruns its hard limit."""


# ----------------------------------------------------------------------------- sizes
@dataclasses.dataclass
class Sizes:
    """What each section runs at: the full GPU check or the tiny CPU dry run."""

    device: str
    budget: float  # seconds for the whole check
    section_budget: dict
    render_batches: tuple = (8, 64, 256)
    render_vertices: int | None = 35709  # BFM size; None: the procedural default
    render_resolution: int = 64
    render_seconds: float = 2.0
    fit_frames: int = 300
    fit_config: dict | None = None  # None: configs/fitting/default.yaml
    stage1_steps: int = 300
    stage2_steps: int = 120
    finetune_overrides: tuple = ("experiment=paper",)
    e2e_seconds: tuple = (10.0, 600.0)
    e2e_size: int = 256
    e2e_ngf: int = 64
    e2e_slots: int = 30000
    e2e_key_dim: int = 512
    e2e_top_k: int = 256
    e2e_chunk: int = 250
    e2e_batch: int = 25
    e2e_render_batch: int = 125
    e2e_stage1_overrides: tuple = ("audio2coeff=paper",)
    precision: str = "bf16"
    synthetic_crop: int = 224
    pytest_args: tuple = ()


def full_sizes() -> Sizes:
    return Sizes(device="cuda", budget=420.0, section_budget={
        "env": 10, "tests": 120, "parity": 40, "render": 45, "fit": 90, "stage1": 45, "stage2": 90, "e2e": 200})


def quick_sizes() -> Sizes:
    return Sizes(
        device="cpu", budget=240.0,
        section_budget={"env": 10, "tests": 60, "parity": 30, "render": 20, "fit": 30, "stage1": 40, "stage2": 40, "e2e": 40},
        render_batches=(1, 2, 4), render_vertices=None, render_resolution=16, render_seconds=0.1,
        fit_frames=8, fit_config={"landmark_steps": 20, "photometric_steps": 3, "render_size": 32},
        stage1_steps=8, stage2_steps=6, finetune_overrides=("debug=tiny",),
        e2e_seconds=(1.0, 3.0), e2e_size=32, e2e_ngf=8, e2e_slots=64, e2e_key_dim=16, e2e_top_k=8,
        e2e_chunk=25, e2e_batch=4, e2e_render_batch=25, e2e_stage1_overrides=("debug=tiny",), precision="fp32",
        synthetic_crop=64, pytest_args=("--co",),
    )


# ----------------------------------------------------------------------------- the runner
def now() -> str:
    return time.strftime("%H:%M:%S")


def say(message: str) -> None:
    print(f"[{now()}] {message}", flush=True)


def error_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}"


def goal(name: str, figure, target: str, passed: bool | None, unit: str = "") -> dict:
    """One row of the table: a goal, its measured figure and whether it is met (None: not judged)."""
    return {"goal": name, "figure": figure, "unit": unit, "target": target, "pass": passed}


class Check:
    """Runs the sections under a global deadline and writes JSON + Markdown after each one."""

    def __init__(self, args, sizes: Sizes):
        self.args, self.sizes = args, sizes
        self.started = time.perf_counter()
        self.deadline = self.started + (args.budget or sizes.budget)
        self.device = torch.device(sizes.device)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="talkinghead_gpu_check_"))
        self.results: dict = {"mode": "quick" if args.quick else "full", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "sections": {}}
        self.state: dict = {}  # shared between sections (the clip, the fit's coefficients)
        self.partial: dict = {}

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, name: str, fn) -> None:
        budget = float(self.sizes.section_budget.get(name, 60))
        left = self.remaining()
        record = {"status": "ok", "budget_s": budget}
        if left < min(20.0, budget / 2):
            record.update(status="skipped", reason=f"global time guard: {left:.0f} s left")
            say(f"{name}: skipped ({record['reason']})")
        else:
            limit = int(max(5, min(budget * 1.5, left)))
            say(f"{name}: start (budget {budget:.0f} s, hard limit {limit} s, {left:.0f} s left overall)")
            start = time.perf_counter()
            self.partial = {}  # figures a section has measured so far (kept if it fails later)
            flags = _determinism_flags()
            previous = signal.signal(signal.SIGALRM, self._alarm)
            signal.alarm(limit)
            try:
                record.update(fn(min(budget, left)) or {})
            except SectionTimeout:
                record.update(self.partial, status="error", error=f"SectionTimeout: over the hard limit of {limit} s")
            except Exception as err:  # noqa: BLE001 - one failure must not stop the other sections
                record.update(self.partial, status="error", error=error_line(err))
                traceback.print_exc(file=sys.stdout)
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
                _restore_determinism(flags)  # training switches deterministic algorithms on globally
                with contextlib.suppress(Exception):
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
            record["seconds"] = round(time.perf_counter() - start, 2)
            say(f"{name}: {record['status']} in {record['seconds']:.1f} s"
                + (f" -- {record['error']}" if record.get("error") else ""))
        self.results["sections"][name] = record
        self.write()

    @staticmethod
    def _alarm(signum, frame):
        raise SectionTimeout()

    def write(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=_jsonable))
        (self.out / "gpu_check.md").write_text(markdown(self.results))


def _determinism_flags() -> tuple:
    return (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())


def _restore_determinism(flags: tuple) -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, enabled, warn_only = flags
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(results: dict) -> str:
    """The table: one row per goal (section, goal, figure, target, pass), then section errors."""
    lines = [f"GPU check ({results['mode']}), {results.get('env', {}).get('device_name', '?')}, "
             f"{results.get('elapsed_s', 0):.0f} s", "",
             "| section | goal | figure | target | pass |", "| --- | --- | --- | --- | --- |"]
    for name, record in results["sections"].items():
        rows = record.get("goals") or []
        for row in rows:
            mark = {True: "PASS", False: "FAIL", None: "-"}[row["pass"]]
            lines.append(f"| {name} | {row['goal']} | {_fmt(row['figure'])} {row['unit']} | {row['target']} | {mark} |")
        if record["status"] != "ok" or not rows:
            why = record.get("error") or record.get("reason") or ""
            lines.append(f"| {name} | (section) | {record['status']} | {why} | {'-' if record['status'] == 'skipped' else 'FAIL'} |")
    if results.get("inputs"):
        lines += ["", f"Fit and fine-tuning inputs: {results['inputs']}"]
    lines += [f"Note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- sections
def section_env(check: Check, budget: float) -> dict:
    import importlib

    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cuda_available": torch.cuda.is_available(), "device": check.sizes.device,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                    cuda=torch.version.cuda)
    else:
        info["device_name"] = "CPU"
    packages = {}
    for name in ("hydra", "omegaconf", "soundfile", "imageio_ffmpeg", "librosa", "torchvision", "cv2", "scipy"):
        try:
            module = importlib.import_module(name)
            packages[name] = getattr(module, "__version__", "ok")
        except Exception as err:  # noqa: BLE001
            packages[name] = f"missing ({type(err).__name__})"
    info["packages"] = packages
    check.results["env"] = info
    say(f"env: torch {info['torch']}, {info['device_name']}, packages {packages}")
    if check.sizes.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available: run the full check on a CUDA machine (or --quick on the CPU)")
    return {"figures": info, "goals": [goal("CUDA device", info["device_name"], "a CUDA GPU",
                                            info["cuda_available"] if check.sizes.device == "cuda" else None)]}


def section_tests(check: Check, budget: float) -> dict:
    """``pytest -m gpu`` in a child process (quick mode: only collects them)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider", *check.sizes.pytest_args,
           str(ROOT / "tests")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=max(10, budget - 5))
    out = proc.stdout
    print(out[-6000:], flush=True)
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {key: 0 for key in ("passed", "failed", "skipped", "error", "errors", "deselected", "tests collected")}
    for number, key in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|tests collected)", summary):
        counts[key] += int(number)
    counts["error"] += counts.pop("errors")
    collected = counts.pop("tests collected")
    selected = re.search(r"(\d+)/\d+ tests collected", summary)  # "4/387 tests collected (383 deselected)"
    if selected:
        collected = int(selected.group(1))
    figures = {**counts, "collected": collected, "returncode": proc.returncode, "summary": summary,
               "skip_reasons": sorted(set(re.findall(r"SKIPPED \[\d+\] ([^\n]+)", out)))[:10]}
    cuda = check.device.type == "cuda"
    goals = [goal("CUDA tests pass", f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped",
                  "none failed, none skipped", (counts["failed"] + counts["error"] == 0 and counts["skipped"] == 0
                                                 and counts["passed"] > 0) if cuda else None)]
    if not cuda:
        goals[0]["figure"] = f"{collected} gpu tests collected (quick: not run)"
        if proc.returncode not in (0, 5):
            raise RuntimeError(f"pytest --co failed (exit {proc.returncode}): {summary}")
    return {"figures": figures, "goals": goals}


def _render_mesh(check: Check):
    """bench/render.py's BFM-size procedural mesh (built once per check)."""
    from render import BFM_VERTICES  # bench/render.py

    from talkinghead.face.procedural import make_procedural_model

    if "mesh" not in check.state:
        sizes = check.sizes
        if sizes.render_vertices is None:
            check.state["mesh"] = "procedural", make_procedural_model(seed=0, resolution=sizes.render_resolution)
        else:
            check.state["mesh"] = (f"bfm-size ({BFM_VERTICES})",
                                   make_procedural_model(seed=0, target_vertices=sizes.render_vertices))
    return check.state["mesh"]


def _synthetic_fit_inputs(face_model, frames: int, size: int):
    from talkinghead.preprocess.fit import truth_sequence

    crops, coeffs = truth_sequence(face_model, frames, size, seed=1)
    landmarks = face_model.landmarks_2d(torch.from_numpy(coeffs)).numpy()
    if size != 224:  # landmarks_2d is in 224-crop pixels
        landmarks = landmarks * (size / 224.0)
    return crops, landmarks.astype(np.float32)


def section_parity(check: Check, budget: float) -> dict:
    """CPU vs CUDA: the renderer's RGBA on the BFM-size mesh, and a short fit's coefficients."""
    other = check.args.parity_device  # "cuda"; "cpu" only to dry-run this code on a CPU machine
    if other == "cuda" and not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA (parity needs both devices)"}
    from render import random_coeffs  # bench/render.py

    from talkinghead.face.camera import Camera
    from talkinghead.face.factory import make_face_model
    from talkinghead.preprocess.fit import FittingConfig, fit_coefficients
    from talkinghead.render import get_renderer

    label, model = _render_mesh(check)
    renderer, camera = get_renderer("torch"), Camera(224)
    coeffs = random_coeffs(4, torch.device("cpu"))
    outputs = {}
    with torch.no_grad():
        for dev in ("cpu", other):
            m = model.to(dev)
            g = m(coeffs.to(dev), camera)
            r = renderer.render(g.vertices, m.triangles, g.colours, camera)
            outputs[dev] = (r.rgba.float().cpu(), r.triangle_id.cpu())
    (rgba_c, tri_c), (rgba_g, tri_g) = outputs["cpu"], outputs[other]
    same = tri_c == tri_g  # [B, H, W]
    differ = float((~same).float().mean())
    diff = (rgba_c - rgba_g).abs().permute(0, 2, 3, 1)[same].max().item() if same.any() else float("nan")

    face = make_face_model({"_target_": "talkinghead.face.procedural.make_procedural_model", "seed": 0})
    crops, landmarks = _synthetic_fit_inputs(face, 8, 112)
    config = FittingConfig(landmark_steps=50, photometric_steps=5, render_size=56)
    cpu = fit_coefficients(crops, landmarks, face, config, device="cpu", progress=False)
    gpu = fit_coefficients(crops, landmarks, face, config, device=other, progress=False)
    angle_diff = float(np.degrees(np.abs(cpu.coeffs[:, 224:227] - gpu.coeffs[:, 224:227])).max())
    lm_cpu, lm_gpu = float(cpu.landmark_error_px.mean()), float(gpu.landmark_error_px.mean())
    figures = {"mesh": label, "pixels_other_triangle": differ, "rgba_max_abs_diff": diff,
               "fit_landmark_px_cpu": lm_cpu, "fit_landmark_px_cuda": lm_gpu, "fit_angle_max_diff_deg": angle_diff}
    return {"figures": figures, "goals": [
        goal("renderer: pixels on another triangle", differ, "<= 1e-3", differ <= 1e-3),
        goal("renderer: RGBA max |CPU - CUDA| (same triangle)", diff, "<= 1e-4", diff <= 1e-4),
        goal("fit: mean landmark error on CUDA", lm_gpu, f"CPU's {lm_cpu:.3f} +- 5 % (or 0.05 px)",
             abs(lm_gpu - lm_cpu) <= max(0.05, 0.05 * lm_cpu), "px"),
        goal("fit: max angle |CPU - CUDA|", angle_diff, "<= 0.5", angle_diff <= 0.5, "deg"),
    ]}


def section_render(check: Check, budget: float) -> dict:
    """coeffs -> RGBA renders/s (every frame its own person, and one person's frames)."""
    from render import random_coeffs  # bench/render.py

    from talkinghead.face.camera import Camera
    from talkinghead.face.coeffs import SLICES
    from talkinghead.render import get_renderer

    sizes, device = check.sizes, check.device
    label, model = _render_mesh(check)
    model = model.to(device)
    renderer, camera = get_renderer("torch"), Camera(224)
    rows, goals = [], []
    for batch in sizes.render_batches:
        coeffs = random_coeffs(batch, device)
        person = coeffs.clone()
        for name in ("identity", "texture"):
            person[:, SLICES[name]] = person[:1, SLICES[name]]

        def full(c=coeffs):
            g = model(c, camera)
            return renderer.render(g.vertices, model.triangles, g.colours, camera).rgba

        with torch.no_grad():
            rate = calls_per_second(full, device, sizes.render_seconds, 2, warmup=2, blocks=3) * batch
            person_rate = calls_per_second(lambda: full(person), device, sizes.render_seconds, 2, warmup=1, blocks=3) * batch
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        rows.append({"batch": batch, "renders_per_s": rate, "one_person_renders_per_s": person_rate, "peak_gpu_mib": peak})
        check.partial["figures"] = {"mesh": label, "device": device.type, "rows": rows}
        say(f"render: B={batch}: {rate:.0f} renders/s (one person {person_rate:.0f})")
        goals.append(goal(f"coeffs->RGBA {label}, 224 px, B={batch}", rate, "measured", None, "renders/s"))
    return {"figures": {"mesh": label, "device": device.type, "rows": rows}, "goals": goals}


def _load_inputs(path: Path) -> dict | None:
    """The carried clip (``bench/gpu_carry.py``): JPEG fixed crops decoded, landmarks, coefficients,
    16-kHz audio, transforms and meta; None when the file is not there."""
    if not path.is_file():
        return None
    import cv2

    data = np.load(path, allow_pickle=False)
    blob, offsets = data["jpeg"], data["jpeg_offsets"]
    crops = np.stack([cv2.imdecode(blob[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)[..., ::-1]
                      for i in range(len(offsets) - 1)])  # uint8 [N, S, S, 3] RGB
    out = {"crops": np.ascontiguousarray(crops), "landmarks": data["landmarks"].astype(np.float32),
           "audio": data["audio"].astype(np.float32) / 32768.0, "fixed_transform": data["fixed_transform"],
           "aligned_transforms": data["aligned_transforms"], "meta": json.loads(str(data["meta_json"]))}
    out["coeffs"] = data["coeffs"].astype(np.float32) if "coeffs" in data.files else None
    video = path.with_suffix(".mp4")  # the source video, carried beside it (bench/gpu_carry.py --video)
    out["video"] = video if video.is_file() else None
    return out


def _inputs(check: Check) -> dict | None:
    if "inputs" not in check.state:
        path = Path(check.args.inputs) if check.args.inputs else DEFAULT_INPUTS
        check.state["inputs"] = None if check.args.quick and not check.args.inputs else _load_inputs(path)
        check.results["inputs"] = str(path) if check.state["inputs"] is not None else "synthetic (no carried inputs)"
    return check.state["inputs"]


def _fitting_config(sizes: Sizes):
    from talkinghead.preprocess.fit import FittingConfig

    if sizes.fit_config is not None:
        return FittingConfig.from_mapping(sizes.fit_config)
    import yaml

    values = yaml.safe_load((ROOT / "configs" / "fitting" / "default.yaml").read_text())
    return FittingConfig.from_mapping(values)


def _preprocess_with_saved_landmarks(check: Check, inputs: dict, frames: int, config) -> tuple[dict, object]:
    """``preprocess_video`` of the carried video with ``detector=saved`` (the carried landmarks
    mapped back into the frame): decode, crops, the fit on ``check.device``, clip writing."""
    from talkinghead.face.align import apply_transform, invert_transform
    from talkinghead.preprocess.landmarks import SavedLandmarksDetector
    from talkinghead.preprocess.pipeline import preprocess_video

    frame_landmarks = apply_transform(inputs["landmarks"], invert_transform(inputs["fixed_transform"]))
    synchronize(check.device)
    start = time.perf_counter()
    path = preprocess_video(inputs["video"], check.tmp / "preprocessed", detector=SavedLandmarksDetector(frame_landmarks),
                            face_model_cfg=inputs["meta"].get("face_model"), fitting_cfg=config, max_frames=frames,
                            min_frames=frames, device=str(check.device), progress=False, keep_source=False,
                            landmarks_cfg={"smooth_window": 0})  # the carried landmarks are smoothed already
    wall = time.perf_counter() - start
    from talkinghead.data.clip import read_clip

    clip = read_clip(path, load_audio=False)
    fit = clip.meta.extra["fit"]
    figures = {"preprocess_seconds": wall, "fit_seconds": float(fit["seconds"]), "frames": clip.num_frames,
               "landmark_error_px_mean": float(fit["landmark_error_px_mean"]), "device": fit["device"]}
    return figures, np.asarray(clip.coeffs)


def section_fit(check: Check, budget: float) -> dict:
    """The 3DMM fit of the clip's first ``fit_frames`` frames: inside the whole preprocessing
    (``detector=saved``) when the video is carried and ffmpeg runs, else from the carried crops
    + landmarks directly (or a synthetic sequence without carried inputs)."""
    from talkinghead.face.factory import make_face_model
    from talkinghead.preprocess.fit import fit_coefficients

    sizes = check.sizes
    inputs = _inputs(check)
    config = _fitting_config(sizes)
    n = min(sizes.fit_frames, len(inputs["landmarks"])) if inputs is not None else sizes.fit_frames
    figures, goals = {"steps": config.landmark_steps + config.photometric_steps, "render_size": config.render_size}, []
    full = not check.args.quick and inputs is not None and n >= 300
    if inputs is not None and inputs.get("video") is not None and ffmpeg_works():
        try:
            pre, coeffs = _preprocess_with_saved_landmarks(check, inputs, n, config)
            figures.update(pre, source="31.mp4 through preprocess_video (detector=saved)", seconds=pre["fit_seconds"])
            check.state["fitted_coeffs"] = coeffs
            goals.append(goal(f"preprocess {n} frames: decode, crops, fit, write (landmarks carried)",
                              pre["preprocess_seconds"], "measured", None, "s"))
        except Exception as err:  # noqa: BLE001 - fall back to the fit alone
            figures["preprocess_error"] = error_line(err)
            traceback.print_exc(file=sys.stdout)
    if "seconds" not in figures:
        if inputs is not None:
            face = make_face_model(inputs["meta"].get("face_model") or {"_target_": "talkinghead.face.procedural.make_procedural_model", "seed": 0})
            crops, landmarks, source = inputs["crops"][:n], inputs["landmarks"][:n], "31.mp4 (carried crops + landmarks)"
        else:
            face = make_face_model({"_target_": "talkinghead.face.procedural.make_procedural_model", "seed": 0})
            crops, landmarks = _synthetic_fit_inputs(face, n, 64)
            source = "synthetic (truth_sequence)"
        synchronize(check.device)
        start = time.perf_counter()
        result = fit_coefficients(crops, landmarks, face, config, device=check.device, progress=False,
                                  record_history=False)
        wall = time.perf_counter() - start
        check.state["fitted_coeffs"] = result.coeffs
        figures.update(source=source, frames=n, seconds=wall, fit_seconds=result.seconds,
                       landmark_error_px_mean=float(result.landmark_error_px.mean()), device=result.device)
    label = figures["source"].split(" ")[0]
    goals[:0] = [goal(f"3DMM fit of {figures['frames']} frames ({label})", figures["seconds"], f"<= {FIT_GOAL_S:.0f} s",
                      figures["seconds"] <= FIT_GOAL_S if full else None, "s")]
    goals.append(goal("fit: mean landmark error", figures["landmark_error_px_mean"], "measured", None, "px"))
    return {"figures": figures, "goals": goals}


def _clip_dir(check: Check) -> Path:
    """A person clip on disk for fine-tuning: the carried 31.mp4 clip, else a synthetic one."""
    if "clip" in check.state:
        return check.state["clip"]
    from talkinghead.data.clip import ClipMeta, write_clip

    inputs = _inputs(check)
    if inputs is None:
        from e2e import make_person_clip  # bench/e2e.py: a synthetic person's coefficients and speech

        clip = make_person_clip(check.tmp / "synthetic", size=check.sizes.synthetic_crop)
    else:
        coeffs = inputs["coeffs"]
        if coeffs is None:  # no carried coefficients: the fit section's, where it covered the clip
            coeffs = check.state.get("fitted_coeffs")
            if coeffs is None or len(coeffs) != len(inputs["landmarks"]):
                raise RuntimeError("the carried clip has no coeffs and the fit did not cover all its frames; "
                                   "rebuild the carry from a preprocessed clip (bench/gpu_carry.py --clip DIR)")
        meta = inputs["meta"]
        fields = {f.name for f in dataclasses.fields(ClipMeta)}
        meta = ClipMeta(**{k: (tuple(v) if k in ("train_frames", "test_frames") else v) for k, v in meta.items()
                           if k in fields})
        crops = inputs["crops"]
        clip = write_clip(check.tmp / "p31", meta, coeffs, inputs["landmarks"], crops, crops,  # aligned = fixed: unused here
                          inputs["fixed_transform"], inputs["aligned_transforms"], audio=inputs["audio"])
    check.state["clip"] = Path(clip)
    return Path(clip)


@contextlib.contextmanager
def step_clock(device: torch.device):
    """Time the Trainers created inside: the moment after every training step, and the seconds of
    every validation and checkpoint (device synchronised) -> ``(stamps, {"validate": [...],
    "save_checkpoint": [...]})``."""
    from talkinghead.train.loop import Trainer

    originals = {name: getattr(Trainer, name) for name in ("_train_step", "validate", "save_checkpoint")}
    stamps: list[float] = []
    events: dict[str, list[float]] = {"validate": [], "save_checkpoint": []}

    def timed_step(self, batch, meter):
        originals["_train_step"](self, batch, meter)
        synchronize(device)
        stamps.append(time.perf_counter())

    def timed(name):
        def call(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[name](self, *args, **kwargs)
            finally:
                synchronize(device)
                events[name].append(time.perf_counter() - start)
        return call

    Trainer._train_step = timed_step
    Trainer.validate, Trainer.save_checkpoint = timed("validate"), timed("save_checkpoint")
    try:
        yield stamps, events
    finally:
        for name, original in originals.items():
            setattr(Trainer, name, original)


def _steps_per_second(stamps: list[float]) -> float:
    """Steps/s over the steps after a warm-up (the first quarter, at most 10 steps)."""
    if len(stamps) < 3:
        raise RuntimeError(f"only {len(stamps)} training steps were timed; raise the step count")
    warm = min(10, len(stamps) // 4)
    return (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm])


def _finetune(check: Check, stage: str, steps: int) -> dict:
    """A general model of the stage (1 step, the starting point), then ``steps`` fine-tuning steps."""
    from talkinghead.cli import cfg_get, compose_config
    from talkinghead.data.clip import read_clip

    sizes = check.sizes
    clip_dir = _clip_dir(check)
    base = [f"person={clip_dir}", *sizes.finetune_overrides, "progress=false", f"trainer.device={check.device.type}",
            "trainer.num_workers=0" if check.args.quick else "trainer.num_workers=4",
            "trainer.val_every=0", "trainer.ckpt_every=0", "trainer.image_every=0", "trainer.log_every=0"]
    paper = compose_config("finetune", [f"person={clip_dir}", *sizes.finetune_overrides])  # the schedule as configured
    paper_steps = int(cfg_get(paper, f"{stage}.finetune.max_steps"))
    val_every, ckpt_every = int(cfg_get(paper, "trainer.val_every", 0)), int(cfg_get(paper, "trainer.ckpt_every", 0))
    general_cfg = compose_config("finetune", [*base, f"{stage}.train.max_steps=1"])
    cfg = compose_config("finetune", [*base, f"{stage}.finetune.max_steps={steps}"])
    clip = read_clip(clip_dir)
    root = check.tmp / stage
    if stage == "audio2coeff":
        from talkinghead.train.audio2coeff import train_audio2coeff as train
    else:
        from talkinghead.train.refiner import train_refiner as train
    train([clip], root / "general", general_cfg, mode="general")
    synchronize(check.device)
    start = time.perf_counter()
    with step_clock(check.device) as (stamps, events):
        train([clip], root / "finetuned", cfg, mode="finetune", init_dir=root / "general")
    wall = time.perf_counter() - start
    rate = _steps_per_second(stamps)
    first = stamps[0] - start if stamps else float("nan")
    validation = max(events["validate"], default=0.0)  # the final validation (and any other)
    checkpoint = max(events["save_checkpoint"], default=0.0)
    # set-up (datasets, 3DMM renders, models) and export: what is neither a step, a validation nor a checkpoint
    setup = wall - len(stamps) / rate - sum(events["validate"]) - sum(events["save_checkpoint"])
    validations = (paper_steps // val_every if val_every else 0) + (0 if val_every and paper_steps % val_every == 0 else 1)
    checkpoints = (paper_steps // ckpt_every if ckpt_every else 0) + (0 if ckpt_every and paper_steps % ckpt_every == 0 else 1)
    schedule = setup + paper_steps / rate + validations * validation + checkpoints * checkpoint
    return {"steps": len(stamps), "steps_per_s": rate, "wall_s": wall, "time_to_first_step_s": first,
            "setup_s": setup, "validation_s": validation, "checkpoint_s": checkpoint,
            "schedule_validations": validations, "schedule_checkpoints": checkpoints,
            "paper_steps": paper_steps, "paper_schedule_s": schedule,
            "batch_size": int(cfg_get(cfg, f"{stage}.finetune.batch_size")),
            "model": dict(cfg_get(cfg, f"{stage}.model")) if stage == "audio2coeff" else
            {k: cfg_get(cfg, f"refiner.model.{k}") for k in ("image_size", "ngf", "memory_slots")}}


def section_stage1(check: Check, budget: float) -> dict:
    figures = _finetune(check, "audio2coeff", check.sizes.stage1_steps)
    check.state["stage1"] = figures
    say(f"stage1: {figures['steps_per_s']:.1f} steps/s -> paper schedule {figures['paper_schedule_s']:.0f} s")
    return {"figures": figures, "goals": [
        goal(f"Stage 1 fine-tuning (batch {figures['batch_size']})", figures["steps_per_s"], "measured", None, "steps/s"),
        goal(f"Stage 1 paper schedule ({figures['paper_steps']} steps), extrapolated", figures["paper_schedule_s"],
             "measured (paper: 2 min on a Titan Xp)", None, "s"),
    ]}


def section_stage2(check: Check, budget: float) -> dict:
    figures = _finetune(check, "refiner", check.sizes.stage2_steps)
    say(f"stage2: {figures['steps_per_s']:.1f} steps/s -> paper schedule {figures['paper_schedule_s']:.0f} s")
    goals = [
        goal(f"Stage 2 fine-tuning (batch {figures['batch_size']}, {figures['model']['image_size']} px)",
             figures["steps_per_s"], "measured", None, "steps/s"),
        goal(f"Stage 2 paper schedule ({figures['paper_steps']} steps), extrapolated", figures["paper_schedule_s"],
             "measured (paper: 40 min on a Titan Xp)", None, "s"),
    ]
    fit = check.results["sections"].get("fit", {}).get("figures", {})
    stage1 = check.state.get("stage1")
    if fit.get("seconds") is not None and stage1 is not None:
        prep = fit["seconds"] + stage1["paper_schedule_s"] + figures["paper_schedule_s"]
        figures["preparation_s"] = prep
        full = not check.args.quick and fit.get("frames", 0) >= 300
        goals.append(goal("per-person preparation: fit + Stage 1 + Stage 2 schedules (landmarks excluded)", prep,
                          f"<= {PREP_GOAL_S:.0f} s", prep <= PREP_GOAL_S if full else None, "s"))
    return {"figures": figures, "goals": goals}


class NullWriter:
    """Stands in for :class:`talkinghead.video.VideoWriter` where no ffmpeg binary is available:
    counts the uint8 frames (their conversion is still timed as ``encode``), writes nothing."""

    def __init__(self, path, fps=25, audio=None, sample_rate=16000, **_):
        self.path, self.num_frames = Path(path), 0

    def write(self, frames):
        self.num_frames += len(np.asarray(frames).reshape(-1, *np.asarray(frames).shape[-3:]))

    def close(self):
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ffmpeg_works() -> bool:
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        return subprocess.run([exe, "-version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=20).returncode == 0
    except Exception:  # noqa: BLE001
        return False


def section_e2e(check: Check, budget: float) -> dict:
    """``generate_video`` at the paper's size for each audio length: frames/s, stages, peak memory."""
    import resource

    import e2e as e2e_bench  # bench/e2e.py

    import talkinghead.video as video
    from talkinghead.pipeline.infer import InferenceOptions, generate_video

    sizes, device = check.sizes, check.device
    encode = ffmpeg_works()
    root = check.tmp / "e2e"
    root.mkdir(exist_ok=True)
    clip = e2e_bench.make_person_clip(root, size=224)
    person = e2e_bench.build_person_models(clip, sizes.e2e_size, sizes.e2e_ngf, sizes.e2e_slots, sizes.e2e_key_dim,
                                           sizes.e2e_top_k, "torch", device=device,
                                           overrides=list(sizes.e2e_stage1_overrides))
    options = InferenceOptions(chunk_frames=sizes.e2e_chunk, batch_size=sizes.e2e_batch,
                               render_batch=sizes.e2e_render_batch, precision=sizes.precision, synthesis="refiner")
    original_writer = video.VideoWriter
    if not encode:
        video.VideoWriter = NullWriter
    runs, goals = [], []
    try:
        started = time.perf_counter()
        warm_audio = e2e_bench.make_audio(root / "warm.wav", 2.0)
        generate_video(person, warm_audio, root / "warm.mp4", options,
                       audio=_read_wav(warm_audio))  # CUDA/cudnn warm-up, not timed
        for seconds in sizes.e2e_seconds:
            if runs:  # will it fit in the time left? If not, the longest audio that does (>= 6x the first)
                time_per_s = 25 / runs[-1]["frames_per_s"] * 1.2  # seconds of run per second of audio
                left = min(check.deadline - time.perf_counter(), budget - (time.perf_counter() - started)) - 10
                predicted = seconds * time_per_s
                if predicted > left:
                    shorter = math.floor(left / time_per_s / 10) * 10
                    say(f"e2e: {seconds:g} s of audio would take ~{predicted:.0f} s, {left:.0f} s left: "
                        + (f"running {shorter:g} s instead" if shorter >= 6 * runs[0]["audio_s"] else "skipped"))
                    if shorter < 6 * runs[0]["audio_s"]:
                        runs.append({"audio_s": seconds, "skipped": f"predicted {predicted:.0f} s > the {left:.0f} s left",
                                     "predicted_s": predicted})
                        continue
                    check.results.setdefault("notes", []).append(
                        f"e2e: {shorter:g} s of audio instead of {seconds:g} s (predicted {predicted:.0f} s)")
                    seconds = shorter
            wav = e2e_bench.make_audio(root / f"speech_{seconds:g}.wav", seconds)
            audio = _read_wav(wav)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            result = generate_video(person, wav, root / f"out_{seconds:g}.mp4", options, audio=audio)
            run = {"audio_s": seconds, "frames": result.num_frames, "seconds": result.seconds,
                   "frames_per_s": result.frames_per_second, "stages_s": result.timings,
                   "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
                   "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None,
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
            runs.append(run)
            check.partial["figures"] = {"runs": runs}
            say(f"e2e: {seconds:g} s of audio: {run['frames_per_s']:.1f} frames/s, peak GPU {run['peak_gpu_mib']} MiB, "
                f"stages {({k: round(v, 2) for k, v in result.timings.items()})}")
        # The default synthesis in matched pose mode (the lower face warped from the person's own
        # frames, pipeline/mouth.py) at the same output size, 10 s of audio.
        from talkinghead.pipeline.mouth import MouthOptions

        mouth_clip = e2e_bench.make_person_clip(root / "mouth", size=sizes.e2e_size)
        mouth_person = e2e_bench.build_person_models(mouth_clip, sizes.e2e_size, sizes.e2e_ngf, 64, 64, 8, "torch",
                                                     device=device, overrides=list(sizes.e2e_stage1_overrides))
        mouth_options = InferenceOptions(chunk_frames=sizes.e2e_chunk, synthesis="mouth",
                                         mouth=MouthOptions(batch_size=64 if device.type == "cuda" else 8))
        wav = e2e_bench.make_audio(root / "mouth.wav", sizes.e2e_seconds[0])
        generate_video(mouth_person, warm_audio, root / "mouth_warm.mp4", mouth_options, audio=_read_wav(warm_audio))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = generate_video(mouth_person, wav, root / "mouth.mp4", mouth_options, audio=_read_wav(wav))
        mouth_run = {"audio_s": sizes.e2e_seconds[0], "frames": result.num_frames, "frames_per_s": result.frames_per_second,
                     "stages_s": result.timings,
                     "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}
        check.partial.setdefault("figures", {})["mouth"] = mouth_run
        say(f"e2e mouth synthesis: {mouth_run['frames_per_s']:.1f} frames/s, stages "
            f"{({k: round(v, 2) for k, v in result.timings.items()})}")
    finally:
        video.VideoWriter = original_writer
    quick = check.args.quick
    mouth_run = (check.partial.get("figures") or {}).get("mouth")
    if mouth_run:
        goals.append(goal(f"end to end {sizes.e2e_size} px, mouth synthesis (default mode), {mouth_run['audio_s']:g} s",
                          mouth_run["frames_per_s"], f">= {E2E_GOAL_FPS:.0f}",
                          None if quick else mouth_run["frames_per_s"] >= E2E_GOAL_FPS, "frames/s"))
    for run in runs:
        label = f"{run['audio_s']:g} s of audio"
        if "skipped" in run:
            goals.append(goal(f"end to end, {label}", None, run["skipped"], None, "frames/s"))
            continue
        goals.append(goal(f"end to end {sizes.e2e_size} px {sizes.precision}, {label}", run["frames_per_s"],
                          f">= {E2E_GOAL_FPS:.0f}", None if quick else run["frames_per_s"] >= E2E_GOAL_FPS, "frames/s"))
        goals.append(goal(f"peak GPU memory, {label}", run["peak_gpu_mib"], "measured", None, "MiB"))
    done = [r for r in runs if "skipped" not in r]
    if len(done) >= 2 and done[0]["peak_gpu_mib"]:
        growth = done[-1]["peak_gpu_mib"] / done[0]["peak_gpu_mib"]
        goals.append(goal("peak GPU memory, longest / shortest audio", growth, f"<= {MEMORY_GROWTH_GOAL}",
                          growth <= MEMORY_GROWTH_GOAL, "x"))
    figures = {"runs": runs, "encode": "H.264 (ffmpeg)" if encode else "skipped (no ffmpeg; uint8 conversion only)",
               "size": sizes.e2e_size, "ngf": sizes.e2e_ngf, "memory_slots": sizes.e2e_slots,
               "precision": sizes.precision, "chunk_frames": sizes.e2e_chunk, "batch_size": sizes.e2e_batch,
               "mouth": mouth_run}
    return {"figures": figures, "goals": goals}


def _read_wav(path: Path) -> np.ndarray:
    """16-bit/float WAV -> float32 mono (scipy: no soundfile needed)."""
    from scipy.io import wavfile

    rate, data = wavfile.read(str(path))
    data = np.asarray(data)
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    if data.ndim == 2:
        data = data.mean(1)
    if rate != 16000:
        raise ValueError(f"{path}: {rate} Hz, expected 16000")
    return data.astype(np.float32)


SECTION_FUNCTIONS = {"env": section_env, "tests": section_tests, "parity": section_parity, "render": section_render,
                     "fit": section_fit, "stage1": section_stage1, "stage2": section_stage2, "e2e": section_e2e}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (a dry run of the same code)")
    parser.add_argument("--inputs", default=None, help=f"carried clip npz (default {DEFAULT_INPUTS.relative_to(ROOT)})")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 420; quick 240)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--parity-device", default="cuda", help=argparse.SUPPRESS)  # cpu: dry run of parity
    args = parser.parse_args(argv)
    sizes = quick_sizes() if args.quick else full_sizes()
    if args.quick:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), int(os.environ.get("OMP_NUM_THREADS", "2")))))
    check = Check(args, sizes)
    say(f"gpu_check ({'quick, CPU' if args.quick else 'full, CUDA'}): sections {' '.join(args.sections)}; "
        f"budget {check.remaining():.0f} s; results in {check.out}")
    for name in args.sections:
        check.run(name, lambda budget, fn=SECTION_FUNCTIONS[name]: fn(check, budget))
    table = markdown(check.results)
    print(table, flush=True)
    say(f"done in {time.perf_counter() - check.started:.0f} s: {check.out / 'gpu_check.json'}")
    import shutil

    shutil.rmtree(check.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
