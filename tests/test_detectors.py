"""Neural Cleanse, ANP, Spectral Signatures, Activation Clustering: against their definitions, on data
built so the right answer is known; and the training-sample level in the pipeline."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from benchmark.data import ImageSet
from benchmark.plugins import Context
from benchmark.scenario import PluginSpec

from .conftest import Run, random_images, write_submission

CPU = Context(torch.device("cpu"), seed=0, progress=False)


class FixedEmbedding(nn.Module):
    """A 'model' whose penultimate representation of image i is a given row: images carry their index."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = rows

    def embed(self, x):
        idx = (x[:, 0, 0, 0] * 255).round().long() + 256 * (x[:, 0, 0, 1] * 255).round().long()
        return self.rows[idx]


def indexed_set(labels: torch.Tensor) -> ImageSet:
    n = len(labels)
    img = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    img[:, 0, 0, 0] = torch.arange(n) % 256
    img[:, 0, 0, 1] = torch.arange(n) // 256
    return ImageSet(img, labels, [f"c{i}" for i in range(int(labels.max()) + 1)])


def planted_representations(seed=0, n=600, d=32, poisoned=40, shift=6.0):
    """Three labels of Gaussian representations; `poisoned` samples of label 0 shifted along one direction."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, d, generator=g)
    labels = torch.arange(n) % 3
    label0 = torch.nonzero(labels == 0).flatten()
    poison = label0[:poisoned]
    r[poison] += shift * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    r += labels[:, None] * 3.0  # labels differ in their mean
    mask = torch.zeros(n, dtype=torch.bool)
    mask[poison] = True
    return r, labels, mask


def test_spectral_scores_follow_the_definition(plugin_module):
    spectral_scores = plugin_module("defense", "spectral-signatures").spectral_scores
    rng = np.random.default_rng(0)
    r = rng.normal(size=(50, 8)) + 5.0  # far from the origin: centring matters
    m = r - r.mean(0)
    v = np.linalg.svd(m, full_matrices=False)[2][0]
    expect = (m @ v) ** 2
    assert np.allclose(spectral_scores(torch.from_numpy(r)).numpy(), expect)
    # uncentred projection (ART's bug) would be dominated by the mean and differ
    v_bad = np.linalg.svd(r, full_matrices=False)[2][0]
    assert not np.allclose((r @ v_bad) ** 2, expect)


def test_spectral_signatures_ranks_the_planted_samples_and_removes_1_5_eps_n(registry):
    r, labels, mask = planted_representations()
    d = registry.create("defense", "spectral-signatures", {"eps": 0.1})
    out = d.inspect(FixedEmbedding(r), indexed_set(labels), CPU)
    assert roc_auc_score(mask.numpy(), out.sample_scores.numpy()) > 0.95
    for c in range(3):  # top int(1.5 * 0.1 * 200) = 30 flagged per label
        assert int(out.sample_flags[labels == c].sum()) == 30
    assert out.sample_flags[mask].float().mean() > 0.7  # most of the 40 land in label 0's 30 removals... capped
    assert int(out.sample_flags[mask].sum()) <= 30


def test_activation_clustering_flags_a_small_cluster_only(registry):
    r, labels, mask = planted_representations(shift=12.0)
    d = registry.create("defense", "activation-clustering", {})
    out = d.inspect(FixedEmbedding(r), indexed_set(labels), CPU)
    # the unflagged labels' scores spread on both sides of their (arbitrary) boundary: pooled AUROC is below 1
    assert roc_auc_score(mask.numpy(), out.sample_scores.numpy()) > 0.9
    assert torch.equal(out.sample_flags[labels == 0], mask[labels == 0])  # 40 of 200: relative size 0.2 < 0.35
    assert out.info["per_label"]["c0"]["flagged"] and out.info["per_label"]["c0"]["smaller_cluster"] == 0.2
    # a 45% 'cluster' is not small: nothing flagged
    r2, labels2, mask2 = planted_representations(poisoned=90, shift=12.0)
    out2 = d.inspect(FixedEmbedding(r2), indexed_set(labels2), CPU)
    assert not out2.sample_flags[labels2 == 0].any() and not out2.info["per_label"]["c0"]["flagged"]


def test_neural_cleanse_anomaly_index_by_hand(plugin_module):
    nc = plugin_module("defense", "neural-cleanse")
    norms = [10.0, 12.0, 11.0, 2.0]  # even count: median = (10 + 11) / 2 = 10.5
    med, mad = 10.5, 1.4826 * np.median([0.5, 1.5, 0.5, 8.5])  # median of deviations = 1.0
    assert np.allclose(nc.anomaly_index(norms), [abs(v - med) / mad for v in norms])
    assert nc.model_score(norms) == pytest.approx(8.5 / mad)  # class 3, on the low side
    # a large norm is not suspicious: median 11.5, deviations [1.5, .5, .5, 18.5] -> MAD 1.4826; low side: 10 and 11
    assert nc.model_score([10.0, 12.0, 11.0, 30.0]) == pytest.approx(1.5 / 1.4826)
    # two classes: both indices are 1/1.4826 whatever the norms, and bit for bit the same float for every model
    # (float arithmetic gave values one ulp apart, which a model-level AUROC then ranked)
    want = float(Fraction(10000, 14826))
    rng = np.random.default_rng(0)
    for pair in [[1.0, 100.0], [5.569, 3.6147], *rng.uniform(0.1, 20, size=(200, 2)).tolist()]:
        assert nc.anomaly_index(pair).tolist() == [want, want], pair
        assert nc.model_score(pair) == want
    # equal by the definition -> equal floats, in any order and with any offset
    for _ in range(50):
        norms = rng.uniform(0.5, 20, size=6)
        perm = rng.permutation(6)
        assert nc.anomaly_index(norms)[perm].tolist() == nc.anomaly_index(norms[perm]).tolist()


class CornerBackdoor(nn.Module):
    """A model with a known backdoor on 12 x 10 images. Clean rule: class c = the brightest of 5 horizontal
    bands (rows 2c, 2c+1); backdoor: class 0 when the bottom-right 2x2 corner (rows 10-11, outside every band)
    is bright, through a smooth response as a trained network has."""
    num_classes = 5

    def forward(self, x):
        bands = x[:, :, :10].mean(1).reshape(len(x), 5, 2, 10).mean((2, 3))
        corner = x[:, :, -2:, -2:].mean((1, 2, 3))
        bd = 20 * torch.sigmoid(20 * (corner - 0.7))
        return 10 * bands + torch.stack([bd] + [torch.zeros_like(bd)] * 4, 1)


def band_images(n=60, seed=3) -> ImageSet:
    """Class c: band c at 0.7, the others at 0.2, plus uniform noise of +-0.1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 5
    x = torch.full((n, 1, 12, 10), 0.2)
    for i in range(n):
        x[i, :, 2 * y[i]:2 * y[i] + 2] = 0.7
    x += (torch.rand(x.shape, generator=g) - 0.5) * 0.2
    return ImageSet((x * 255).round().to(torch.uint8), y, [f"c{i}" for i in range(5)])


def test_neural_cleanse_finds_the_planted_target(registry):
    clean = band_images()
    model = CornerBackdoor()
    assert torch.equal(model(clean.images.float() / 255).argmax(1), clean.labels)  # the clean rule holds
    d = registry.create("defense", "neural-cleanse", {"steps": 300, "unlearn_epochs": 0})
    out = d.run(model, clean, CPU)
    norms = out.info["norms"]
    assert out.info["target_guess"] == 0 and 0 in out.info["flagged"], out.info
    assert int(np.argmax(out.info["anomaly_index"])) == 0
    assert norms[0] < 0.5 * min(norms[1:])  # the 2x2 corner needs a far smaller mask than a real class change
    assert out.model_score > 2.0


def test_anp_prunes_by_its_mask_threshold_and_leaves_a_plain_model(registry):
    import timm  # noqa: F401
    from benchmark.models import Classifier
    torch.manual_seed(0)
    model = Classifier("test_resnet", 4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = random_images(n=64, classes=4)
    d = registry.create("defense", "anp", {"iterations": 20, "batch_size": 32})
    out = d.run(model, data, CPU)
    m = out.model
    assert not any("forward" in vars(mod) for mod in m.modules())  # the noisy forward is removed
    pruned = out.info["pruned"]
    for name, mod in m.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            w0 = before[f"{name}.weight"]
            zeroed = (set(torch.nonzero(mod.weight == 0).flatten().tolist())
                      - set(torch.nonzero(w0 == 0).flatten().tolist()))
            assert zeroed == set(pruned.get(name, []))
            assert torch.equal(mod.bias, before[f"{name}.bias"])  # only the scale is pruned
    none = registry.create("defense", "anp", {"iterations": 5, "batch_size": 32, "threshold": 0.0}).run(
        Classifier("test_resnet", 4, 3), data, CPU)
    assert none.info["pruned_neurons"] == 0


# A data-position defense that scores each training sample by the brightness of its bottom-right corner,
# where BadNets puts its white patch: the pipeline's sample AUROC must then be 1 (or 0 with the sign flipped).
CORNER_DATA = """
from benchmark import Defense, DefenseOutput
from benchmark.data import to_float
class Plugin(Defense):
    position = "data"
    def inspect(self, model, train, ctx):
        x = to_float(train.images)
        assert len(train) > 100 and train.labels.max() < train.num_classes
        return DefenseOutput(sample_scores=self.params["sign"] * x[:, :, -3:, -3:].mean((1, 2, 3)),
                             sample_flags=x[:, :, -3:, -3:].mean((1, 2, 3)) > 0.99)
"""


def test_training_sample_level_auroc_in_the_pipeline(digits_env, tmp_path_factory):
    home, registry, sc, *_ = digits_env
    subs = tmp_path_factory.mktemp("corner-data")
    write_submission(subs, "defense", "corner-data", CORNER_DATA, params={"sign": 1.0})
    from benchmark.registry import Registry
    reg = Registry(registry.roots + [subs], entry_points=False)
    specs = [PluginSpec("corner-data", {"sign": 1.0}, "up"), PluginSpec("corner-data", {"sign": -1.0}, "down"),
             PluginSpec("spectral-signatures"), PluginSpec("activation-clustering")]
    run = Run(home, reg, sc, specs)
    up, down = run.cell("up")["metrics"]["defense"], run.cell("down")["metrics"]["defense"]
    n_train = len(run.runner.data.up_train)
    assert up["sample_auroc"] == 1.0 and down["sample_auroc"] == 0.0
    assert up["poisoned"] == round(sc.attack.poison_rate * n_train) and up["samples"] == n_train
    assert up["flagged_tpr"] == 1.0 and up["flagged_fpr"] == 0.0 and up["sample_tpr_at_5fpr"] == 1.0
    for d in ("spectral-signatures", "activation-clustering"):
        c = run.cell(d)
        assert c["status"] == "ok" and 0 <= c["metrics"]["defense"]["sample_auroc"] <= 1
    assert not any(c["role"] == "clean-upstream" for c in run.cells)  # data defenses have no model-level controls
