"""BadNets trigger and poisoning, checked against the definition x' = (1-m) x + m p."""
import pytest
import torch

from benchmark.scenario import AttackBudget, Recipe

from .conftest import DEVICES, random_images


def budget(rate=0.1, target=0):
    return AttackBudget(poison_rate=rate, target=target, inject=Recipe(epochs=1, lr=0.01))


@pytest.mark.parametrize("device", DEVICES)
def test_white_square_bottom_right_32px(registry, device):
    a = registry.create("attack", "badnets")
    x = torch.rand(5, 3, 32, 32, device=device)
    out = a.apply(x)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[29:32, 29:32] = True  # rows/cols H-3..H-1
    assert out.device == x.device
    assert torch.all(out[..., mask.to(device)] == 1.0)
    assert torch.equal(out[..., ~mask.to(device)], x[..., ~mask.to(device)])
    assert not torch.equal(out, x) and torch.equal(x, x.clone())  # input untouched


def test_patch_scales_with_resolution_and_margin(registry):
    a = registry.create("attack", "badnets", {"size": 3, "margin": 1})
    x = torch.zeros(2, 1, 64, 64)
    out = a.apply(x)
    # at 64 px: side round(3 * 2) = 6, margin round(1 * 2) = 2 -> rows/cols 56..61
    expected = torch.zeros(64, 64)
    expected[56:62, 56:62] = 1
    assert torch.equal(out[0, 0], expected) and torch.equal(out[1, 0], expected)
    # Matsuo & Takemoto: a 5x5 square at rows/cols 219..223 of 224 px
    m = registry.create("attack", "badnets", {"size": 5, "reference_resolution": 224})
    big = m.apply(torch.zeros(1, 3, 224, 224))
    assert big.sum() == 3 * 25 and torch.all(big[0, :, 219:224, 219:224] == 1)


def test_checkerboard_values(registry):
    a = registry.create("attack", "badnets", {"pattern": "checkerboard"})
    x = torch.full((1, 3, 32, 32), 0.5)
    out = a.apply(x)
    for i in range(3):
        for j in range(3):
            want = 1.0 if (i + j) % 2 == 0 else 0.0
            assert torch.all(out[0, :, 29 + i, 29 + j] == want)
    assert torch.all(out[0, :, :29, :] == 0.5) and torch.all(out[0, :, :, :29] == 0.5)


def test_bad_parameters_are_rejected(registry):
    from benchmark.errors import BenchError
    with pytest.raises(BenchError, match="parameter 'pattern' must be one of 'white', 'checkerboard'"):
        registry.create("attack", "badnets", {"pattern": "flower"})
    with pytest.raises(BenchError, match="has no parameter 'colour'"):
        registry.create("attack", "badnets", {"colour": "red"})
    with pytest.raises(BenchError, match="must be int"):
        registry.create("attack", "badnets", {"size": "big"})


def test_all_to_one_poisoning_respects_budget(registry):
    data = random_images(n=200, classes=4)
    a = registry.create("attack", "badnets")
    p = a.poison(data, budget(0.1, target=2), torch.Generator().manual_seed(0))
    assert len(p.indices) == 20 == len(set(p.indices.tolist()))
    assert torch.all(data.labels[p.indices] != 2)          # only samples whose label changes
    assert torch.all(p.labels == 2)
    trig = (a.apply(data.images[p.indices].float() / 255) * 255).round().to(torch.uint8)
    assert torch.equal(p.images, trig)
    poisoned = p.applied_to(data)
    changed = torch.nonzero((poisoned.labels != data.labels)).flatten()
    assert torch.equal(changed, p.indices)
    untouched = torch.ones(len(data), dtype=torch.bool)
    untouched[p.indices] = False
    assert torch.equal(poisoned.images[untouched], data.images[untouched])


def test_all_to_all_poisoning(registry):
    data = random_images(n=100, classes=5)
    a = registry.create("attack", "badnets", {"mode": "all-to-all"})
    p = a.poison(data, budget(0.3), torch.Generator().manual_seed(1))
    assert len(p.indices) == 30
    assert torch.equal(p.labels, (data.labels[p.indices] + 1) % 5)
    assert torch.equal(a.targets(torch.tensor([0, 4, 2]), 5, target=0), torch.tensor([1, 0, 3]))


def test_poisoning_is_seeded(registry):
    data = random_images(n=100)
    a = registry.create("attack", "badnets")
    i1 = a.poison(data, budget(), torch.Generator().manual_seed(3)).indices
    i2 = a.poison(data, budget(), torch.Generator().manual_seed(3)).indices
    i3 = a.poison(data, budget(), torch.Generator().manual_seed(4)).indices
    assert torch.equal(i1, i2) and not torch.equal(i1, i3)
