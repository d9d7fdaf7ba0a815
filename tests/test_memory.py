"""Identity memory (MemoPainter-style) and test-time identity interpolation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from talkinghead.errors import InputError, MissingWeightsError, TalkingHeadError
from talkinghead.models.memory import IdentityMemory, interpolate_identity


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def key_with_cosine(anchor: torch.Tensor, cosine: float, seed: int) -> torch.Tensor:
    """A unit vector whose cosine with the unit vector ``anchor`` is exactly ``cosine``."""
    other = torch.randn(anchor.shape[-1], generator=torch.Generator().manual_seed(seed))
    other = F.normalize(other - (other @ anchor) * anchor, dim=0)
    return cosine * anchor + (1 - cosine**2) ** 0.5 * other


@pytest.fixture
def memory():
    return IdentityMemory(slots=8, key_dim=16, value_dim=12, top_k=4, margin=0.3, threshold=0.98)


def test_read_returns_the_value_stored_under_the_key(memory):
    keys, values = unit(5, 16, seed=1), unit(5, 12, seed=2)
    memory.update(keys, values)
    assert memory.num_filled == 5
    torch.testing.assert_close(memory.read(keys), values)
    # A query near key 3 (not equal) still recalls value 3.
    noisy = F.normalize(keys[3] + 0.05 * unit(16, seed=3), dim=0)
    torch.testing.assert_close(memory.read(noisy[None]), values[3:4])


def test_softmax_read_of_a_dominant_key_is_its_value(memory):
    keys, values = unit(4, 16, seed=4), unit(4, 12, seed=5)
    memory.update(keys, values)
    mixed = memory.read(keys[:1], top1=False, temperature=1e-3)
    torch.testing.assert_close(mixed, values[:1], atol=1e-4, rtol=0)
    soft = memory.read(keys[:1], top1=False, temperature=10.0)  # nearly uniform mix of 4 values
    assert (soft - values[:1]).abs().max() > 0.05
    torch.testing.assert_close(soft.norm(dim=1), torch.ones(1))


def test_read_from_empty_memory_is_a_clear_error(memory):
    with pytest.raises(MissingWeightsError, match="memory is empty"):
        memory.read(unit(1, 16))


def test_update_merges_when_the_value_matches(memory):
    key, value = unit(1, 16, seed=6), unit(1, 12, seed=7)
    memory.update(key, value)
    query = F.normalize(key + 0.5 * unit(1, 16, seed=8), dim=1)
    same_person = F.normalize(value + 0.01 * unit(1, 12, seed=9), dim=1)  # cosine > 0.98
    memory.update(unit(1, 16, seed=10), unit(1, 12, seed=11))  # another person, ages slot 0
    assert memory.ages[0] == 1
    counts = memory.update(query, same_person)
    assert counts == {"merged": 1, "written": 0}
    assert memory.num_filled == 2
    expected = F.normalize(key + query, dim=1)[0]
    torch.testing.assert_close(memory.keys[0], expected)
    torch.testing.assert_close(memory.keys[0].norm(), torch.tensor(1.0))
    torch.testing.assert_close(memory.values[0], value[0])  # MemoPainter merges keys only
    assert memory.ages[0] == 0 and memory.ages[1] == 1


def test_update_writes_empty_slots_first_then_overwrites_the_oldest(memory):
    keys, values = unit(8, 16, seed=12), unit(8, 12, seed=13)
    for i in range(8):  # distinct persons -> one new slot each, in slot order
        assert memory.update(keys[i : i + 1], values[i : i + 1]) == {"merged": 0, "written": 1}
        assert memory.filled[: i + 1].all() and not memory.filled[i + 1 :].any()
    assert memory.ages.tolist() == [7, 6, 5, 4, 3, 2, 1, 0]
    # Refresh slot 0 by a merge; slot 1 becomes the oldest and is the one overwritten.
    memory.update(keys[:1], values[:1])
    new_key, new_value = unit(1, 16, seed=14), unit(1, 12, seed=15)
    assert memory.update(new_key, new_value) == {"merged": 0, "written": 1}
    torch.testing.assert_close(memory.keys[1], new_key[0])
    torch.testing.assert_close(memory.values[1], new_value[0])
    assert memory.ages[1] == 0 and memory.num_filled == 8


def test_update_within_one_batch_sees_earlier_items(memory):
    key, value = unit(1, 16, seed=16), unit(1, 12, seed=17)
    counts = memory.update(torch.cat([key, key]), torch.cat([value, value]))
    assert counts == {"merged": 1, "written": 1} and memory.num_filled == 1


def test_margin_loss_is_the_hinge_on_positive_minus_negative(memory):
    query = unit(1, 16, seed=18)
    me, other = unit(1, 12, seed=19), unit(1, 12, seed=20)
    # positive key at cosine 0.9, negative at 0.8: gap 0.1 < margin 0.3 -> loss 0.2
    memory.update(key_with_cosine(query[0], 0.9, seed=21)[None], me)
    memory.update(key_with_cosine(query[0], 0.8, seed=22)[None], other)
    torch.testing.assert_close(memory.margin_loss(query, me), torch.tensor(0.2), atol=1e-5, rtol=0)
    # For the other person the roles swap: sim_neg - sim_pos = 0.1 -> loss 0.4
    torch.testing.assert_close(memory.margin_loss(query, other), torch.tensor(0.4), atol=1e-5, rtol=0)


def test_margin_loss_is_zero_when_the_positive_wins_by_more_than_the_margin(memory):
    query = unit(1, 16, seed=23)
    me, other = unit(1, 12, seed=24), unit(1, 12, seed=25)
    memory.update(key_with_cosine(query[0], 0.95, seed=26)[None], me)
    memory.update(key_with_cosine(query[0], 0.5, seed=27)[None], other)
    assert memory.margin_loss(query, me).item() == 0.0


def test_margin_loss_skips_items_without_a_positive_and_averages_over_the_batch(memory):
    query = unit(1, 16, seed=28)
    me, other, stranger = unit(3, 12, seed=29)
    memory.update(key_with_cosine(query[0], 0.9, seed=30)[None], me[None])
    memory.update(key_with_cosine(query[0], 0.8, seed=31)[None], other[None])
    batch = torch.cat([query, query])
    loss = memory.margin_loss(batch, torch.stack([me, stranger]))  # stranger: no positive -> 0
    torch.testing.assert_close(loss, torch.tensor(0.1), atol=1e-5, rtol=0)


def test_margin_loss_gradient_reaches_the_query_only(memory):
    memory.update(unit(4, 16, seed=32), unit(4, 12, seed=33))
    # A query pointing away from the positive key (slot 0): the hinge is active.
    query = F.normalize(-memory.keys[:1] + 0.1 * unit(1, 16, seed=34), dim=1).requires_grad_(True)
    loss = memory.margin_loss(query, memory.values[:1].clone())
    loss.backward()
    assert loss.item() > 0 and query.grad is not None and query.grad.abs().sum() > 0
    assert not any(b.requires_grad for b in memory.buffers())
    empty = IdentityMemory(slots=4, key_dim=16, value_dim=12)
    assert empty.margin_loss(query, unit(1, 12)).item() == 0.0


def test_margin_training_pulls_the_query_to_its_identity():
    memory = IdentityMemory(slots=16, key_dim=8, value_dim=12, top_k=16)
    memory.update(unit(6, 8, seed=35), unit(6, 12, seed=36))
    target = memory.values[2:3].clone()
    raw = torch.randn(1, 8, generator=torch.Generator().manual_seed(37), requires_grad=True)
    optimiser = torch.optim.SGD([raw], lr=0.5)
    first = memory.margin_loss(raw, target).item()
    for _ in range(60):
        optimiser.zero_grad()
        memory.margin_loss(raw, target).backward()
        optimiser.step()
    assert memory.margin_loss(raw, target).item() < first
    torch.testing.assert_close(memory.read(raw.detach()), target)


def test_state_survives_state_dict_and_safetensors_round_trips(memory, tmp_path):
    from safetensors.torch import load_file, save_file

    memory.update(unit(5, 16, seed=38), unit(5, 12, seed=39))
    memory.update(unit(2, 16, seed=40), unit(2, 12, seed=41))
    for state in (memory.state_dict(), None):
        if state is None:
            save_file(memory.state_dict(), tmp_path / "memory.safetensors")
            state = load_file(tmp_path / "memory.safetensors")
        restored = IdentityMemory(slots=8, key_dim=16, value_dim=12, top_k=4)
        restored.load_state_dict(state)
        for name in ("keys", "values", "ages", "filled"):
            assert torch.equal(getattr(restored, name), getattr(memory, name)), name
        query = unit(3, 16, seed=42)
        torch.testing.assert_close(restored.read(query), memory.read(query))


def test_bad_shapes_raise_input_errors(memory):
    with pytest.raises(InputError, match="key_dim"):
        memory.update(unit(1, 15), unit(1, 12))
    with pytest.raises(TalkingHeadError, match="identity_dim"):
        memory.margin_loss(unit(2, 16), unit(1, 12))


def test_interpolate_identity_keeps_every_25th_and_is_linear_between():
    n, dim = 60, 6
    features = torch.randn(n, dim, generator=torch.Generator().manual_seed(43))
    out = interpolate_identity(features, every=25)
    assert out.shape == (n, dim)
    for keyframe in (0, 25, 50, n - 1):
        torch.testing.assert_close(out[keyframe], features[keyframe])
    for t in (1, 12, 24, 37):
        left, right = (t // 25) * 25, (t // 25) * 25 + 25
        w = (t - left) / 25
        torch.testing.assert_close(out[t], (1 - w) * features[left] + w * features[right])
    w = (55 - 50) / (59 - 50)  # the tail runs from frame 50 to the last frame 59
    torch.testing.assert_close(out[55], (1 - w) * features[50] + w * features[59])
    # Constant input stays constant; short inputs are returned unchanged.
    torch.testing.assert_close(interpolate_identity(features[:1].repeat(30, 1)), features[:1].repeat(30, 1))
    torch.testing.assert_close(interpolate_identity(features[:1]), features[:1])
    with pytest.raises(InputError):
        interpolate_identity(features, every=0)
