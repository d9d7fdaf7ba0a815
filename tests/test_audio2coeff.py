"""Stage-1 network (ExpressionPoseLSTM), its loss and optimiser."""

import pytest
import torch

from talkinghead.errors import InputError
from talkinghead.face.coeffs import stage1_target
from talkinghead.models import ExpressionPoseLSTM, make_optimizer, predict_sequence, stage1_loss
from talkinghead.models.audio2coeff import encoder_output_shape


def tiny_model(**kw):
    args = dict(width=0.25, fc_dim=64, embed_dim=32, hidden=32, layers=3)
    args.update(kw)
    return ExpressionPoseLSTM(**args)


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    return ExpressionPoseLSTM()


def test_full_size_flatten_is_12288_and_output_shape(full_model):
    assert encoder_output_shape((28, 12)) == (12, 2)
    assert full_model.flat_dim == 12_288
    assert full_model.audio_fc[0].in_features == 12_288
    windows = torch.randn(2, 3, 28, 12)
    full_model.eval()
    with torch.no_grad():
        cnn = full_model.audio_encoder(windows.reshape(6, 1, 28, 12))
        pred, (h, c) = full_model(windows)
    assert cnn.shape == (6, 512, 12, 2) and cnn[0].numel() == 12_288
    assert pred.shape == (2, 3, 70)
    assert h.shape == c.shape == (3, 2, 256)


def test_init_statistics(full_model):
    fc = full_model.audio_fc[0].weight  # 12288 x 2048 weights: tight statistics
    assert abs(fc.mean().item()) < 1e-3
    assert fc.std().item() == pytest.approx(0.02, rel=0.02)
    conv = full_model.audio_encoder[4][0].weight  # 256 -> 512 conv
    assert conv.std().item() == pytest.approx(0.02, rel=0.05)
    bn_weights = torch.cat([m.weight for m in full_model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert bn_weights.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn_weights.std().item() == pytest.approx(0.02, rel=0.15)
    for m in full_model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.bias == 0)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
            assert torch.all(m.bias == 0)
    assert all(m.bias is None for m in full_model.modules() if isinstance(m, torch.nn.Conv2d))


def test_width_scales_channels():
    model = tiny_model()
    assert model.audio_encoder[5][0].out_channels == 128
    assert model.flat_dim == 128 * 12 * 2


def test_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = tiny_model()
    windows = torch.randn(4, 8, 28, 12)
    target = stage1_target(0.5 + 0.1 * torch.randn(4, 8, 257))  # a learnable offset + noise
    optimizer = make_optimizer(model, lr=1e-3)
    assert optimizer.defaults["betas"] == (0.5, 0.999)
    first = None
    for _ in range(25):
        loss = stage1_loss(model(windows)[0], target)["total"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = stage1_loss(model(windows)[0], target)["total"].item()
    assert final < 0.5 * first


def test_chunked_with_carried_state_equals_whole_sequence():
    torch.manual_seed(1)
    model = tiny_model().eval()
    windows = torch.randn(2, 13, 28, 12)
    with torch.no_grad():
        whole, _ = model(windows)
        part1, state = model(windows[:, :5])
        part2, _ = model(windows[:, 5:], state)
        fresh, _ = model(windows[:, 5:])
    torch.testing.assert_close(torch.cat([part1, part2], 1), whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fresh, whole[:, 5:], atol=1e-4)  # the carried state matters
    model.train()
    seq = predict_sequence(model, windows[0], chunk=4)
    assert model.training  # mode restored
    torch.testing.assert_close(seq, whole[0], atol=1e-5, rtol=1e-5)


def test_bad_window_shape_raises_input_error():
    with pytest.raises(InputError, match="windows"):
        tiny_model()(torch.randn(2, 4, 12, 28))


def test_loss_terms_on_hand_made_tensors():
    b, t = 3, 6
    target = torch.randn(b, t, 70)
    # Constant prediction in time: zero smoothness, whatever the target.
    constant = torch.randn(1, 1, 70).expand(b, t, 70).clone()
    terms = stage1_loss(constant, target)
    assert terms["pose_smooth"].item() == 0 and terms["expression_smooth"].item() == 0
    # Perfect prediction: zero data terms; smoothness only from the prediction's own motion.
    terms = stage1_loss(target.clone(), target)
    assert terms["expression"].item() == 0 and terms["pose"].item() == 0
    assert terms["pose_smooth"].item() > 0
    # Linear ramps with slopes s_pose / s_exp per frame and a constant target.
    s_pose, s_exp = 0.1, 0.5
    time = torch.arange(t, dtype=torch.float32).view(1, t, 1)
    pred = torch.cat([s_exp * time.expand(b, t, 64), s_pose * time.expand(b, t, 6)], -1)
    flat = torch.zeros(b, t, 70)
    terms = stage1_loss(pred, flat)
    assert terms["pose_smooth"].item() == pytest.approx((t - 1) * 6 * s_pose**2, rel=1e-5)
    assert terms["expression_smooth"].item() == pytest.approx((t - 1) * 64 * s_exp**2, rel=1e-5)
    assert terms["expression"].item() == pytest.approx((s_exp * time).square().mean().item(), rel=1e-5)
    assert terms["pose"].item() == pytest.approx((s_pose * time).square().mean().item(), rel=1e-5)
    expected = (
        terms["expression"] + 0.2 * terms["pose"] + 0.01 * terms["pose_smooth"] + 1e-4 * terms["expression_smooth"]
    )
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    # Smoothness is on the prediction alone: the same target motion does not cancel it.
    assert stage1_loss(pred, pred.clone())["pose_smooth"].item() == pytest.approx(terms["pose_smooth"].item())


def test_loss_shape_mismatch_raises():
    with pytest.raises(InputError):
        stage1_loss(torch.zeros(2, 4, 70), torch.zeros(2, 5, 70))
