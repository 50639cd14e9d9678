"""A diverged training (NaN or inf weights or outputs) fails its cells with a clear error; it is never stored, and
never scored: an argmax over NaN logits is class 0, which would read as a perfect attack on target 0."""
import json

import pytest
import torch
import yaml

from benchmark import grid, models, training
from benchmark.errors import DivergedError
from benchmark.hub import file_sha256
from benchmark.registry import Registry
from benchmark.store import Store

from .conftest import DEVICES, REPO, random_images, write_submission

DIVERGE = """
import torch
from benchmark import Attack
class Plugin(Attack):
    poisons_data = False
    def apply(self, x):
        x = x.clone(); x[..., -3:, -3:] = 1.0
        return x
    def plant(self, model, data, budget, ctx):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))  # what a run whose loss went to NaN leaves behind
        return model
"""


def _model():
    return models.Classifier("test_resnet", 4, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_check_finite_names_the_weight_and_passes_a_finite_model(device, monkeypatch):
    m = _model().to(device)  # weights that require grad, as a defense's repaired model has them
    assert all(p.requires_grad for p in m.parameters())
    isfinite = torch.isfinite

    def strict(t):  # what torch 2.11 did on the GPU machine with such weights
        if t.requires_grad:
            raise RuntimeError("abs(): functions with out=... arguments don't support automatic differentiation")
        return isfinite(t)
    monkeypatch.setattr(torch, "isfinite", strict)
    assert models.check_finite(m, "m") is m
    name, p = next(iter(m.named_parameters()))
    with torch.no_grad():
        p.view(-1)[0] = float("inf")
    with pytest.raises(DivergedError, match=f"'{name}' holds NaN or inf"):
        models.check_finite(m, "m")


def test_the_store_does_not_keep_a_diverged_model_and_refuses_to_load_one(tmp_path):
    store = Store(tmp_path)
    bad = _model()
    with torch.no_grad():
        next(bad.parameters()).fill_(float("nan"))
    with pytest.raises(DivergedError, match="backdoor stage's model \\(attack 'x', seed 3, not stored\\)"):
        store.build("backdoor", {"attack": {"name": "x"}, "seed": 3}, lambda: (bad, {}))
    assert store.get("backdoor", {"attack": {"name": "x"}, "seed": 3}) is None
    good = store.build("upstream", {"seed": 0}, lambda: (_model(), {}))
    models.save(bad, good.folder / "model.safetensors")  # as if stored before the check existed
    meta = json.loads((good.folder / "meta.json").read_text())
    meta["model"]["sha256"] = file_sha256(good.folder / "model.safetensors")
    (good.folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DivergedError, match="model.safetensors \\(stage upstream\\)"):
        store.get("upstream", {"seed": 0}).model()


def test_evaluation_refuses_nan_outputs_and_nan_triggers():
    data = random_images(n=20, size=8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    cpu = torch.device("cpu")
    assert training.predict(model, data, device=cpu, batch_size=8).shape == (20,)
    with pytest.raises(DivergedError, match="after the transform"):
        training.predict(model, data, device=cpu, transform=lambda x: x * float("nan"), batch_size=8)
    with torch.no_grad():
        model[1].bias[2] = float("nan")
    with pytest.raises(DivergedError, match="outputs are NaN or inf"):
        training.logits(model, data, device=cpu, batch_size=8)


def test_a_diverged_injection_fails_its_cells_instead_of_scoring_them(tmp_path):
    subs = tmp_path / "subs"
    write_submission(subs, "attack", "diverge", DIVERGE)
    registry = Registry([REPO / "submissions", subs], entry_points=False)
    sc = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    sc.update(attacks=["diverge"], seeds=[0], defenses=["linf-pruning", "spectral-signatures"])
    (tmp_path / "sc.yaml").write_text(yaml.safe_dump(sc))
    results = tmp_path / "results"
    grid.run(tmp_path / "sc.yaml", home=tmp_path / "home", results=results, registry=registry, progress=False,
             log=lambda m: None, isolate=False, only={"clean_seeds": []})
    for cell in ("none", "linf-pruning"):
        r = json.loads((results / "tiny-v1" / "diverge" / cell / "seed-0.json").read_text())
        assert r["status"] == "failed" and r["error"]["type"] == "DivergedError", r.get("error")
        assert "attack 'diverge', seed 0, not stored" in r["error"]["message"]
        assert not (r["metrics"] or {}).get("transfer")  # nothing was scored on it
    assert not list((tmp_path / "home" / "backdoor").glob("*/meta.json"))
    # a training-data defense does not apply to an attack that controls training: no cell, failed or not
    assert not (results / "tiny-v1" / "diverge" / "spectral-signatures").exists()
