"""Stage-2 networks: AdaIN U-Net generator, PatchGAN, memory-augmented generator, losses, and
the identity / key feature providers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from talkinghead.errors import ConfigError, InputError, MissingWeightsError, TalkingHeadError
from talkinghead.face.coeffs import COEFF_DIM, SLICES
from talkinghead.models.features import (
    ArcFaceFeature,
    CoeffIdentityFeature,
    IResNet,
    ResNet18Encoder,
    SmallImageEncoder,
    make_identity_feature,
    make_key_encoder,
)
from talkinghead.models.refiner import (
    AdaIN,
    MemoryAugmentedGenerator,
    PatchDiscriminator,
    RefinerOutput,
    UNetAdaINGenerator,
    discriminator_loss,
    generator_loss,
    mask_total_variation,
)


def images(batch, channels, size, seed=0):
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def identities(batch, seed=0, dim=512):
    return F.normalize(torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


# ---------------------------------------------------------------------------------------------- generator
def test_adain_normalises_then_applies_style_scale_and_shift():
    torch.manual_seed(0)
    norm = AdaIN(4, style_dim=3)
    x = torch.randn(2, 4, 5, 5) * 3 + 7
    style = torch.randn(2, 3)
    with torch.no_grad():
        norm.affine.weight.zero_()
        norm.affine.bias.copy_(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 2.0]))  # gamma ch0 = 1, beta ch3 = 2
    y = norm(x, style)
    mean, std = y.mean(dim=(2, 3)), y.std(dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.tensor([[0, 0, 0, 2.0]] * 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.tensor([[2.0, 1, 1, 1]] * 2), atol=1e-3, rtol=0)


@pytest.mark.parametrize("size", [64, 128])
def test_generator_shapes_and_ranges(size):
    torch.manual_seed(0)
    generator = UNetAdaINGenerator(image_size=size, ngf=8)
    assert len(generator.downs) == len(generator.ups) == int(math.log2(size))
    out = generator(images(2, 9, size), identities(2))
    assert isinstance(out, RefinerOutput)
    assert out.image.shape == out.colour.shape == (2, 3, size, size)
    assert out.mask.shape == (2, 1, size, size)
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert out.mask.min() >= 0 and out.mask.max() <= 1
    torch.testing.assert_close(out.image, out.mask * images(2, 9, size)[:, 6:9] + (1 - out.mask) * out.colour)


def test_generator_channel_plan_matches_pix2pix_for_256():
    generator = UNetAdaINGenerator(image_size=256, ngf=64)
    assert [d.conv.out_channels for d in generator.downs] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert [d.norm is not None for d in generator.downs] == [False] + [True] * 6 + [False]
    assert [u.conv.out_channels for u in generator.ups] == [512, 512, 512, 512, 256, 128, 64, 64]
    dropout = [isinstance(u.dropout, torch.nn.Dropout) and u.dropout.p == 0.5 for u in generator.ups]
    assert dropout == [True] * 3 + [False] * 5
    assert generator.colour_conv.kernel_size == generator.attention_conv.kernel_size == (7, 7)


@pytest.mark.slow
def test_generator_256_forward():
    out = UNetAdaINGenerator(image_size=256)(images(1, 9, 256), identities(1))
    assert out.image.shape == (1, 3, 256, 256) and out.mask.shape == (1, 1, 256, 256)


def test_output_is_frame_t_where_the_mask_is_forced_to_one():
    generator = UNetAdaINGenerator(image_size=32, ngf=8)
    with torch.no_grad():
        generator.attention_conv.bias.fill_(50.0)
    inputs = images(2, 9, 32, seed=1)
    out = generator(inputs, identities(2))
    assert torch.equal(out.mask, torch.ones_like(out.mask))
    assert torch.equal(out.image, inputs[:, 6:9])


def test_identity_feature_changes_the_output():
    torch.manual_seed(0)
    generator = UNetAdaINGenerator(image_size=32, ngf=8).eval()
    inputs = images(1, 9, 32, seed=2)
    a = generator(inputs, identities(1, seed=3))
    b = generator(inputs, identities(1, seed=4))
    again = generator(inputs, identities(1, seed=3))
    assert torch.equal(a.image, again.image)
    assert (a.colour - b.colour).abs().mean() > 1e-3


def test_generator_rejects_wrong_shapes_with_input_errors():
    generator = UNetAdaINGenerator(image_size=32, ngf=8)
    with pytest.raises(InputError, match="image_size"):
        generator(images(1, 9, 64), identities(1))
    with pytest.raises(InputError, match="identity"):
        generator(images(1, 9, 32), identities(1, dim=128))
    with pytest.raises(ConfigError, match="power of two"):
        UNetAdaINGenerator(image_size=100)


def test_a_few_generator_steps_lower_the_l1():
    torch.manual_seed(0)
    generator = UNetAdaINGenerator(image_size=32, ngf=8, dropout=0.0)
    discriminator = PatchDiscriminator(ndf=8).eval()
    inputs, target, identity = images(1, 9, 32, seed=5), images(1, 3, 32, seed=6), identities(1)
    optimiser = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))

    def l1() -> float:
        with torch.no_grad():
            return F.l1_loss(generator(inputs, identity).image, target).item()

    before = l1()
    for _ in range(10):
        out = generator(inputs, identity)
        logits = discriminator(torch.cat([inputs, out.image], dim=1))
        losses = generator_loss(logits, out.image, target, out.mask)
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
    assert l1() < 0.85 * before


# ---------------------------------------------------------------------------------------------- discriminator
def test_patch_discriminator_output_shape():
    discriminator = PatchDiscriminator(in_channels=12, ndf=8)
    assert discriminator(images(2, 12, 256)).shape == (2, 1, 30, 30)
    assert discriminator(images(1, 12, 64)).shape == (1, 1, 6, 6)


def test_patch_discriminator_sees_a_70_pixel_window():
    discriminator = PatchDiscriminator(ndf=4, norm="batch").eval()
    x = images(1, 12, 128).requires_grad_(True)
    logits = discriminator(x)  # [1, 1, 14, 14]
    logits[0, 0, 7, 7].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 <= 70 and cols.max() - cols.min() + 1 <= 70
    assert rows.max() - rows.min() + 1 >= 60  # wide field, not a local filter
    with pytest.raises(ConfigError):
        PatchDiscriminator(norm="group")


# ---------------------------------------------------------------------------------------------- losses
def test_losses_at_chance_and_their_weights():
    zeros = torch.zeros(2, 1, 6, 6)
    output, target = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.5)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 4:] = 1.0  # one vertical edge: horizontal TV = 1/7, vertical 0
    g = generator_loss(zeros, output, target, mask, lambda_l1=100, lambda_mask=0.1, lambda_tv=1e-5)
    torch.testing.assert_close(g["gan"], torch.tensor(math.log(2)))
    torch.testing.assert_close(g["l1"], torch.tensor(50.0))
    torch.testing.assert_close(g["mask"], torch.tensor(0.05))
    torch.testing.assert_close(mask_total_variation(mask), torch.tensor(1 / 7))
    torch.testing.assert_close(g["tv"], torch.tensor(1e-5 / 7))
    torch.testing.assert_close(g["total"], g["gan"] + g["l1"] + g["mask"] + g["tv"])
    d = discriminator_loss(zeros, zeros)
    torch.testing.assert_close(d["total"], torch.tensor(math.log(2)))
    confident = discriminator_loss(torch.full_like(zeros, 10.0), torch.full_like(zeros, -10.0))
    assert confident["total"] < 1e-3 and confident["real"] < d["real"] and confident["fake"] < d["fake"]


# ---------------------------------------------------------------------------------------------- memory + G
def tiny_memory_generator(**overrides) -> MemoryAugmentedGenerator:
    options = dict(image_size=32, ngf=8, style_dim=32, key_encoder=SmallImageEncoder(out_dim=16, width=8),
                   key_dim=16, memory_slots=32, top_k=8)
    options.update(overrides)
    return MemoryAugmentedGenerator(**options)


def test_query_keys_are_unit_norm_and_depend_on_frame_t_only():
    torch.manual_seed(0)
    model = tiny_memory_generator()
    inputs = images(3, 9, 32, seed=7)
    keys = model.query(inputs)
    assert keys.shape == (3, 16)
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(3))
    changed_past = inputs.clone()
    changed_past[:, :6] = images(3, 6, 32, seed=8)
    torch.testing.assert_close(model.query(changed_past), keys)


def test_forward_without_identity_reads_it_from_memory():
    torch.manual_seed(0)
    model = tiny_memory_generator().eval()
    inputs = images(2, 9, 32, seed=9)
    identity = identities(2, seed=10)
    with pytest.raises(MissingWeightsError):
        model(inputs)  # nothing stored yet
    assert model.update_memory(inputs, identity) == {"merged": 0, "written": 2}
    torch.testing.assert_close(model.read_identity(inputs), identity)
    recalled, forced = model(inputs), model(inputs, identity)
    torch.testing.assert_close(recalled.image, forced.image)


def test_memory_loss_trains_the_key_network_only():
    torch.manual_seed(0)
    model = tiny_memory_generator()
    inputs = images(4, 9, 32, seed=11)
    people = identities(4, seed=12)
    model.update_memory(inputs, people)
    loss = model.memory_loss(inputs[:1], people[1:2])  # wrong person: its own key is a strong negative
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in model.key_parameters())
    assert all(p.grad is None for p in model.generator_parameters())
    key_ids = {id(p) for p in model.key_parameters()}
    assert key_ids.isdisjoint(id(p) for p in model.generator_parameters())


def test_memory_generator_state_dict_round_trip_keeps_memory():
    torch.manual_seed(0)
    model = tiny_memory_generator().eval()
    inputs, identity = images(2, 9, 32, seed=13), identities(2, seed=14)
    model.update_memory(inputs, identity)
    restored = tiny_memory_generator().eval()
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored(inputs).image, model(inputs).image)


# ---------------------------------------------------------------------------------------------- features
def test_coeff_identity_feature_is_deterministic_and_separates_people():
    feature = CoeffIdentityFeature()
    assert feature.input_kind == "coeffs" and not list(feature.parameters())
    coeffs = torch.randn(16, COEFF_DIM, generator=torch.Generator().manual_seed(15))
    out = feature(coeffs)
    assert out.shape == (16, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(16))
    torch.testing.assert_close(CoeffIdentityFeature()(coeffs), out)  # same seed -> same projection
    same_person = coeffs.clone()
    same_person[:, SLICES["expression"]] = torch.randn(16, 64)  # expression/pose do not matter
    same_person[:, SLICES["angles"]] = 0.3
    torch.testing.assert_close(feature(same_person), out)
    both = torch.cat([coeffs[:, SLICES["identity"]], coeffs[:, SLICES["texture"]]], dim=1)
    torch.testing.assert_close(feature(both), out)
    cosine = out @ out.t()
    off_diagonal = cosine[~torch.eye(16, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.5  # far below the 0.98 same-identity threshold
    # Isometry: cosines of features equal cosines of the 160-d coefficient vectors.
    torch.testing.assert_close(cosine, F.normalize(both, dim=1) @ F.normalize(both, dim=1).t(), atol=1e-5, rtol=0)
    with pytest.raises(InputError):
        feature(torch.randn(2, 100))


def test_missing_arcface_weights_raise_one_line_error(tmp_path):
    path = tmp_path / "ms1mv3_arcface_r50_fp16" / "backbone.pth"
    with pytest.raises(MissingWeightsError) as info:
        ArcFaceFeature(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "arcface_torch" in message and "refiner.model.identity_feature.weights" in message
    with pytest.raises(MissingWeightsError):
        make_identity_feature({"_target_": "talkinghead.models.features.ArcFaceFeature", "weights": str(path)})
    with pytest.raises(ConfigError, match="weights"):
        make_identity_feature({"_target_": "talkinghead.models.features.ArcFaceFeature"})


def test_iresnet50_state_dict_layout_matches_arcface_torch():
    state = IResNet("r50").state_dict()
    blocks = {name.split(".")[0]: set() for name in state if name.startswith("layer")}
    for name in state:
        if name.startswith("layer"):
            blocks[name.split(".")[0]].add(int(name.split(".")[1]))
    assert {k: len(v) for k, v in blocks.items()} == {"layer1": 3, "layer2": 4, "layer3": 14, "layer4": 3}
    for name in ("conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.downsample.0.weight",
                 "layer3.13.bn3.running_mean", "layer2.0.prelu.weight", "bn2.weight", "features.running_var"):
        assert name in state, name
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["conv1.weight"].shape == (64, 3, 3, 3)


def test_arcface_feature_loads_a_backbone_file(tmp_path):
    torch.manual_seed(0)
    backbone = IResNet("r18")
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in backbone.state_dict().items()}, path)  # DataParallel-style keys
    feature = make_identity_feature({"_target_": "talkinghead.models.features.ArcFaceFeature", "weights": str(path), "arch": "r18"})
    feature.train()
    assert not feature.backbone.training and not any(p.requires_grad for p in feature.parameters())
    faces = images(2, 3, 64, seed=16)
    out = feature(faces)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    expected = F.normalize(backbone.eval()(F.interpolate(faces, size=112, mode="bilinear", antialias=True)), dim=1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(MissingWeightsError, match="arch"):
        ArcFaceFeature(path, arch="r34")


def test_key_encoders_and_factories():
    encoder = make_key_encoder({"_target_": "talkinghead.models.features.SmallImageEncoder", "out_dim": 24, "width": 4})
    assert isinstance(encoder, SmallImageEncoder) and encoder(images(2, 3, 48)).shape == (2, 24)
    assert isinstance(make_key_encoder(None), SmallImageEncoder)
    assert isinstance(make_identity_feature(None), CoeffIdentityFeature)
    with pytest.raises(ConfigError, match="refiner.model.key_encoder._target_"):
        make_key_encoder({"_target_": "talkinghead.models.features.VGGEncoder"})
    with pytest.raises(ConfigError, match="refiner.model.identity_feature.kind"):
        make_identity_feature({"kind": "facenet"})
    # models saved before the configs named _target_ record {"kind": ...}: read as the same modules
    legacy = make_key_encoder({"kind": "small", "weights": None, "out_dim": 24, "width": 4})
    assert isinstance(legacy, SmallImageEncoder) and legacy.out_dim == 24
    assert isinstance(make_identity_feature({"kind": "coeffs", "weights": None, "out_dim": 256}), CoeffIdentityFeature)


def test_resnet18_encoder_explains_what_is_missing(tmp_path):
    path = tmp_path / "resnet18-f37072fd.pth"
    with pytest.raises(TalkingHeadError) as info:
        ResNet18Encoder(path)
    message = str(info.value)
    assert "\n" not in message
    try:
        import torchvision  # noqa: F401
    except Exception:
        assert isinstance(info.value, ConfigError) and "torchvision" in message
    else:
        assert isinstance(info.value, MissingWeightsError) and str(path) in message
