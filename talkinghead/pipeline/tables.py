"""The paper's comparisons as Markdown tables, on the held-out persons of a corpus.

    python scripts/reproduce_tables.py                                   # synthetic corpus, CPU presets
    python scripts/reproduce_tables.py experiment=paper data.root=DIR general=DIR   # real data, GPU

For every evaluated person (default: the corpus's held-out persons) the person's fine-tuned
models are used (``PERSON/finetuned``; with ``finetune=true`` fine-tuned first unless current),
next to the general models (``general``), on the person's held-out frames 300-399:

1. **Stage 1, general vs fine-tuned** (the paper: personalisation improves lip sync and head
   pose): mouth LMD, lip-sync correlation and offset, HS of the predicted pose; with the
   mean-expression and loudness-regression baselines.
2. **Stage 2, with vs without memory** (the paper's memory/identity ablation): PSNR and SSIM of
   refined frames for the identity read from the memory, the person's true identity feature
   and no identity (zeros), for the general and the fine-tuned refiner; the blended render
   (the refiner's input) as the floor.
3. **Pose mode** (the paper: personalised, keyframe-matched pose vs the predicted one): HS
   between the real head motion of the held-out frames and each mode's pose.

Numbers are means over persons (``± std`` when there are several). Each table says whether the
paper's claim holds on these numbers. Written to ``OUT/tables.md`` and ``OUT/metrics.json``.
HS is our documented definition (:mod:`talkinghead.metrics.pose`), not the paper's formula.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from talkinghead.cli import cfg_get, to_plain
from talkinghead.data.clip import list_clips
from talkinghead.errors import ConfigError, InputError
from talkinghead.face.factory import make_face_model
from talkinghead.models.audio2coeff import read_model_json
from talkinghead.pipeline.evaluate import (
    STAGE2_IDENTITIES,
    evaluate_pose_modes,
    evaluate_stage1,
    evaluate_stage2,
    format_number,
    held_out_frames,
    write_json,
)
from talkinghead.pipeline.evaluate_stage1 import fit_loudness_baseline
from talkinghead.pipeline.finetune import finetune_person
from talkinghead.pipeline.infer import load_person
from talkinghead.pipeline.pose import PoseControls
from talkinghead.pipeline.stage1 import load_audio2coeff
from talkinghead.pipeline.stage2 import load_refiner
from talkinghead.render import get_renderer
from talkinghead.stagedir import check_trained, is_done

MODELS = ("general", "finetuned")
POSE_MODE_ORDER = ("still", "predicted", "matched")
IDENTITY_LABELS = {"zero": "none (zeros): no memory", "memory": "read from memory (paper)", "clip": "true identity feature"}


@dataclass
class PersonTables:
    """One person's raw numbers: ``stage1[model]``, ``stage2[model][identity]``, ``pose[mode]``."""

    person: str
    stage1: dict[str, dict]
    stage2: dict[str, dict[str, dict]]
    pose: dict[str, float]


def evaluate_for_tables(person: str | os.PathLike, general: str | os.PathLike, device: str = "auto",
                        renderer: str = "torch", controls: PoseControls | None = None,
                        loudness_baseline=None) -> PersonTables:
    """All numbers of the three tables for one person (fine-tuned models in ``PERSON/finetuned``)."""
    controls = controls or PoseControls()
    tuned = load_person(person, device=device, renderer=renderer, with_audio=True)
    clip, frames = tuned.clip, held_out_frames(tuned.clip)
    general = Path(general)
    stage1_models = {"general": load_audio2coeff(check_trained(general / "audio2coeff"), device=tuned.device),
                     "finetuned": tuned.stage1}
    refiners = {"general": load_refiner(check_trained(general / "refiner"), device=tuned.device),
                "finetuned": tuned.refiner}
    face_model = make_face_model(clip.meta.face_model).to(tuned.device)
    stage1 = {name: evaluate_stage1(model, clip, face_model, frames, loudness_baseline=loudness_baseline,
                                    smoothing=int(controls.smoothing), device=tuned.device)
              for name, model in stage1_models.items()}
    stage2 = {name: {identity: evaluate_stage2(refiner, clip, face_model, tuned.renderer, frames, identity)
                     for identity in STAGE2_IDENTITIES}
              for name, refiner in refiners.items()}
    pose = evaluate_pose_modes(tuned.stage1, clip, tuned.ref_frames, frames, POSE_MODE_ORDER, controls,
                               device=tuned.device)
    return PersonTables(clip.name, stage1, stage2, pose)


# ----------------------------------------------------------------------------- aggregation
def _stat(values: Sequence[float | None]) -> tuple[float, float, int] | None:
    values = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values)), len(values)


def _cell(stat: tuple[float, float, int] | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    mean, std, count = stat
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if count > 1 else f"{mean:.{digits}f}"


def _mean(stat) -> float | None:
    return None if stat is None else stat[0]


def _verdict(a, b, text: str, higher_is_better: bool = True) -> str:
    """``- text: **holds** (a vs b)`` comparing the means of two cells."""
    a, b = _mean(a), _mean(b)
    if a is None or b is None:
        return f"- {text}: not measurable here"
    holds = a > b if higher_is_better else a < b
    return f"- {text}: **{'holds' if holds else 'does not hold'}** ({a:.3f} vs {b:.3f})"


def _per_person_stage1(results: Sequence[PersonTables]) -> list[str]:
    """Table 1 per person, with how many persons each claim holds for (the claims are per person)."""
    loudness = any(r.stage1["finetuned"].get("lmd_loudness") is not None for r in results)
    lines = ["Per person:", "",
             "| person | HS general | HS fine-tuned | LMD general | LMD fine-tuned | LMD mean expression |"
             + (" LMD loudness |" if loudness else ""),
             "| --- | --- | --- | --- | --- | --- |" + (" --- |" if loudness else "")]
    hs_up = lmd_below_baselines = 0
    for r in results:
        g, f = r.stage1["general"], r.stage1["finetuned"]
        lines.append(f"| {r.person} | {format_number(g.get('hs'))} | {format_number(f.get('hs'))} | {format_number(g.get('lmd'))} | {format_number(f.get('lmd'))} "
                     f"| {format_number(f.get('lmd_mean_expression'))} |" + (f" {format_number(f.get('lmd_loudness'))} |" if loudness else ""))
        if g.get("hs") is not None and f.get("hs") is not None and f["hs"] > g["hs"]:
            hs_up += 1
        baselines = [b for b in (f.get("lmd_mean_expression"), f.get("lmd_loudness")) if b is not None]
        if g.get("lmd") is not None and baselines and g["lmd"] < min(baselines):
            lmd_below_baselines += 1
    n = len(results)
    return lines + ["",
                    f"- fine-tuned HS > general HS: {hs_up} of {n} persons",
                    f"- general LMD < every baseline ({'mean expression, loudness' if loudness else 'mean expression'}): "
                    f"{lmd_below_baselines} of {n} persons",
                    ""]


def build_tables(results: Sequence[PersonTables]) -> tuple[str, dict]:
    """Markdown of the three tables (plus verdicts) and the aggregated numbers."""
    if not results:
        raise InputError("no persons were evaluated; check data.root and persons")
    n = len(results)
    names = ", ".join(r.person for r in results)
    s1 = {m: {k: _stat([r.stage1[m].get(k) for r in results])
              for k in ("lmd", "lipsync_corr", "lipsync_offset", "hs", "lmd_mean_expression", "lmd_loudness", "hs_real_train")}
          for m in MODELS}
    s2 = {m: {i: {k: _stat([r.stage2[m][i].get(k) for r in results]) for k in ("psnr", "ssim", "psnr_input", "ssim_input")}
              for i in STAGE2_IDENTITIES} for m in MODELS}
    pose = {mode: _stat([r.pose.get(mode) for r in results]) for mode in POSE_MODE_ORDER}

    lines = [f"# Reproduced comparisons ({n} held-out person(s): {names}; held-out frames)", ""]
    lines += [
        "## Table 1. Stage 1: general vs fine-tuned (audio of the held-out frames)", "",
        "| model | mouth LMD px ↓ | lip-sync corr ↑ | lip-sync offset (frames) | HS (ours) ↑ |",
        "| --- | --- | --- | --- | --- |",
        f"| baseline: mean training expression | {_cell(s1['finetuned']['lmd_mean_expression'])} | - | - | - |",
    ]
    if s1["finetuned"]["lmd_loudness"] is not None:
        lines.append(f"| baseline: loudness ridge regression | {_cell(s1['finetuned']['lmd_loudness'])} | - | - | - |")
    for model, label in (("general", "general model"), ("finetuned", "fine-tuned (personalised)")):
        row = s1[model]
        lines.append(f"| {label} | {_cell(row['lmd'])} | {_cell(row['lipsync_corr'])} | {_cell(row['lipsync_offset'], 1)} "
                     f"| {_cell(row['hs'])} |")
    if s1["finetuned"]["hs_real_train"] is not None:
        lines.append(f"| reference: the person's real frames 0-299 | - | - | - | {_cell(s1['finetuned']['hs_real_train'])} |")
    lines += ["", "Paper claim (fine-tuning personalises the talking head):",
              _verdict(s1["finetuned"]["hs"], s1["general"]["hs"], "fine-tuned HS > general HS"),
              _verdict(s1["finetuned"]["lipsync_corr"], s1["general"]["lipsync_corr"],
                       "fine-tuned lip-sync correlation > general"),
              _verdict(s1["finetuned"]["lmd"], s1["general"]["lmd"], "fine-tuned mouth LMD < general",
                       higher_is_better=False),
              ""]
    lines += _per_person_stage1(results)

    lines += [
        "## Table 2. Stage 2: with vs without the memory (true coefficients rendered over the real crops)", "",
        "| refiner | identity feature | PSNR dB ↑ | SSIM ↑ |",
        "| --- | --- | --- | --- |",
        f"| (input: blended 3DMM render) | - | {_cell(s2['finetuned']['memory']['psnr_input'], 2)} "
        f"| {_cell(s2['finetuned']['memory']['ssim_input'])} |",
    ]
    for model, label in (("general", "general"), ("finetuned", "fine-tuned")):
        for identity in ("zero", "memory", "clip"):
            row = s2[model][identity]
            lines.append(f"| {label} | {IDENTITY_LABELS[identity]} | {_cell(row['psnr'], 2)} | {_cell(row['ssim'])} |")
    lines += ["", "Paper claim (the memory-provided identity feature improves the refined frames):",
              _verdict(s2["finetuned"]["memory"]["psnr"], s2["finetuned"]["zero"]["psnr"],
                       "fine-tuned PSNR with memory > without"),
              _verdict(s2["finetuned"]["memory"]["ssim"], s2["finetuned"]["zero"]["ssim"],
                       "fine-tuned SSIM with memory > without"),
              _verdict(s2["finetuned"]["memory"]["psnr"], s2["finetuned"]["memory"]["psnr_input"],
                       "refined PSNR > blended-render PSNR"),
              ""]

    lines += [
        "## Table 3. Head pose: mode vs the real head motion of the held-out frames", "",
        "| pose mode | HS (ours) ↑ |",
        "| --- | --- |",
        *(f"| {mode} | {_cell(pose[mode])} |" for mode in POSE_MODE_ORDER),
        "", "Paper claim (personalised keyframe-matched pose looks most like the person's own motion):",
        _verdict(pose["matched"], pose["predicted"], "matched HS > predicted HS"),
        _verdict(pose["matched"], pose["still"], "matched HS > still HS"),
        "",
        "HS is our definition (mean Bhattacharyya coefficient of per-axis Gaussian summaries of angles "
        "and angular velocities; talkinghead/metrics/pose.py), not the paper's unverified formula.",
    ]
    aggregated = {"persons": [r.person for r in results], "stage1": s1, "stage2": s2, "pose": pose}
    return "\n".join(lines) + "\n", aggregated


# ----------------------------------------------------------------------------- entry point
def reproduce_tables_from_config(cfg) -> str:
    """``scripts/reproduce_tables.py``: evaluate, print the tables, write ``OUT/tables.md``."""
    root = Path(str(cfg_get(cfg, "data.root", "data/synthetic")))
    general = Path(str(cfg_get(cfg, "general", "checkpoints/general")))
    out = Path(str(cfg_get(cfg, "out", "outputs/tables")))
    names = cfg_get(cfg, "persons")
    if names is not None:
        names = [names] if isinstance(names, str) else list(to_plain(names))
        persons = [root / str(name) for name in names]
    else:
        persons = list_clips(root, "heldout")
    if not persons:
        raise ConfigError(f"no persons to evaluate in {root}; set persons=[NAME, ...]")
    controls = replace(PoseControls.from_config(cfg_get(cfg, "pose")), mode="matched")  # the tables measure matched pose
    device = cfg_get(cfg, "device", "auto")
    renderer = get_renderer(cfg_get(cfg, "renderer", "torch"))
    progress = bool(cfg_get(cfg, "progress", True))

    for person in persons:
        if bool(cfg_get(cfg, "finetune", True)):  # skips what is current: same settings, same general model
            finetune_person(person, cfg, general=general, progress=progress)
        elif not all(is_done(person / "finetuned" / stage) for stage in ("audio2coeff", "refiner")):
            raise InputError(f"{person} has no fine-tuned models; run python scripts/finetune.py person={person} "
                             f"general={general} (or set finetune=true)")
    try:  # the baseline gets the person's reference expression exactly when the general model does
        centered = bool(read_model_json(check_trained(general / "audio2coeff")).get("center_expression", False))
        baseline = fit_loudness_baseline(list_clips(root, "train"), center_expression=centered)
    except InputError:
        baseline = None  # a single clip or a corpus without training persons with audio
    results = [evaluate_for_tables(p, general, device, renderer, controls, baseline) for p in persons]
    markdown, aggregated = build_tables(results)
    print(markdown)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text(markdown)
    except OSError as err:
        raise InputError(f"cannot write {out / 'tables.md'} ({err.strerror}); choose a writable out=") from None
    write_json(out / "metrics.json", {"aggregated": aggregated, "per_person": [r.__dict__ for r in results]})
    print(f"wrote {out / 'tables.md'} and {out / 'metrics.json'}")
    return markdown
