"""A folder of videos -> a corpus of person clips, in shards (``scripts/preprocess_corpus.py``;
docs/real-data.md).

* **Discovery** (:func:`find_videos`): every ``.mp4`` under ``src`` (hidden files and folders, and
  ``out`` if it lies inside ``src``, are left out). LRW's layout ``WORD/{train,val,test}/WORD_NNNNN.mp4``
  names a clip ``WORD_{split}_NNNNN``; any other video is named by its relative path with ``/`` as
  ``_``. The name of a video's folder picks its split in ``corpus.json`` (``splits``: LRW's ``val``
  -> ``heldout``; a folder mapped to ``null`` is neither preprocessed nor indexed), other folders
  get ``default_split``.
* **Shards** (:func:`shard_of`): the first 8 bytes of the SHA-1 of the video's relative path,
  modulo the number of shards. Stable across processes, machines and Python versions (unlike
  ``hash()``), and a video's shard does not depend on which other videos exist.
* **One shard** (:func:`preprocess_shard`): the steps of
  :func:`~talkinghead.preprocess.pipeline.preprocess_video`, with one detector for the whole shard
  and the fit batched: each video's landmarks and crops
  (:func:`~talkinghead.preprocess.pipeline.prepare_video`), then ``fitting.batch_clips`` videos
  fitted in one optimisation (:func:`~talkinghead.preprocess.pipeline.fit_prepared`, the batched
  :func:`~talkinghead.preprocess.fit.fit_clips`) and written.
  A finished clip (``OUT/NAME/meta.json``: clips are written to a temporary sibling and renamed
  into place) and a recorded rejection (``OUT/.corpus/rejected/NAME.json``: no face, too short,
  unreadable) are skipped, so rerunning the same command resumes; the temporary folders a
  killed run left behind for this shard's clips are removed first. ``OUT/.corpus/reports/`` holds
  one JSON per shard run (counts, seconds, process id).
* **Index** (:func:`write_index`): ``OUT/corpus.json`` lists the finished clips with their split,
  written atomically at the end of a one-process run, by :class:`WriteIndexAtEnd` (a Hydra
  callback) when a ``--multirun`` sweep over the shards ends, or alone with ``index_only=true``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from talkinghead.cli import SweepAborted, cfg_get, to_plain
from talkinghead.data.clip import write_corpus_index
from talkinghead.errors import ConfigError, InputError, TalkingHeadError
from talkinghead.preprocess.landmarks import detector_name, make_detector
from talkinghead.preprocess.fit import FittingConfig
from talkinghead.preprocess.pipeline import PreparedVideo, check_video, fit_prepared, prepare_video, preprocess_options
from talkinghead.stagedir import write_json_atomic

VIDEO_SUFFIX = ".mp4"
STATE_DIR = ".corpus"  # OUT/.corpus/{rejected,reports,logs}: bookkeeping next to the clips
LRW_SPLITS = ("train", "val", "test")
PROGRESS_SECONDS = 30.0  # a progress line at least this often (and every 100 videos)


@dataclass(frozen=True)
class CorpusVideo:
    """One source video: its file, its path relative to ``src`` (posix), clip name and split
    (``None``: left out by ``splits``)."""

    path: Path
    rel: str
    name: str
    split: str | None


def clip_name(rel: str) -> str:
    """The clip name of a video at relative path ``rel``: ``WORD_{split}_NNNNN`` for LRW's
    ``WORD/{train,val,test}/WORD_NNNNN.mp4``, else the path without suffix, ``/`` -> ``_``."""
    parts = Path(rel).with_suffix("").parts
    if len(parts) == 3 and parts[1] in LRW_SPLITS and parts[2].startswith(parts[0] + "_"):
        return f"{parts[0]}_{parts[1]}_{parts[2][len(parts[0]) + 1:]}"
    return "_".join(parts)


def shard_of(rel: str, shards: int) -> int:
    """The shard (``0 <= k < shards``) of the video at relative path ``rel``."""
    digest = hashlib.sha1(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def find_videos(src: str | os.PathLike, splits: Mapping[str, str | None] | None = None,
                default_split: str = "train", exclude: str | os.PathLike | None = None) -> list[CorpusVideo]:
    """Every ``.mp4`` under ``src`` as :class:`CorpusVideo`, sorted by relative path. Two videos
    with the same clip name are an :class:`InputError` naming both."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise InputError(f"src={src} is not a folder; point src= at the folder of videos (e.g. LRW's lipread_mp4/)")
    splits = dict(splits or {})
    excluded = Path(exclude).expanduser().resolve() if exclude is not None else None
    videos: list[CorpusVideo] = []
    for folder, dirs, files in os.walk(src):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and (excluded is None or (here / d).resolve() != excluded))
        for file in files:
            if file.startswith(".") or not file.lower().endswith(VIDEO_SUFFIX):
                continue
            rel = (here / file).relative_to(src).as_posix()
            parent = here.name if here != src else ""
            split = splits[parent] if parent in splits else default_split
            videos.append(CorpusVideo(here / file, rel, clip_name(rel), split))
    videos.sort(key=lambda v: v.rel)
    seen: dict[str, str] = {}
    for v in videos:
        if v.name in seen:
            raise InputError(f"{src}: {seen[v.name]} and {v.rel} both become clip {v.name!r}; rename one of them")
        seen[v.name] = v.rel
    return videos


def selected(videos: Sequence[CorpusVideo]) -> list[CorpusVideo]:
    """The videos a split is given to (the ones preprocessed and indexed)."""
    return [v for v in videos if v.split]


def shard_videos(videos: Sequence[CorpusVideo], shard: int, shards: int) -> list[CorpusVideo]:
    """The videos of shard ``shard`` of ``shards`` (listing order)."""
    return [v for v in videos if shard_of(v.rel, shards) == shard]


# ---------------------------------------------------------------------------------------------
# The state of a clip on disk


def is_finished(out: Path, name: str) -> bool:
    """``OUT/NAME`` is a finished clip (a clip folder only appears complete: write_clip renames it in)."""
    return (out / name / "meta.json").is_file()


def rejection_file(out: Path, name: str) -> Path:
    return out / STATE_DIR / "rejected" / f"{name}.json"


def _remove_stale_temps(out: Path, names: set[str]) -> int:
    """Remove the temporary siblings (``.NAME.tmp-*``, ``.NAME.old-*``) that a killed
    :func:`~talkinghead.data.clip.write_clip` left for the clips ``names``; returns how many."""
    removed = 0
    if not out.is_dir():
        return 0
    for entry in os.scandir(out):
        if not entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        for marker in (".tmp-", ".old-"):
            stem = entry.name[1:].rpartition(marker)[0]
            if stem and stem in names:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
                break
    return removed


@dataclass
class ShardReport:
    """What one run of one shard did (also ``OUT/.corpus/reports/shard-K-of-N.json``)."""

    shard: int
    shards: int
    videos: int = 0            # videos in the shard
    finished_before: int = 0   # skipped: the clip was there
    rejected_before: int = 0   # skipped: a rejection was recorded
    written: int = 0           # clips written by this run
    rejected: int = 0          # videos rejected by this run
    stale_temps_removed: int = 0
    seconds: float = 0.0
    pid: int = 0


def preprocess_shard(
    videos: Sequence[CorpusVideo],
    out: str | os.PathLike,
    shard: int = 0,
    shards: int = 1,
    *,
    detector: Mapping[str, Any] | None = None,
    ground_truth_root: str | os.PathLike | None = None,
    **preprocess_options: Any,
) -> ShardReport:
    """Preprocess shard ``shard`` of ``shards`` of ``videos`` (the selected corpus listing) into
    ``OUT/NAME`` clips, skipping finished clips and recorded rejections.

    ``detector``: a detector config node (``configs/detector/*.yaml``); ``ground_truth`` takes
    each video's true coefficients from ``ground_truth_root/NAME``. ``preprocess_options``: the
    keyword arguments of :func:`~talkinghead.preprocess.pipeline.preprocess_video`
    (``face_model_cfg``, ``fitting_cfg``, ``min_frames``, ``max_frames``, ``device``, ...;
    ``keep_source`` defaults to false); ``fitting_cfg.batch_clips`` videos are fitted together.
    An :class:`InputError` for one video is recorded as its rejection and the shard goes on (a
    batch whose fit fails is refitted clip by clip); any other error stops the shard.
    """
    if not 0 <= shard < shards:
        raise ConfigError(f"shard={shard} is outside 0..{shards - 1}; use 0 <= shard < shards")
    out = Path(out).expanduser()
    start = time.monotonic()
    mine = shard_videos(videos, shard, shards)
    report = ShardReport(shard, shards, videos=len(mine), pid=os.getpid())
    spec = dict(detector or {"_target_": "talkinghead.preprocess.landmarks.MediaPipeDetector"})
    name = detector_name(spec)
    if name == "saved":
        raise ConfigError("detector=saved reads one video's landmarks; for a corpus use detector=mediapipe, "
                          "face_alignment or ground_truth")
    if name == "ground_truth" and ground_truth_root is None:
        raise ConfigError("detector=ground_truth over a corpus needs ground_truth_root=DIR (a clip with the true "
                          "coefficients per video, named like the corpus clips)")
    _check_writable(out)
    report.stale_temps_removed = _remove_stale_temps(out, {v.name for v in mine})
    todo = []
    for video in mine:
        if is_finished(out, video.name):
            report.finished_before += 1
        elif rejection_file(out, video.name).is_file():
            report.rejected_before += 1
        else:
            todo.append(video)
    label = f"shard {shard}/{shards}"
    print(f"{label}: {len(mine)} videos, {report.finished_before} finished and {report.rejected_before} rejected "
          f"before, {len(todo)} to do", flush=True)
    shared = None if name == "ground_truth" or not todo else make_detector(spec)  # one per shard
    options = {"keep_source": False, **preprocess_options, "progress": False}
    fitting = FittingConfig.from_mapping(options.pop("fitting_cfg", None))
    fit_options = {k: options.pop(k) for k in ("device", "renderer") if k in options}
    keep_source = bool(options.pop("keep_source"))
    last_line = time.monotonic()

    def reject(video: CorpusVideo, err: InputError) -> None:
        write_json_atomic(rejection_file(out, video.name), {"video": video.rel, "error": str(err)})
        report.rejected += 1
        print(f"{label}: rejected {video.rel}: {err}", flush=True)

    def fit_and_write(batch: list[tuple[CorpusVideo, PreparedVideo]]) -> None:
        """One batched fit (fitting.batch_clips clips share an optimisation), then each clip written;
        a fit that fails (e.g. a non-finite loss) is retried clip by clip so only the bad one is rejected."""
        try:
            fit_prepared([p for _, p in batch], fitting, overwrite=True, **fit_options)
            report.written += len(batch)
            return
        except InputError:
            if len(batch) == 1:
                raise
        for video, prepared in batch:
            try:
                fit_prepared([prepared], fitting, overwrite=True, **fit_options)
                report.written += 1
            except InputError as err:
                reject(video, err)

    try:
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="talkinghead_corpus_", dir=out / STATE_DIR) as tmp:
            batch: list[tuple[CorpusVideo, PreparedVideo]] = []
            for i, video in enumerate(todo, 1):
                target = out / video.name
                if shared is not None:
                    shared.reset()  # a tracker starts afresh on each video
                source_dir = Path(tmp) / video.name if keep_source else None
                if source_dir is not None:
                    source_dir.mkdir()
                detect = shared
                try:  # target exists here only as a folder that is not a clip (no meta.json): replaced
                    info = check_video(video.path, int(options.get("min_frames", 1)))  # before a per-video detector
                    if shared is None:
                        detect = make_detector({**spec, "clip": str(Path(ground_truth_root) / video.name)})
                    batch.append((video, prepare_video(video.path, target, detect, overwrite=True, name=video.name,
                                                       source_dir=source_dir, info=info, **options)))
                except InputError as err:
                    reject(video, err)
                finally:
                    if detect is not None and detect is not shared:
                        detect.close()
                if len(batch) == fitting.batch_clips or (i == len(todo) and batch):
                    try:
                        fit_and_write(batch)
                    except InputError as err:
                        reject(batch[0][0], err)
                    batch = []
                now = time.monotonic()
                if i == len(todo) or i % 100 == 0 or now - last_line >= PROGRESS_SECONDS:
                    rate = i / max(now - start, 1e-9) * 60
                    eta = (len(todo) - i) / max(rate, 1e-9)
                    print(f"{label}: {i}/{len(todo)} done ({report.written} written, {report.rejected} rejected), "
                          f"{rate:.1f} videos/min, {eta:.0f} min left", flush=True)
                    last_line = now
    finally:
        if shared is not None:
            shared.close()
        report.seconds = round(time.monotonic() - start, 3)
        write_json_atomic(out / STATE_DIR / "reports" / f"shard-{shard}-of-{shards}.json", asdict(report))
    return report


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create out={out} ({err.strerror}); choose a writable folder") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"out={out} is not writable; choose a writable folder")


def write_index(out: str | os.PathLike, videos: Sequence[CorpusVideo], src: str | os.PathLike | None = None) -> Path:
    """``OUT/corpus.json``: the finished clips of ``videos`` (the selected listing) with their
    split, in listing order; counts of videos and rejections alongside. Atomic."""
    out = Path(out).expanduser()
    persons = [{"name": v.name, "split": v.split} for v in videos if is_finished(out, v.name)]
    rejected = sum(rejection_file(out, v.name).is_file() for v in videos)
    info = {"source": str(src) if src is not None else None, "videos": len(videos), "clips": len(persons),
            "rejected": rejected, "missing": len(videos) - len(persons) - rejected,
            "note": "written by scripts/preprocess_corpus.py; one clip per video"}
    return write_corpus_index(out, persons, info)


# ---------------------------------------------------------------------------------------------
# Config entry points (configs/preprocess_corpus.yaml)


def _listing(cfg) -> list[CorpusVideo]:
    for key in ("src", "out"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] is None:
            raise ConfigError(f"{key}= is required: python scripts/preprocess_corpus.py src=DIR out=DIR")
    videos = selected(find_videos(cfg.src, to_plain(cfg.splits), str(cfg.default_split), exclude=cfg.out))
    if not videos:
        raise InputError(f"src={cfg.src}: no {VIDEO_SUFFIX} videos (with a split) found; check src= and splits")
    return videos


def _check_shards(cfg) -> int:
    shards = int(cfg.shards)
    if shards < 1:
        raise ConfigError(f"shards={shards}; use shards >= 1")
    return shards


def _device(cfg, shard: int) -> str:
    device, gpus = str(cfg.device), int(cfg.gpus)
    if gpus > 0 and device in ("cuda", "auto"):
        return f"cuda:{shard % gpus}"
    return device


def preprocess_corpus_from_config(cfg) -> ShardReport | Path:
    """``scripts/preprocess_corpus.py``: one shard (``shard=K``, as a ``--multirun`` job does),
    every shard in turn then the index (``shard=null``), or only the index (``index_only=true``)."""
    shards = _check_shards(cfg)
    videos = _listing(cfg)
    if bool(cfg.index_only):
        path = write_index(cfg.out, videos, cfg.src)
        _print_index(path)
        return path
    common = dict(detector=to_plain(cfg.detector), ground_truth_root=cfg_get(cfg, "ground_truth_root"),
                  **preprocess_options(cfg))
    if cfg.shard is not None:
        shard = int(cfg.shard)
        report = preprocess_shard(videos, cfg.out, shard, shards, device=_device(cfg, shard), **common)
        print(f"shard {shard}/{shards} finished: {report.written} written, {report.rejected} rejected in "
              f"{report.seconds:.0f} s; the index is written when the sweep ends (or: index_only=true)", flush=True)
        return report
    for shard in range(shards):
        preprocess_shard(videos, cfg.out, shard, shards, device=_device(cfg, shard), **common)
    path = write_index(cfg.out, videos, cfg.src)
    _print_index(path)
    return path


def _print_index(path: Path) -> None:
    index = json.loads(path.read_text())
    print(f"wrote {path}: {index['clips']} clips of {index['videos']} videos ({index['rejected']} rejected, "
          f"{index['missing']} not done yet)", flush=True)


class WriteIndexAtEnd(Callback):
    """Hydra callback (``hydra.callbacks`` in configs/preprocess_corpus.yaml), run in the launching
    process: checks the listing before any job starts and writes ``OUT/corpus.json`` once every
    shard's job has returned (a failed job stops the sweep first; rerun, or ``index_only=true``).
    Its errors stop the sweep (:class:`~talkinghead.cli.SweepAborted`), not just warn."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            _check_shards(config)
            videos = _listing(config)
        except TalkingHeadError as err:
            raise SweepAborted(err) from None
        print(f"{len(videos)} videos under {config.src} in {int(config.shards)} shards", flush=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            _print_index(write_index(config.out, _listing(config), config.src))
        except TalkingHeadError as err:
            raise SweepAborted(err) from None
