"""Fine-tuning protocols, safetensors round trips and the refusal of pickles."""
import json

import pytest
import torch

from benchmark import models, training
from benchmark.errors import CheckpointError
from benchmark.scenario import Recipe
from benchmark.store import Store

from .conftest import random_images


def tiny(num_classes=4):
    torch.manual_seed(0)
    return models.Classifier("test_resnet", num_classes, 3)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_linear_protocol_trains_only_the_head_and_keeps_bn_statistics():
    m = models.set_protocol(tiny(), "linear")
    before = snapshot(m)
    training.fit(m, random_images(n=32), Recipe(epochs=1, lr=0.1, batch_size=16), device=torch.device("cpu"),
                 seed=0, progress=False)
    head = {f"net.{n}" for n, _ in m.net.named_parameters() if n.startswith(m.net.default_cfg.get("classifier", "fc"))}
    assert changed(before, m) == head and head  # BN running stats included: nothing else moved


def test_last_blocks_protocol():
    m = tiny()
    blocks = models.blocks(m)
    models.set_protocol(m, "last_blocks", 2)
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    expected = {id(p) for g in blocks[-2:] for p in g} | {id(p) for p in models.head_parameters(m)}
    assert trainable == expected
    assert not any(id(p) in trainable for p in blocks[0])  # the stem stays frozen
    with pytest.raises(ValueError, match="blocks"):
        models.set_protocol(tiny(), "last_blocks", 999)


def test_reset_head_replaces_the_classifier():
    m = tiny(4).reset_head(2)
    assert m.num_classes == 2 and m(torch.rand(3, 3, 32, 32)).shape == (3, 2)


def test_safetensors_round_trip(tmp_path):
    m = tiny()
    with torch.no_grad():
        m.feature_mask[3] = 0
    models.save(m, tmp_path / "m.safetensors")
    r = models.load(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 32, 32)
    m.eval(), r.eval()
    assert torch.equal(m(x), r(x)) and r.feature_mask[3] == 0


def test_pickles_are_refused(tmp_path):
    torch.save(tiny().state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        models.load(tmp_path / "m.pt", tiny().config)


def test_tampered_artifact_is_detected(tmp_path):
    store = Store(tmp_path)
    art = store.build("upstream", {"x": 1}, lambda: (tiny(), {"metrics": {}}))
    assert art.model().num_classes == 4
    path = art.folder / "model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        store.get("upstream", {"x": 1}).model()


def test_store_reuses_and_keys_on_spec(tmp_path):
    store, calls = Store(tmp_path), []

    def fn():
        calls.append(1)
        return None, {"metrics": {"v": len(calls)}}
    a = store.build("eval", {"k": 1}, fn)
    b = store.build("eval", {"k": 1}, fn)
    c = store.build("eval", {"k": 2}, fn)
    assert len(calls) == 2 and a.key == b.key != c.key and b.meta["metrics"]["v"] == 1
    assert json.loads((a.folder / "meta.json").read_text())["spec"] == {"k": 1}
    assert [s for s, _ in store.computed] == ["eval", "eval"]


def test_failed_build_leaves_nothing(tmp_path):
    store = Store(tmp_path)

    def boom():
        raise RuntimeError("crash")
    with pytest.raises(RuntimeError):
        store.build("defense", {"k": 1}, boom)
    assert store.get("defense", {"k": 1}) is None
    assert not (tmp_path / "defense").exists() or not any((tmp_path / "defense").iterdir())  # nothing half-written


def test_artifact_tensors_round_trip_and_are_verified(tmp_path):
    store = Store(tmp_path)
    delta = torch.rand(3, 8, 8)
    art = store.build("backdoor", {"k": 1}, lambda: (None, {"tensors": {"attack": {"delta": delta}, "empty": {}}}))
    assert torch.equal(art.tensors("attack")["delta"], delta) and art.tensors("empty") == {}
    path = art.folder / "attack.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        store.get("backdoor", {"k": 1}).tensors("attack")


def test_preact_resnet18_is_a_timm_model_with_backdoorbenchs_shape(tmp_path):
    """preact_resnet18 (benchmark/architectures): built by timm.create_model by name, the parameter count of
    BackdoorBench's CIFAR PreAct-ResNet18 (11,171,146 at 10 classes), a 3x3 stride-1 stem (a 32 px input keeps a
    4x4 map at the last stage), and the harness's protocols and checkpoints work on it."""
    import timm
    net = timm.create_model("preact_resnet18", num_classes=10, in_chans=3)
    assert sum(p.numel() for p in net.parameters()) == 11_171_146
    assert net.forward_features(torch.rand(2, 3, 32, 32)).shape == (2, 512, 4, 4)
    m = models.Classifier("preact_resnet18", 10, 3)
    assert m.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert len(models.blocks(m)) == 9  # the stem and eight blocks
    models.set_protocol(m, "last_blocks", 1)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("net.layer4.1.", "net.fc.")) for n in trainable)
    models.save(m.reset_head(4), tmp_path / "m.safetensors")
    back = models.load(tmp_path / "m.safetensors")
    x = torch.rand(3, 3, 32, 32)
    m.eval(), back.eval()
    assert torch.equal(m(x), back(x)) and back(x).shape == (3, 4)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("preact_resnet18", pretrained=True)
