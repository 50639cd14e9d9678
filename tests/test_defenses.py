"""The first defenses, against their definitions."""
import numpy as np
import pytest
import torch
from torch import nn

from benchmark import models
from benchmark.plugins import Context

from .conftest import random_images


def tiny():
    torch.manual_seed(0)
    return models.Classifier("test_resnet", 4, 3)


def plant_loud_channel(model, c, gain=50.0):
    """Make channel c of the last feature map fire far above the others (its last batch-norm scaled up)."""
    last_bn = [m for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    assert last_bn.num_features == model.net.num_features
    with torch.no_grad():
        last_bn.weight[c] *= gain
        last_bn.bias[c] = abs(float(last_bn.bias[c])) + gain



@pytest.fixture
def linf(registry):
    return registry.create("defense", "linf-pruning", {"finetune_epochs": 1, "layer": "features"})


def test_robust_z_definition(linf):
    z_fn = type(linf).run.__globals__["robust_z"]
    s = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0, 5.0])
    v = s.numpy().astype(np.float64)
    med = np.median(v)  # 3.5: mean of the two middle values
    mad = 1.4826 * np.median(np.abs(v - med))
    assert torch.allclose(z_fn(s), torch.from_numpy((v - med) / mad))
    # over half the channels dead (MAD 0): the mean absolute deviation is the scale, outliers still stand out
    dead = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 8.0])
    z = z_fn(dead)
    assert torch.allclose(z, dead.double() / (np.sqrt(np.pi / 2) * 1.5)) and int(z.argmax()) == 5


def test_selection_threshold_cap_and_ratio(registry):
    z = torch.tensor([0.0, 5.0, 1.0, 9.0, 3.5, -4.0, 0.2, 0.1, 0.3, 0.4])
    assert registry.create("defense", "linf-pruning").select(z) == [3, 1]  # z > 3, cap 0.2 * 10 = 2
    assert registry.create("defense", "linf-pruning", {"max_ratio": 0.5}).select(z) == [3, 1, 4]
    assert registry.create("defense", "linf-pruning", {"ratio": 0.3}).select(z) == [3, 1, 4]
    assert registry.create("defense", "linf-pruning", {"threshold": 10.0}).select(z) == []


def test_linf_pruning_removes_the_loud_channel_and_keeps_it_pruned(linf):
    model = tiny()
    plant_loud_channel(model, 7)
    clean = random_images(n=32)
    out = linf.run(model, clean, Context(torch.device("cpu"), seed=0, progress=False))
    assert 7 in out.info["pruned"] and out.info["pruned"][0] == 7
    assert out.model_score > 3.0 and out.info["channels"] == model.net.num_features
    feats = out.model.features(torch.rand(4, 3, 32, 32))
    assert torch.all(feats[:, out.info["pruned"]] == 0)  # pruned through fine-tuning
    assert out.model.feature_mask.sum() == model.net.num_features - len(out.info["pruned"])


def test_linf_statistic_is_the_spatial_max(linf):
    norms = type(linf).run.__globals__["channel_norms"]
    model = tiny().eval()
    clean = random_images(n=8)
    got = norms(model, clean, torch.device("cpu"), "linf")
    with torch.no_grad():
        f = model.features(clean.images.float() / 255)
    assert torch.allclose(got, f.abs().amax((2, 3)).mean(0), atol=1e-5)
    l1 = norms(model, clean, torch.device("cpu"), "l1")
    assert torch.allclose(l1, f.abs().sum((2, 3)).mean(0), atol=1e-4)


def test_linf_pruning_at_a_batch_norm_layer(registry):
    """layer = a BatchNorm2d: channels scored by their post-ReLU activation maps there; pruned neurons have
    scale and shift 0 after the fine-tune (so their ReLU output is 0), the feature mask is untouched."""
    layer = "net.layer4.0.bn1"
    d = registry.create("defense", "linf-pruning", {"finetune_epochs": 1, "layer": layer, "ratio": 0.25})
    model = tiny()
    bn = dict(model.named_modules())[layer]
    clean = random_images(n=32)
    seen = {}
    h = bn.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.relu()))
    with torch.no_grad():
        model.eval()(clean.images.float() / 255)
    h.remove()
    expect = seen["a"].abs().amax((2, 3)).mean(0)
    got = type(d).run.__globals__["channel_norms"](model, clean, torch.device("cpu"), "linf", layer)
    assert torch.allclose(got, expect, atol=1e-5)
    out = d.run(model, clean, Context(torch.device("cpu"), seed=0, progress=False))
    bn = dict(out.model.named_modules())[layer]
    pruned = out.info["pruned"]
    assert len(pruned) == round(0.25 * bn.num_features) and out.info["layer"] == layer
    assert torch.all(bn.weight[pruned] == 0) and torch.all(bn.bias[pruned] == 0)
    assert torch.all(out.model.feature_mask == 1)
    with pytest.raises(ValueError, match="not a BatchNorm2d"):
        registry.create("defense", "linf-pruning", {"layer": "net.nope"}).run(
            tiny(), clean, Context(torch.device("cpu"), 0, False))


def test_linf_pruning_auto_layer_scores_maps_with_spatial_extent(registry):
    """layer auto: the deepest batch-norm output of at least min_map x min_map (test_resnet at 32 px: its last
    stage is 1x1, where l_inf, l2 and l1 coincide); info records the layer, its map and every channel's score."""
    model = tiny()
    fn = type(registry.create("defense", "linf-pruning")).run.__globals__
    sizes = fn["map_sizes"](model, 32, 3, torch.device("cpu"))
    assert min(sizes[list(sizes)[-1]]) == 1  # the last stage: 1x1 at 32 px
    layer, size = fn["auto_layer"](model, 32, 3, torch.device("cpu"), 4)
    names = list(sizes)
    assert min(size) >= 4 and all(min(sizes[n]) < 4 for n in names[names.index(layer) + 1:])
    clean = random_images(n=32)
    out = registry.create("defense", "linf-pruning", {"finetune_epochs": 1}).run(
        model, clean, Context(torch.device("cpu"), 0, False))
    assert out.info["layer"] == layer and out.info["map"] == list(size)
    # the scores recorded are the l_inf norms at that layer (on the model as delivered)
    expect = fn["channel_norms"](tiny(), clean, torch.device("cpu"), "linf", layer)
    assert np.allclose(out.info["scored"], expect.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="no batch-norm output of at least"):
        fn["auto_layer"](model, 32, 3, torch.device("cpu"), 64)


def test_finetune_changes_weights_and_only_sees_clean_data(registry):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = registry.create("defense", "finetune", {"epochs": 1}).run(model, random_images(n=32),
                                                                    Context(torch.device("cpu"), 0, False))
    assert out.model is not None and out.model_score is None and out.input_scorer is None
    assert any(not torch.equal(before[k], v) for k, v in out.model.state_dict().items())
