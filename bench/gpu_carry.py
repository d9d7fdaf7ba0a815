"""Gather what ``bench/gpu_check.py`` needs on a bare CUDA machine into ``.carry/`` (git-ignored).

    python bench/gpu_carry.py --clip data/real/p31        # wheels + 31.mp4's clip, then the size check
    python bench/gpu_carry.py --clip DIR --no-ffmpeg      # without imageio-ffmpeg (e2e then skips H.264)
    python bench/gpu_carry.py --clip DIR --inputs-only    # only the clip (a machine with the project installed)

The machine the check targets has Python 3.12 with torch + CUDA, numpy, scipy, opencv, pyyaml,
tensorboard, safetensors, tqdm, pillow and pytest, no network, and takes at most 64 MiB of
files along with the working tree. This script fills:

``.carry/whl/``     wheels of what that image lacks, for CPython 3.12 on x86_64 Linux
                    (:data:`WHEELS`: Hydra and OmegaConf with antlr4 4.9.3, soundfile with cffi,
                    imageio-ffmpeg for H.264; librosa is not needed: MFCCs use numpy's mel scale).
                    ``pip download --only-binary`` for those with wheels; ``pip wheel`` builds the
                    pure-Python ones that exist only as source (antlr4-python3-runtime 4.9.3).
``.carry/inputs/clip31.npz``  a preprocessed clip (``docs/data-format.md``) in compact form: the
                    fixed crops as JPEG (quality 95; ``cv2.imdecode`` there), landmarks,
                    coefficients, transforms, meta and the soundtrack as 16-kHz int16; beside it
                    ``clip31.mp4``, the source video (the check preprocesses it with
                    ``detector=saved``). Made from the real video ``../shared/real/31.mp4``: it
                    must never be committed (``.carry/`` is in ``.gitignore``).

It then adds up the working tree (tracked and untracked-but-not-ignored files, what travels) and
the carry, prints both, and exits non-zero if they exceed ``--limit-mib`` (64).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from talkinghead.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
#: (distribution, version) the image lacks; versions are the ones the project is tested with.
WHEELS = (
    ("hydra-core", "1.3.8"),
    ("omegaconf", "2.3.1"),
    ("antlr4-python3-runtime", "4.9.3"),  # omegaconf 2.3 pins it; only a source distribution on PyPI
    ("soundfile", "0.14.0"),
    ("cffi", "2.0.0"),
    ("pycparser", "3.0"),
)
FFMPEG_WHEEL = ("imageio-ffmpeg", "0.6.0")  # 29 MB (0.8.x is 68 MB: over the budget with the rest)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
             "manylinux1_x86_64")
MIB = 2**20


def carry_phone_model(out: Path) -> Path:
    """The three files of pocketsphinx's English acoustic model that Stage-1's phone features read
    (1.7 MB; the pocketsphinx wheel, 30 MB with its language models, is not carried):
    ``bench/gpu_check.sh`` points ``TALKINGHEAD_PHONE_MODEL`` at them."""
    from talkinghead.audio.phones import MODEL_FILES, default_model_dir

    source = default_model_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(source / name, out / name)
    return out


class CarryError(Exception):
    """A one-line problem with the carry (missing clip, download failure, over the size limit)."""


# ----------------------------------------------------------------------------- sizes
def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the files that travel with the working tree: tracked plus untracked files git
    does not ignore (``git ls-files --cached --others --exclude-standard``)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.decode().split("\0")):
        path = root / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def dir_bytes(path: Path) -> int:
    """Bytes of every regular file under ``path`` (0 if it does not exist)."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def check_size(tree: int, carry: int, limit_mib: float = 64.0) -> str:
    """One line with the sizes; raises :class:`CarryError` when tree + carry exceed the limit."""
    total = tree + carry
    line = (f"tree {tree / MIB:.1f} MiB + carry {carry / MIB:.1f} MiB = {total / MIB:.1f} MiB "
            f"(limit {limit_mib:g} MiB)")
    if total > limit_mib * MIB:
        raise CarryError(f"{line}: over the limit; drop imageio-ffmpeg (--no-ffmpeg) or carry fewer frames (--frames)")
    return line


# ----------------------------------------------------------------------------- wheels
def _normalised(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _have_wheel(dest: Path, name: str, version: str) -> Path | None:
    prefix = f"{_normalised(name)}-{version}-"
    return next((p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)), None)


def download_wheels(dest: Path, wheels, python_version: str = "3.12") -> list[Path]:
    """Binary wheels for CPython ``python_version`` on x86_64 Linux (pure-Python ones built
    locally where PyPI has only a source distribution); already present files are kept."""
    dest.mkdir(parents=True, exist_ok=True)
    abi = "cp" + python_version.replace(".", "")
    got = []
    for name, version in wheels:
        found = _have_wheel(dest, name, version)
        if found is None:
            spec = f"{name}=={version}"
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", python_version, "--implementation", "cp", "--abi", abi,
                   *(arg for p in PLATFORMS for arg in ("--platform", p)), "-d", str(dest), spec]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:  # no wheel on the index: build one (pure Python only)
                proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), spec],
                                      capture_output=True, text=True)
            found = _have_wheel(dest, name, version)
            if proc.returncode != 0 or found is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                raise CarryError(f"could not get a wheel of {spec} ({tail[0]}); download it by hand into {dest}")
            if "-none-any" not in found.name and "manylinux" not in found.name:
                raise CarryError(f"{found.name} is not for Linux x86_64; remove it and rerun")
        print(f"wheel {found.name} ({found.stat().st_size / MIB:.1f} MiB)", flush=True)
        got.append(found)
    return got


# ----------------------------------------------------------------------------- the clip
def pack_clip(clip_dir: Path, out: Path, frames: int = 400, quality: int = 95) -> Path:
    """A person clip -> one compressed npz: JPEG crops, landmarks, coefficients, transforms,
    meta and the 16-kHz soundtrack as int16 (what ``gpu_check._load_inputs`` reads)."""
    clip_dir = Path(clip_dir)
    if not (clip_dir / "meta.json").is_file():
        raise CarryError(f"no person clip at {clip_dir} (meta.json missing); make one with: python scripts/preprocess.py "
                         f"video=../shared/real/31.mp4 out={clip_dir}, or pass --clip DIR")
    meta = json.loads((clip_dir / "meta.json").read_text())
    fixed = np.load(clip_dir / "fixed.npy", mmap_mode="r")
    n = min(int(frames), len(fixed))
    blobs = []
    for frame in fixed[:n]:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise CarryError(f"JPEG encoding failed for a crop of {clip_dir / 'fixed.npy'}")
        blobs.append(buf.reshape(-1))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    transforms = np.load(clip_dir / "transforms.npz")
    arrays = dict(
        jpeg=np.concatenate(blobs).astype(np.uint8), jpeg_offsets=offsets,
        landmarks=np.load(clip_dir / "landmarks.npy")[:n].astype(np.float32),
        fixed_transform=transforms["fixed"].astype(np.float32),
        aligned_transforms=transforms["aligned"][:n].astype(np.float32),
    )
    coeffs = clip_dir / "coeffs.npy"
    if coeffs.is_file():
        arrays["coeffs"] = np.load(coeffs)[:n].astype(np.float32)
    audio = clip_dir / "audio.wav"
    if audio.is_file():
        samples = load_audio(audio, int(meta.get("sample_rate", 16000)))
        keep = int(round(n / float(meta.get("fps", 25)) * int(meta.get("sample_rate", 16000))))
        arrays["audio"] = (np.clip(samples[:keep], -1, 1) * 32767).astype(np.int16)
    else:
        raise CarryError(f"{clip_dir} has no audio.wav; Stage 1 needs the soundtrack")
    meta = {**meta, "num_frames": n, "test_frames": [min(meta["test_frames"][0], n), min(meta["test_frames"][1], n)]}
    arrays["meta_json"] = np.array(json.dumps(meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    print(f"inputs {out} ({n} frames, {out.stat().st_size / MIB:.1f} MiB; crops as JPEG q{quality})", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".carry", help="carry folder (git-ignored)")
    parser.add_argument("--clip", type=Path, default=ROOT / "data" / "real" / "p31",
                        help="the preprocessed clip of 31.mp4 (docs/data-format.md)")
    parser.add_argument("--video", type=Path, default=ROOT.parent / "shared" / "real" / "31.mp4",
                        help="the clip's source video, carried for the preprocessing measurement (skipped if absent)")
    parser.add_argument("--frames", type=int, default=400, help="frames of the clip to carry (300 fit + 100 held out)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the carried crops")
    parser.add_argument("--no-ffmpeg", action="store_true", help="leave imageio-ffmpeg out (29 MB); e2e skips H.264")
    parser.add_argument("--inputs-only", action="store_true", help="only the clip (the project is installed there)")
    parser.add_argument("--limit-mib", type=float, default=64.0, help="tree + carry must stay under this")
    args = parser.parse_args(argv)
    try:
        wheels = list(WHEELS) + ([] if args.no_ffmpeg else [FFMPEG_WHEEL])
        if not args.inputs_only:
            download_wheels(args.out / "whl", wheels)
        if args.no_ffmpeg:
            for stale in (args.out / "whl").glob("imageio_ffmpeg-*.whl"):
                stale.unlink()
        phone_model = carry_phone_model(args.out / "phone_model")
        print(f"phone model {phone_model} ({dir_bytes(phone_model) / MIB:.1f} MiB)", flush=True)
        packed = pack_clip(args.clip, args.out / "inputs" / "clip31.npz", args.frames, args.quality)
        if args.video.is_file():
            shutil.copyfile(args.video, packed.with_suffix(".mp4"))
            print(f"video {packed.with_suffix('.mp4')} ({args.video.stat().st_size / MIB:.1f} MiB)", flush=True)
        else:
            print(f"no video at {args.video}: the check fits the carried crops without preprocessing", flush=True)
        print(check_size(tree_bytes(), dir_bytes(args.out), args.limit_mib), flush=True)
    except CarryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
