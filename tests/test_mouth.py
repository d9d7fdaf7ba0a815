"""The mouth synthesis (talkinghead/pipeline/mouth.py), its frames (pipeline/frames.py), the
short-clip split and the real-person benchmark's
table logic. Clips come from the synthetic world at a small size (a few seconds to build)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkinghead.data.clip import default_split, read_clip
from talkinghead.data.synthetic import make_corpus
from talkinghead.face.coeffs import SLICES
from talkinghead.face.factory import make_face_model
from talkinghead.metrics.image import psnr
from talkinghead.pipeline.benchmark import contact_sheet, format_tables, sheet_frames
from talkinghead.pipeline.evaluate import evaluate_mouth
from talkinghead.pipeline.frames import high_res_size, scaled_transform
from talkinghead.pipeline.mouth import MouthCompositor, MouthOptions, mouth_options
from talkinghead.render import get_renderer
from talkinghead.errors import ConfigError


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("mouth_world")
    make_corpus(root, persons=1, heldout=0, frames=60, seed=3)
    return read_clip(next(p for p in root.iterdir() if (p / "meta.json").is_file()), load_audio=False)


@pytest.fixture(scope="module")
def parts(clip):
    face_model = make_face_model(clip.meta.face_model)
    return face_model, get_renderer("torch")


def _images(clip, index) -> torch.Tensor:
    return torch.as_tensor(np.asarray(clip.fixed[index])).permute(0, 3, 1, 2).float() / 255


def _compositor(clip, parts, donors, **options):
    face_model, renderer = parts
    return MouthCompositor(face_model, renderer, np.asarray(clip.coeffs[donors]), np.asarray(clip.fixed[donors]),
                           MouthOptions(**options))


def test_output_is_the_reference_frame_outside_the_region(clip, parts):
    comp = _compositor(clip, parts, np.arange(0, 40))
    index = np.arange(45, 53)
    coeffs = np.asarray(clip.coeffs[index])
    ref = _images(clip, index)
    donors = comp.select_donors(coeffs[:, SLICES["expression"]], coeffs[:, SLICES["angles"]])
    out, region = comp.compose(coeffs, coeffs, ref, donors)
    assert out.shape == ref.shape and region.shape == (8, 1, 224, 224)
    outside = (region == 0).expand_as(ref)
    assert outside.float().mean() > 0.5  # the upper face and the background are kept
    assert torch.equal(out[outside], ref[outside])
    inside = region[:, 0] > 0.5  # [n, S, S]
    rows = inside.any(dim=2).nonzero()[:, 1]
    lm = np.asarray(clip.landmarks[index])
    assert rows.float().mean() > lm[:, 33, 1].mean()  # the region lies below the bottom of the nose
    assert float(psnr(out, ref).mean()) > 25  # a close, not an arbitrary, lower face


def test_a_frame_that_is_its_own_donor_comes_back_unchanged(clip, parts):
    """Donor = target = reference: the warp is the identity, so the output is the input up to
    bilinear resampling at pixel centres (exact) and the rasterised mesh's edges."""
    index = np.arange(10, 14)
    comp = _compositor(clip, parts, index, colour_match=False)
    coeffs = np.asarray(clip.coeffs[index])
    ref = _images(clip, index)
    out, _ = comp.compose(coeffs, coeffs, ref, np.arange(4))
    assert float(psnr(out, ref).min()) > 45


def test_warp_follows_a_moved_face(clip, parts):
    """A target face moved by a known translation samples the donor at the moved positions."""
    comp = _compositor(clip, parts, np.arange(0, 1), render_size=224)
    donor = torch.as_tensor(np.asarray(clip.coeffs[0:1]))
    target = donor.clone()
    target[:, SLICES["translation"].start] += 0.05  # x: ~5 px at 224 (focal 1015, depth ~10)
    grid, region = comp.warp_fields(target, target, np.zeros(1, dtype=int))
    u = (grid[0, ..., 0] + 1) / 2 * 224  # donor u at each output pixel (pixel units)
    pixel_u = torch.arange(224).float() + 0.5
    shift = (u - pixel_u.view(1, -1))[region[0, 0] > 0.99]
    expected = -0.05 * 1015 / (10 - float(donor[0, SLICES["translation"].start + 2]))
    assert abs(float(shift.median()) - expected) < 0.3


def test_donor_retrieval_finds_the_matching_mouth_with_hysteresis(clip, parts):
    donors = np.arange(0, 40)
    comp = _compositor(clip, parts, donors, pose_weight=0.0, hysteresis=0.0)
    expression = np.asarray(clip.coeffs[donors])[:, SLICES["expression"]]
    angles = np.asarray(clip.coeffs[donors])[:, SLICES["angles"]]
    chosen = comp.select_donors(expression, angles)
    costs = comp.donor_costs(expression, angles)
    assert torch.allclose(costs[torch.arange(40), torch.as_tensor(chosen)], torch.zeros(40), atol=1e-6)  # a perfect match
    distinct = costs.clone().fill_diagonal_(float("inf")).amin(1) > 1e-3  # frames whose mouth no other frame shares
    assert distinct.sum() > 20 and np.array_equal(chosen[distinct.numpy()], donors[distinct.numpy()])
    sticky = _compositor(clip, parts, donors, pose_weight=0.0, hysteresis=1e9)
    assert set(sticky.select_donors(expression, angles, previous=7)) == {7}  # never switches
    assert costs.shape == (40, 40) and torch.all(costs >= 0)


def test_mouth_options_reject_unknown_keys():
    assert mouth_options({"feather": 0.1}).feather == 0.1
    with pytest.raises(ConfigError, match="mouth.featherr"):
        mouth_options({"featherr": 0.1})


def test_evaluate_mouth_on_held_out_frames(clip, parts):
    face_model, renderer = parts
    result = evaluate_mouth(clip, face_model, renderer)
    assert result["frames"] == clip.test_slice.stop - clip.test_slice.start and result["size"] == 224
    assert result["psnr_region"] > 25 and 0.5 < result["ssim_face"] <= 1
    assert 0.6 < result["sharpness_ratio"] < 1.5


def test_high_res_crop_transform_keeps_pixel_centres():
    frame_to_crop = np.array([[0.5, 0, -100], [0, 0.5, -40]])  # 2 frame px per crop px
    assert high_res_size(frame_to_crop) == 448 and high_res_size(frame_to_crop, max_size=256) == 256
    fine = scaled_transform(frame_to_crop, 2.0)
    centre = np.array([300.0, 200.0, 1.0])  # a frame point: its crop coordinates, in both samplings
    coarse_xy, fine_xy = frame_to_crop @ centre, fine @ centre
    np.testing.assert_allclose((fine_xy + 0.5) / 2, coarse_xy + 0.5)  # continuous coordinates scale by 2


@pytest.mark.parametrize("frames, train, test", [(400, (0, 300), (300, 400)), (607, (0, 300), (300, 400)),
                                                 (200, (0, 150), (150, 200)), (150, (0, 112), (112, 150))])
def test_default_split(frames, train, test):
    assert default_split(frames) == (train, test)


def test_sheet_frames_show_open_and_closed_mouths():
    opening = np.sin(np.linspace(0, 6, 50)) ** 2
    picks = sheet_frames(opening, 8)
    assert len(picks) == 8 and np.all(np.diff(picks) > 0)
    assert int(np.argmax(opening)) in picks and int(np.argmin(opening)) in picks
    sheet = contact_sheet([np.zeros((3, 40, 40, 3), np.uint8), np.ones((3, 80, 80, 3), np.uint8)], height=32)
    assert sheet.shape == (64, 96, 3) and sheet[32:].min() == 1


def test_benchmark_tables_have_a_row_per_video_and_the_mean():
    def row(name, lmd, corr, fps):
        return {"name": name, "stage1": {"lmd": lmd, "lipsync_corr": corr, "lipsync_offset": 0, "ridge_lmd": 1.0},
                "stage1_general": {"lmd": 2.0}, "mouth": {"sharpness_ratio": 0.9, "size": 448},
                "renders": {"heldout": {"fps": fps}}, "seconds": {"preprocess": 10.0}}
    text = format_tables([row("a", 1.0, 0.7, 10.0), row("b", 2.0, 0.5, 20.0)])
    stage1 = text.split("####")[1]
    assert "| a | - | 1.000 | 2.000 | 1.000 | - | - | 0.700 |" in stage1  # mean-expression baseline absent: "-"
    assert "| **mean** | - | 1.000 | 2.000 | 1.500 | - | - | 0.600 |" in stage1
    assert "| **mean** |" in text.split("####")[3] and "15.000" in text.split("####")[3]
    single = format_tables([row("a", 1.0, 0.7, 10.0)])
    assert "**mean**" not in single
