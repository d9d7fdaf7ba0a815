"""Metrics: HS (our definition), LMD, lip-sync correlation, PSNR/SSIM."""

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d
from skimage.metrics import structural_similarity

from talkinghead.errors import InputError
from talkinghead.metrics import (
    head_pose_similarity,
    head_pose_similarity_matrix,
    landmark_distance,
    landmarks_from_coeffs,
    lip_sync_score,
    mouth_landmark_distance,
    mouth_opening,
    psnr,
    ssim,
    stage1_mouth_lmd,
)
from talkinghead.metrics.image import masked_psnr, sharpness


def angles(n: int = 400, period: float = 50.0, amplitude: float = 0.1, offset: float = 0.0, seed: int = 0) -> np.ndarray:
    """Euler angles [n, 3] in radians: sinusoids with per-axis phases plus small noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    phase = np.array([0.0, 1.0, 2.0])
    return offset + amplitude * np.sin(2 * np.pi * t / period + phase) + 0.002 * rng.standard_normal((n, 3))


def reference_hs(a: np.ndarray, b: np.ndarray) -> float:
    """HS written out from metrics/pose.py's docstring, one scalar at a time (the reference)."""
    terms = []
    for axis in range(3):
        for kind in ("angle", "velocity"):
            pair = []
            for x in (a, b):
                v = [float(np.degrees(x[t, axis])) for t in range(len(x))]
                if kind == "velocity":
                    v = [v[t + 1] - v[t] for t in range(len(v) - 1)]
                m = sum(v) / len(v)
                s = max((sum((y - m) ** 2 for y in v) / len(v)) ** 0.5, 0.1)
                pair.append((m, s))
            (m1, s1), (m2, s2) = pair
            terms.append((2 * s1 * s2 / (s1**2 + s2**2)) ** 0.5 * np.exp(-((m1 - m2) ** 2) / (4 * (s1**2 + s2**2))))
    return sum(terms) / 6


# ----------------------------------------------------------------------------- HS
def test_hs_identical_symmetric_bounded():
    a, b = angles(seed=0), angles(amplitude=0.07, offset=0.03, seed=1)
    assert head_pose_similarity(a, a) == pytest.approx(1.0)
    assert head_pose_similarity(a, b) == pytest.approx(head_pose_similarity(b, a))
    assert 0.0 <= head_pose_similarity(a, b) < 1.0
    assert head_pose_similarity(torch.tensor(a), a) == pytest.approx(1.0)


def test_hs_drops_for_shift_scale_and_speed():
    base = angles()
    other_noise = angles(seed=5)  # same motion, different noise: near 1
    assert head_pose_similarity(base, other_noise) > 0.95
    # Twice the std on a Gaussian pair gives BC = sqrt(2 * 2 / (1 + 4)) = sqrt(0.8), same mean.
    bc_double_std = np.sqrt(0.8)
    doubled = head_pose_similarity(base, angles(amplitude=0.2))  # all 6 stds double
    assert doubled == pytest.approx(bc_double_std, abs=0.01)
    faster = head_pose_similarity(base, angles(period=25.0))  # only the 3 velocity stds double
    assert faster == pytest.approx((3 + 3 * bc_double_std) / 6, abs=0.01)
    assert faster < head_pose_similarity(base, other_noise)
    shifted = [head_pose_similarity(base, angles(offset=d)) for d in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert all(x > y for x, y in zip(shifted, shifted[1:]))  # monotone in the shift
    assert shifted[-1] < 0.7


def test_hs_still_heads_and_matrix():
    still = np.zeros((30, 3))
    assert head_pose_similarity(still, still) == pytest.approx(1.0)  # std floor: no 0/0
    # Tilted by 0.1 rad (5.7 deg >> the 0.1 deg floor): angle terms ~0, velocity terms equal (1).
    assert head_pose_similarity(still, still + 0.1) == pytest.approx(0.5, abs=1e-6)
    seqs_a = [angles(seed=0), angles(offset=0.05), still]
    seqs_b = [angles(period=25.0), angles(seed=3, n=100)]
    matrix = head_pose_similarity_matrix(seqs_a, seqs_b)
    assert matrix.shape == (3, 2)
    for i, a in enumerate(seqs_a):
        for j, b in enumerate(seqs_b):
            assert matrix[i, j] == pytest.approx(reference_hs(a, b), rel=1e-9)  # independent of the code
            assert head_pose_similarity(a, b) == matrix[i, j]
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        head_pose_similarity(np.zeros((10, 6)), still)


# ----------------------------------------------------------------------------- LMD
def test_landmark_distances():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 224, size=(5, 68, 2))
    assert mouth_landmark_distance(true, true) == 0.0
    moved = true.copy()
    moved[:, 48:68] += np.array([3.0, 4.0])  # every mouth point moves by 5 px
    assert mouth_landmark_distance(moved, true) == pytest.approx(5.0)
    assert landmark_distance(moved, true) == pytest.approx(5.0 * 20 / 68)
    eyes_moved = true.copy()
    eyes_moved[:, 36:48] += 10.0
    assert mouth_landmark_distance(eyes_moved, true) == 0.0
    with pytest.raises(InputError):
        mouth_landmark_distance(true[:, :60], true[:, :60])


class StandInFaceModel:
    """Landmarks that depend on the expression (mouth) and translation (everything)."""

    def __init__(self):
        self.calls = 0
        gen = torch.Generator().manual_seed(0)
        self.base = torch.rand(68, 2, generator=gen) * 224
        self.mouth_basis = torch.randn(64, 20, 2, generator=gen)

    def landmarks_2d(self, coeffs, camera):
        self.calls += 1
        lm = self.base.expand(coeffs.shape[0], 68, 2).clone()
        lm[:, 48:68] += torch.einsum("ne,epk->npk", coeffs[:, 80:144], self.mouth_basis)
        return lm + coeffs[:, 254:256, None].transpose(1, 2) * 100


def test_landmarks_from_coeffs_batches_and_stage1_lmd():
    model = StandInFaceModel()
    coeffs = torch.randn(7, 257)
    whole = landmarks_from_coeffs(model, coeffs, camera=None, batch=100)
    chunked = landmarks_from_coeffs(model, coeffs, camera=None, batch=3)
    assert whole.shape == (7, 68, 2) and model.calls == 1 + 3
    torch.testing.assert_close(chunked, whole)
    assert stage1_mouth_lmd(model, coeffs[:, 80:144], coeffs, camera=None) == pytest.approx(0.0, abs=1e-5)
    worse = stage1_mouth_lmd(model, coeffs[:, 80:144] + 0.5, coeffs, camera=None)
    better = stage1_mouth_lmd(model, coeffs[:, 80:144] + 0.1, coeffs, camera=None)
    assert worse > better > 0
    with pytest.raises(InputError):
        stage1_mouth_lmd(model, coeffs[:5, 80:144], coeffs, camera=None)


# ----------------------------------------------------------------------------- lip sync
def test_mouth_opening():
    lm = np.zeros((2, 68, 2))
    lm[:, 48], lm[:, 54] = [100, 150], [140, 150]  # width 40
    lm[:, 62], lm[:, 66] = [120, 145], [120, 155]  # opening 10
    lm[1, 66] = [120, 165]  # opening 20
    np.testing.assert_allclose(mouth_opening(lm, normalize=False), [10, 20])
    np.testing.assert_allclose(mouth_opening(lm), [0.25, 0.5])


@pytest.mark.parametrize("lag", [3, -2])
def test_lip_sync_finds_a_known_lag(lag):
    rng = np.random.default_rng(1)
    signal = gaussian_filter1d(rng.standard_normal(220), 2.0)
    true = signal[10:210]
    pred = signal[10 - lag:210 - lag]  # pred[t + lag] == true[t]
    result = lip_sync_score(pred, true, max_offset=5)
    assert result.best_offset == lag
    assert result.corr_at_best == pytest.approx(1.0)
    assert result.corr_at_zero < 0.9
    same = lip_sync_score(true, true)
    assert same.best_offset == 0 and same.corr_at_zero == pytest.approx(1.0)
    assert lip_sync_score(np.ones(50), true[:50]).corr_at_zero == 0.0
    with pytest.raises(InputError):
        lip_sync_score(true[:5], true[:5], max_offset=5)


# ----------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_closed_form():
    a = torch.rand(3, 3, 16, 16)
    noise = torch.tensor([0.1, 0.05, 0.2]).view(3, 1, 1, 1) * torch.randn(3, 3, 16, 16)
    b = a + noise
    expected = 10 * torch.log10(1.0 / noise.square().flatten(1).mean(1))
    torch.testing.assert_close(psnr(a, b), expected)
    torch.testing.assert_close(psnr(2 * a, 2 * b, data_range=2.0), expected)
    assert torch.isinf(psnr(a, a)).all()


def test_ssim_matches_skimage():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 40, 33, generator=gen)
    b = (a + torch.tensor([0.02, 0.1, 0.3]).view(3, 1, 1, 1) * torch.randn(3, 3, 40, 33, generator=gen)).clamp(0, 1)
    ours = ssim(a, b)
    reference = [
        structural_similarity(
            a[i].numpy(), b[i].numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, channel_axis=0, data_range=1.0,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-3)
    assert ours[0] > ours[1] > ours[2]
    torch.testing.assert_close(ssim(a, a), torch.ones(3))
    with pytest.raises(InputError):
        ssim(a[..., :8, :8], b[..., :8, :8])
    with pytest.raises(InputError):
        psnr(a, b[:2])


def test_mouth_opening_input_checks_and_scale_invariance():
    lm = np.zeros((2, 68, 2))
    lm[:, 48], lm[:, 54] = [100, 150], [140, 150]
    lm[:, 62], lm[:, 66] = [120, 145], [120, 155]
    # normalised opening is unitless: a face 100x smaller (width 0.4 px) gives the same values
    np.testing.assert_allclose(mouth_opening(lm * 0.01), mouth_opening(lm), rtol=1e-12)
    # tensors that require grad (a model's output) are read without autograd
    np.testing.assert_allclose(mouth_opening(torch.tensor(lm, requires_grad=True)), mouth_opening(lm))
    for bad in (np.zeros((2, 68, 3)), np.zeros((68, 2)), np.zeros((2, 67, 2))):
        with pytest.raises(InputError, match=r"landmarks must be \[N, 68, 2\], got shape"):
            mouth_opening(bad)


def test_lip_sync_score_edges():
    rng = np.random.default_rng(4)
    signal = gaussian_filter1d(rng.standard_normal(120), 2.0)
    # tiny amplitudes still correlate (no absolute floor on the variance beyond 1e-12)
    tiny = lip_sync_score(1e-3 * signal, 1e-3 * signal, max_offset=2)
    assert tiny.corr_at_zero == pytest.approx(1.0) and tiny.best_offset == 0
    # a constant prediction: every offset correlates 0, the tie goes to offset 0
    flat = lip_sync_score(np.ones(50), signal[:50], max_offset=5)
    assert flat == (0.0, 0, 0.0)
    # ties between -k and +k go to the negative one (order |k|, then k)
    sym = np.array([0, 0, 0, 1, 0, 0, 0], float)
    assert lip_sync_score(sym, np.roll(sym, 1) + np.roll(sym, -1), max_offset=1).best_offset == -1
    # the offsets searched are exactly -max_offset .. +max_offset
    for lag in (5, -5):
        pred = signal[10 - lag:110 - lag]
        assert lip_sync_score(pred, signal[10:110], max_offset=5).best_offset == lag
    far = lip_sync_score(signal[4:104], signal[10:110], max_offset=5)  # true lag 6: out of range
    assert abs(far.best_offset) <= 5 and far.corr_at_best < 0.999
    # sizes: max_offset 0 and exactly max_offset + 3 frames are fine; less is a one-line error
    assert lip_sync_score(signal[:3], signal[:3], max_offset=0).best_offset == 0
    assert lip_sync_score(signal[:8], signal[:8], max_offset=5).corr_at_zero == pytest.approx(1.0)
    assert lip_sync_score(signal[:8], signal[:8]).best_offset == 0  # the default max_offset is 5
    with pytest.raises(InputError, match="at least max_offset \\+ 3 frames, got 7 frames"):
        lip_sync_score(signal[:7], signal[:7], max_offset=5)
    with pytest.raises(InputError, match="max_offset >= 0"):
        lip_sync_score(signal[:50], signal[:50], max_offset=-1)
    for pred, true in ((signal[:50], signal[:49]), (np.ones((5, 10)), np.ones((5, 10)))):
        with pytest.raises(InputError, match="must be 1-D of equal length"):
            lip_sync_score(pred, true)


def test_gaussian_window_is_centred_and_normalised():
    from talkinghead.metrics.image import gaussian_window

    taps = gaussian_window()  # 11 taps, sigma 1.5
    x = np.arange(11) - 5.0
    expected = np.exp(-(x**2) / (2 * 1.5**2))
    np.testing.assert_allclose(taps.numpy(), expected / expected.sum(), rtol=1e-6)
    assert taps.dtype == torch.float32 and gaussian_window(dtype=torch.float64).dtype == torch.float64
    assert gaussian_window(device="meta").device.type == "meta"  # made where the images are (CUDA in training)


def test_ssim_in_double_precision():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 24, 20, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(2, 3, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    double = ssim(a, b)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), ssim(a.float(), b.float()), atol=1e-5, rtol=0)


def test_hs_input_errors_name_the_sequence():
    from talkinghead.metrics.pose import pose_gaussian_summary

    good = angles(n=20)
    with pytest.raises(InputError, match=r"^angles must be Euler angles \[N, 3\] in radians with N >= 2 frames"):
        pose_gaussian_summary(good[:1])
    assert head_pose_similarity(good[:2], good[:2]) == pytest.approx(1.0)  # two frames are enough
    with pytest.raises(InputError, match=r"^angles_b\[1\] must be Euler angles .* got shape \(1, 3\)"):
        head_pose_similarity_matrix([good], [good, good[:1]])
    with pytest.raises(InputError, match=r"^angles_a\[0\] contains NaN or inf angles"):
        head_pose_similarity_matrix([np.full((5, 3), np.nan)], [good])
    for a, b in (([], [good]), ([good], [])):
        with pytest.raises(InputError, match="^head_pose_similarity_matrix needs at least one angle sequence on each side$"):
            head_pose_similarity_matrix(a, b)
    # tensors that require grad (a model's output) are read without autograd
    assert head_pose_similarity(torch.tensor(good, requires_grad=True), good) == pytest.approx(1.0)


def test_psnr_ssim_input_errors_and_integer_images():
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(InputError, match=r"^psnr/ssim expect torch tensors \[B, C, H, W\]$"):
        psnr(a, a.numpy())
    with pytest.raises(InputError, match=r"of the same shape, got \(1, 3, 16, 16\) and \(1, 3, 16, 15\)"):
        psnr(a, a[..., :15])
    with pytest.raises(InputError, match=r"at least 11 x 11 pixels for this metric, got \(10, 16\)"):
        ssim(a[:, :, :10], a[:, :, :10])
    assert torch.isfinite(ssim(a[:, :, :11, :11], a[:, :, :11, :11].flip(-1))).all()  # 11 x 11 is enough
    assert torch.isinf(psnr(a[:, :, :1, :1], a[:, :, :1, :1])).all()  # 1 x 1 images for PSNR
    # uint8 images with data_range 255 give the float figures (no wrap-around in the difference)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(psnr(x, y, data_range=255.0), psnr(x / 255.0, y / 255.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(ssim(x, y, data_range=255.0), ssim(x / 255.0, y / 255.0), atol=1e-5, rtol=0)


def test_ssim_constants_on_dark_low_contrast_images():
    """Where the means and variances are small, C1 = (0.01 L)^2 and C2 = (0.03 L)^2 decide the
    value: compare with scikit-image, and with the same images scaled to [0, 255]."""
    rng = np.random.default_rng(6)
    a = 0.02 + 0.005 * rng.standard_normal((1, 1, 20, 20))
    b = a + 0.004 * rng.standard_normal(a.shape)
    ours = float(ssim(torch.from_numpy(a), torch.from_numpy(b))[0])
    ref = structural_similarity(a[0, 0], b[0, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0)
    assert ours == pytest.approx(ref, abs=1e-9)
    scaled = float(ssim(torch.from_numpy(a * 255), torch.from_numpy(b * 255), data_range=255.0)[0])
    assert scaled == pytest.approx(ours, abs=1e-9)


class ScaledStandIn(StandInFaceModel):
    """The stand-in, with landmarks scaled by ``camera.scale`` (the camera must be passed on),
    recording the batch sizes it is called with."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def landmarks_2d(self, coeffs, camera):
        self.batches.append(coeffs.shape[0])
        return super().landmarks_2d(coeffs, camera) * camera.scale


def test_stage1_mouth_lmd_projects_with_the_given_camera_in_batches():
    from types import SimpleNamespace

    coeffs = torch.randn(7, 257, generator=torch.Generator().manual_seed(2))
    pred = coeffs[:, 80:144] + 0.3
    model = ScaledStandIn()
    one = stage1_mouth_lmd(model, pred, coeffs, camera=SimpleNamespace(scale=1.0), batch=3)
    assert model.batches == [3, 3, 1, 3, 3, 1]  # predicted, then true landmarks, 3 frames at a time
    two = stage1_mouth_lmd(model, pred, coeffs, camera=SimpleNamespace(scale=2.0), batch=3)
    assert one > 0 and two == pytest.approx(2 * one)
    with pytest.raises(InputError, match=r"pred_expression must be \[N, 64\] with N = 7 frames of true_coeffs, got \(7, 60\)"):
        stage1_mouth_lmd(model, coeffs[:, 80:140], coeffs, camera=SimpleNamespace(scale=1.0))


def test_landmark_distance_single_frame_tensors_and_errors():
    rng = np.random.default_rng(8)
    a, b = rng.normal(100, 10, (68, 2)), rng.normal(100, 10, (68, 2))
    expected = np.linalg.norm(a - b, axis=-1).mean()
    assert landmark_distance(a, b) == pytest.approx(expected)  # one frame [68, 2]
    assert landmark_distance(torch.tensor(a, requires_grad=True), b) == pytest.approx(expected)
    with pytest.raises(InputError, match=r"^pred_landmarks must be 2-D landmarks \[N, 68, 2\], got shape \(68,\)"):
        landmark_distance(a[:, 0], b[:, 0])
    with pytest.raises(InputError, match=r"^true_landmarks must be 2-D landmarks"):
        landmark_distance(a, b[:60])
    with pytest.raises(InputError, match=r"^pred_landmarks \(1, 68, 2\) and true_landmarks \(2, 68, 2\) must have the same"):
        landmark_distance(a[None], np.stack([b, b]))


# ----------------------------------------------------------------------------- sharpness, masked PSNR
def reference_sharpness(images: np.ndarray) -> list[float]:
    """Variance of OpenCV's Laplacian over the central half of the 0-255 luma of 224 x 224 images."""
    grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]) * 255
    return [cv2.Laplacian(g, cv2.CV_64F)[56:168, 56:168].var() for g in grey]


def test_sharpness_is_the_laplacian_variance_of_the_centre():
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(sharpness(images).numpy(), reference_sharpness(images.numpy()), rtol=1e-9)
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)
    assert torch.all(sharpness(blurred) < 0.2 * sharpness(images))
    np.testing.assert_allclose(sharpness(images.float()).numpy(), sharpness(images).numpy(), rtol=1e-4)  # float32 too


def test_sharpness_resizes_to_its_size_first():
    gen = torch.Generator().manual_seed(1)
    wide = torch.rand(2, 3, 224, 448, generator=gen, dtype=torch.float64)  # area: the mean of each pair of columns
    np.testing.assert_allclose(sharpness(wide).numpy(), reference_sharpness(wide.view(2, 3, 224, 224, 2).mean(-1).numpy()), rtol=1e-9)
    small = torch.rand(1, 3, 112, 112, generator=gen, dtype=torch.float64)  # bilinear, pixel centres aligned
    upscaled = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_LINEAR) for c in small[0].numpy()])[None]
    np.testing.assert_allclose(sharpness(small).numpy(), reference_sharpness(upscaled), rtol=1e-6)
    tall = torch.rand(1, 3, 448, 224, generator=gen, dtype=torch.float64)  # halved in height only
    np.testing.assert_allclose(sharpness(tall).numpy(), reference_sharpness(tall.view(1, 3, 224, 2, 224).mean(3).numpy()), rtol=1e-9)
    # area at a non-integer factor (336 -> 224 columns): output column i averages the input columns
    # floor(1.5 i) .. ceil(1.5 (i + 1)) - 1 (torch's "area", i.e. adaptive average pooling)
    wider = torch.rand(1, 3, 224, 336, generator=gen, dtype=torch.float64).numpy()
    pooled = np.stack([wider[..., int(np.floor(1.5 * i)):int(np.ceil(1.5 * (i + 1)))].mean(-1) for i in range(224)], -1)
    np.testing.assert_allclose(sharpness(torch.from_numpy(wider)).numpy(), reference_sharpness(pooled), rtol=1e-9)
    # another working size: the central size/2 square of a size x size image
    x = torch.rand(1, 3, 64, 64, generator=gen, dtype=torch.float64)
    grey = (0.299 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2]).numpy() * 255
    np.testing.assert_allclose(sharpness(x, size=64).numpy(), [cv2.Laplacian(grey, cv2.CV_64F)[16:48, 16:48].var()], rtol=1e-9)


def test_sharpness_input_errors():
    with pytest.raises(InputError, match=r"^sharpness expects RGB images \[B, 3, H, W\], got <class 'list'>$"):
        sharpness([[0.0]])
    for shape in ((3, 32, 32), (1, 1, 32, 32), (1, 4, 32, 32)):
        with pytest.raises(InputError, match=rf"got torch.Size\({list(shape)}\)$".replace("[", r"\[").replace("]", r"\]")):
            sharpness(torch.zeros(shape))


def test_masked_psnr():
    a, b = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    b[..., :4] = 0.1  # error only on the left half
    left = torch.zeros(1, 1, 8, 8)
    left[..., :4] = 1
    assert torch.allclose(masked_psnr(a, b, torch.ones(1, 1, 8, 8)), psnr(a, b))
    assert torch.allclose(masked_psnr(a, b, left), torch.tensor([20.0]), atol=1e-4)
    assert torch.isinf(masked_psnr(a, b, 1 - left)).all()  # no error under the mask


def test_masked_psnr_weights_each_pixel():
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    b = torch.rand(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 1, 6, 5, generator=gen)  # float32 weights for float64 images
    mask[1] = 0
    mask[1, 0, 2, 3] = 0.2  # one pixel at a fifth: less than one pixel's weight in all
    weight = np.repeat(mask.double().numpy(), 3, axis=1)
    mse = (weight * (a - b).numpy() ** 2).reshape(2, -1).sum(1) / weight.reshape(2, -1).sum(1)
    np.testing.assert_allclose(masked_psnr(a, b, mask).numpy(), 10 * np.log10(1 / mse), rtol=1e-6)
    np.testing.assert_allclose(masked_psnr(255 * a, 255 * b, mask, data_range=255.0).numpy(), 10 * np.log10(1 / mse), rtol=1e-6)
    assert masked_psnr(a.float(), b.float(), mask.double()).dtype == torch.float32  # the images' precision, not the mask's
    with pytest.raises(InputError, match="of the same shape"):
        masked_psnr(a, b[:1], mask)

