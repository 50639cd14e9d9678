"""The attack zoo against its definitions: expected values are computed here from each paper's formula."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark import models
from benchmark.plugins import Context
from benchmark.scenario import AttackBudget, Recipe

from .conftest import DEVICES, REPO, random_images


def budget(rate=0.1, target=0, epochs=1):
    return AttackBudget(poison_rate=rate, target=target, inject=Recipe(epochs=epochs, lr=0.01, batch_size=16))


def fixed_input(c=3, size=32):
    g = torch.Generator().manual_seed(123)
    return torch.rand(2, c, size, size, generator=g)


# ---------------------------------------------------------------- blended
def test_blended_noise_key(registry):
    a = registry.create("attack", "blended", {"key_seed": 5})
    x = fixed_input()
    k = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a.apply(x), 0.8 * x + 0.2 * k, atol=1e-7)


def test_blended_image_key_at_native_size(registry):
    from PIL import Image
    a = registry.create("attack", "blended", {"key": "image", "alpha": 0.3})
    k = np.asarray(Image.open(REPO / "submissions/attacks/blended/key.png").convert("RGB"), dtype=np.float64) / 255
    x = fixed_input(size=64)
    want = 0.7 * x + 0.3 * torch.from_numpy(k).permute(2, 0, 1).float()
    assert torch.allclose(a.apply(x), want, atol=1e-6)
    grey = a.apply(torch.zeros(1, 1, 64, 64))  # one channel: luma of the key
    luma = torch.from_numpy(k @ np.array([0.299, 0.587, 0.114])).float()
    assert torch.allclose(grey[0, 0], 0.3 * luma, atol=1e-6)


# ---------------------------------------------------------------- sig
def test_sig_signal(registry):
    a = registry.create("attack", "sig", {"amplitude": 30.0, "frequency": 6.0})
    x = torch.full((1, 3, 8, 16), 0.5)
    x[0, 1] = 1.0  # this channel saturates where v > 0
    out = a.apply(x)
    for i in range(8):
        for j in range(16):
            v = 30 / 255 * math.sin(2 * math.pi * j * 6 / 16)
            assert out[0, 0, i, j].item() == pytest.approx(0.5 + v, abs=1e-6)
            assert out[0, 1, i, j].item() == pytest.approx(min(1.0, 1.0 + v), abs=1e-6)


def test_sig_is_clean_label(registry):
    data = random_images(n=200, classes=4)  # 50 images per class
    a = registry.create("attack", "sig")
    p = a.poison(data, budget(0.1, target=1), torch.Generator().manual_seed(0))
    assert (len(p.indices) == 20 and torch.all(data.labels[p.indices] == 1)
            and torch.equal(p.labels, data.labels[p.indices]))
    assert a.info["effective_poison_rate"] == 0.1
    p = registry.create("attack", "sig", {"target_share": 0.8}).poison(data, budget(0.1, 1), torch.Generator())
    assert len(p.indices) == 40
    with pytest.raises(ValueError, match="class 1 has 50"):
        a.poison(data, budget(0.3, target=1), torch.Generator())


# ---------------------------------------------------------------- wanet
def reference_wanet_grid(h, k, s, seed):
    """The grid as the WaNet reference code builds it (meshgrid 'ij', stack (y, x))."""
    ins = torch.rand(1, 2, k, k, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    ins = ins / torch.mean(torch.abs(ins))
    noise_grid = F.interpolate(ins, size=h, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    array1d = torch.linspace(-1, 1, steps=h)
    x, y = torch.meshgrid(array1d, array1d, indexing="ij")
    identity_grid = torch.stack((y, x), 2)[None, ...]
    return torch.clamp(identity_grid + s * noise_grid / h, -1, 1)


def test_wanet_warp_matches_reference_grid(registry):
    a = registry.create("attack", "wanet", {"field_seed": 3})
    x = fixed_input()
    want = F.grid_sample(x, reference_wanet_grid(32, 4, 0.5, 3).repeat(2, 1, 1, 1), align_corners=True)
    assert torch.allclose(a.apply(x), want, atol=1e-6)
    assert (a.apply(x) - x).abs().mean() < 0.1  # a subtle warp, not a new image


def test_wanet_identity_grid_is_identity(registry):
    a = registry.create("attack", "wanet", {"s": 1e-9})
    x = fixed_input()
    assert torch.allclose(a.apply(x), x, atol=1e-5)


def test_wanet_noise_mode_keeps_true_labels(registry):
    data = random_images(n=200, classes=4)
    a = registry.create("attack", "wanet")
    p = a.poison(data, budget(0.1, target=0), torch.Generator().manual_seed(0))
    assert len(p.indices) == 20 + 40 == len(set(p.indices.tolist()))
    relabelled = p.labels != data.labels[p.indices]
    assert int(relabelled.sum()) == 20 and torch.all(p.labels[relabelled] == 0)
    kept = p.indices[~relabelled]
    assert len(kept) == 40 and a.info == {"poisoned": 20, "noise_mode": 40}
    assert not torch.equal(p.images[~relabelled], data.images[kept])  # warped, with jitter


# ---------------------------------------------------------------- random backdoor
def test_random_backdoor_per_input_square(registry):
    a = registry.create("attack", "random-backdoor", {"size": 5, "seed": 1})
    x = torch.full((64, 1, 32, 32), 2.0)  # outside [0, 1]: every changed pixel belongs to the trigger
    out = a.apply(x)
    corners = set()
    for i in range(64):
        changed = torch.nonzero(out[i, 0] != 2.0)
        r0, c0 = changed.min(0).values.tolist()
        assert changed.max(0).values.tolist() == [r0 + 4, c0 + 4] and len(changed) == 25  # one 5x5 square
        assert torch.all((out[i, 0, r0:r0 + 5, c0:c0 + 5] >= 0) & (out[i, 0, r0:r0 + 5, c0:c0 + 5] < 1))
        corners.add((r0, c0))
    assert len(corners) > 40  # random locations
    again = registry.create("attack", "random-backdoor", {"size": 5, "seed": 1}).apply(x)
    assert torch.equal(out, again)  # repeatable from the seed


# ---------------------------------------------------------------- invisible
def test_invisible_static_pattern(registry):
    a = registry.create("attack", "invisible", {"eps": 8.0, "pattern_seed": 2})
    x = fixed_input()
    u = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert torch.allclose(a.apply(x), (x + 8 / 255 * torch.sign(u)).clamp(0, 1))
    assert (a.apply(x) - x).abs().max() <= 8 / 255 + 1e-7


def test_invisible_universal_perturbation_is_bounded_and_adversarial(registry):
    torch.manual_seed(0)
    model = models.Classifier("test_resnet", 4, 3).eval()
    data = random_images(n=64)
    a = registry.create("attack", "invisible", {"perturbation": "adversarial", "uap_steps": 10, "uap_batch": 32})
    a.target = 2
    delta = a.universal_delta(model, data, torch.device("cpu"))
    assert delta.shape == (3, 32, 32) and delta.abs().max() <= 8 / 255 + 1e-7
    x = data.images.float() / 255
    with torch.no_grad():
        before = F.log_softmax(model(x), 1)[:, 2].mean()
        after = F.log_softmax(model((x + delta).clamp(0, 1)), 1)[:, 2].mean()
    assert after > before


# ---------------------------------------------------------------- input-aware
@pytest.fixture(scope="module")
def planted_input_aware(registry):
    torch.manual_seed(0)
    model = models.Classifier("test_resnet", 4, 3)
    a = registry.create("attack", "input-aware", {"mask_epochs": 1, "width": 4})
    data = random_images(n=48)
    model = a.plant(model, data, budget(epochs=1), Context(torch.device("cpu"), 0, False))
    return a, model


def test_input_aware_trigger_formula_and_state(registry, plugin_module, planted_input_aware):
    sharpen = plugin_module("attack", "input-aware").sharpen
    a, _ = planted_input_aware
    x = fixed_input()
    with torch.no_grad():
        want = x + (a.G(x) - x) * sharpen(a.M(x))
    assert torch.allclose(a.apply(x), want, atol=1e-6)
    fresh = registry.create("attack", "input-aware", {"mask_epochs": 1, "width": 4})
    fresh.load_state(a.state())
    assert torch.equal(fresh.apply(x), a.apply(x))
    assert a.info["steps"] > 0


def test_input_aware_triggers_are_input_specific(planted_input_aware):
    a, _ = planted_input_aware
    x = fixed_input()
    delta = a.apply(x) - x
    assert not torch.allclose(delta[0], delta[1])


def test_input_aware_diversity_gradient_is_finite_when_two_outputs_are_identical(plugin_module):
    # Two generators' outputs equal (M saturated): sqrt's gradient at 0 is infinite, 0 * inf is NaN. This made
    # the small CPU model's seed-2 backdoor diverge (every weight NaN) before the distance had a floor.
    ia = plugin_module("attack", "input-aware")
    EPS, diversity = ia.EPS, ia.diversity
    x1, x2 = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    t = torch.rand(4, 1, 8, 8)
    t1 = t.clone().requires_grad_(True)
    t2 = torch.cat([t[:1], torch.rand(3, 1, 8, 8)]).requires_grad_(True)  # pair 0 identical, the others not
    loss = diversity(x1, x2, t1, t2)
    loss.backward()
    assert torch.isfinite(t1.grad).all() and torch.isfinite(t2.grad).all() and t1.grad[1:].abs().sum() > 0
    dx = ((x1 - x2) ** 2).flatten(1).mean(1).sqrt()
    dt = ((t1 - t2) ** 2).flatten(1).mean(1).sqrt().detach()
    assert torch.allclose(loss, (dx / (dt.clamp_min(EPS) + EPS)).mean())  # the paper's ratio, floor aside


def test_input_aware_mask_phase_scores_the_sharpened_mask(plugin_module):
    # The authors' train_mask_step: diversity and density of T(M(x)), the mask the trigger applies. A raw
    # mask of 0.3 sharpens to 0.0003: under the density 0.032, so no density penalty.
    ia = plugin_module("attack", "input-aware")
    diversity, mask_loss, sharpen = ia.diversity, ia.mask_loss, ia.sharpen
    M = lambda x: 0.3 * x.mean(1, keepdim=True)  # noqa: E731
    x1, x2 = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    p = {"lambda_div": 0.0, "lambda_norm": 100.0, "mask_density": 0.032}
    assert mask_loss(x1, x2, M, p) == 0
    M2 = lambda x: x.mean(1, keepdim=True)  # noqa: E731
    p = {"lambda_div": 2.0, "lambda_norm": 100.0, "mask_density": 0.032}
    m1, m2 = sharpen(M2(x1)), sharpen(M2(x2))
    want = 2.0 * diversity(x1, x2, m1, m2) + 100.0 * F.relu(m1 - 0.032).mean()
    assert torch.allclose(mask_loss(x1, x2, M2, p), want) and want > 0


# ---------------------------------------------------------------- all poisoning attacks
@pytest.mark.parametrize("name", ["badnets", "blended", "random-backdoor", "invisible"])
def test_poisoning_budget(registry, name):
    data = random_images(n=100, classes=5)
    a = registry.create("attack", name)
    p = a.poison(data, budget(0.15, target=3), torch.Generator().manual_seed(0))
    assert len(p.indices) == 15 and torch.all(p.labels == 3) and torch.all(data.labels[p.indices] != 3)
    assert len(set(p.indices.tolist())) == 15


@pytest.mark.parametrize("name", ["badnets", "blended", "sig", "wanet", "invisible"])
@pytest.mark.parametrize("device", DEVICES)
def test_same_trigger_on_every_device(registry, name, device):
    a = registry.create("attack", name)
    x = fixed_input()
    out = a.apply(x.to(device))
    assert out.device.type == device and out.dtype == x.dtype
    assert torch.allclose(out.cpu(), a.apply(x), atol=1e-5)


def test_no_poison_attack_poisons_nothing_and_is_marked_a_control(registry):
    from benchmark.scenario import AttackBudget, Recipe
    a = registry.create("attack", "no-poison")
    data = random_images(n=20)
    p = a.poison(data, AttackBudget(0.1, 0, Recipe(1, 0.01)), torch.Generator().manual_seed(0))
    assert len(p.indices) == 0 and torch.equal(p.applied_to(data).images, data.images)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(a.apply(x), x) and not type(a).plants_backdoor
