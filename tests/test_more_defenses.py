"""STRIP and Fine-Pruning against their definitions."""

import pytest
import torch

from benchmark import models
from benchmark.plugins import Context

from .conftest import random_images


def tiny(classes=4):
    torch.manual_seed(0)
    return models.Classifier("test_resnet", classes, 3).eval()


def test_strip_score_is_minus_the_mean_entropy(registry):
    d = registry.create("defense", "strip", {"n": 5, "batch": 7})
    model, clean = tiny(), random_images(n=16)
    out = d.run(model, clean, Context(torch.device("cpu"), seed=3, progress=False))
    x = torch.rand(3, 3, 32, 32)
    got = out.input_scorer(x)
    idx = torch.randint(0, 16, (5,), generator=Context(torch.device("cpu"), 3).generator(11))
    bg = clean.images[idx].float() / 255
    for i in range(3):
        with torch.no_grad():
            p = torch.softmax(model((x[i:i + 1] + bg).clamp(0, 1)), 1)
        h = -(p * torch.log2(p)).sum(1).mean()
        assert got[i].item() == pytest.approx(-h.item(), abs=1e-5)


def test_strip_sign_trojaned_inputs_score_higher(registry):
    """A model that answers class 0 whenever the corner is white: triggered inputs keep a confident answer
    under superimposition (low entropy) and must score higher: AUROC > 0.5."""
    from benchmark.metrics import auroc

    class Toy(torch.nn.Module):
        def forward(self, x):
            corner = x[:, :, -3:, -3:].mean((1, 2, 3))
            z = torch.zeros_like(corner)
            return torch.stack([50 * (corner - 0.9), z, z, z], 1)  # otherwise undecided: high entropy
    d = registry.create("defense", "strip", {"n": 8})
    clean = random_images(n=32)
    clean.images[:, :, -3:, -3:] = 0  # the defender's clean images carry no trigger
    out = d.run(Toy(), clean, Context(torch.device("cpu"), 0, False))
    x = torch.rand(20, 3, 32, 32) * 0.5
    trig = x.clone()
    trig[:, :, -3:, -3:] = 1.0
    s = torch.cat([out.input_scorer(x), out.input_scorer(trig)])
    assert auroc([0] * 20 + [1] * 20, s.numpy()) > 0.9


def test_fine_pruning_prunes_dormant_channels_first_and_stops_at_the_limit(registry):
    d = registry.create("defense", "fine-pruning", {"max_acc_drop": 0.0, "finetune_epochs": 1})
    model, clean = tiny(), random_images(n=40)
    from benchmark.data import split
    keep, held = split(clean.labels, 0.2, 0)
    act = type(d).run.__globals__["mean_activation"](model, clean.subset(keep), torch.device("cpu"))
    pruned, base, history = d.prune(model, clean.subset(keep), clean.subset(held), torch.device("cpu"))
    order = torch.argsort(act, stable=True).tolist()
    assert pruned == order[:len(pruned)]  # lowest mean activation first
    assert all(base - a <= 0.0 for a in history)  # never below the allowed drop
    if len(pruned) < int(0.9 * len(order)):  # it stopped: the next channel would have crossed the limit
        nxt = order[len(pruned)]
        with torch.no_grad():
            model.feature_mask[nxt] = 0
        acc = type(d).run.__globals__["accuracy"](model, clean.subset(held), torch.device("cpu"))
        assert base - acc > 0.0
        with torch.no_grad():
            model.feature_mask[nxt] = 1


def test_fine_pruning_output_keeps_the_mask(registry):
    d = registry.create("defense", "fine-pruning", {"max_acc_drop": 1.0, "max_ratio": 0.5, "finetune_epochs": 1})
    model = tiny()
    out = d.run(model, random_images(n=40), Context(torch.device("cpu"), 0, False))
    c = out.info["channels"]
    assert len(out.info["pruned"]) == int(0.5 * c)  # an unlimited drop prunes up to max_ratio
    feats = out.model.features(torch.rand(2, 3, 32, 32))
    assert torch.all(feats[:, out.info["pruned"]] == 0)
