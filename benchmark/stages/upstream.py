"""The clean upstream: the network trained on the upstream (natural-image) task, or a published checkpoint."""
from __future__ import annotations

import torch

from .. import metrics, models, training
from ..config import to_dict
from ..scenario import Scenario
from ..zoo import Checkpoint

STAGE = "upstream"


def spec(sc: Scenario) -> dict:
    """What determines the clean upstream: the image format and the scenario's upstream section."""
    return {"image": to_dict(sc.image), "upstream": to_dict(sc.upstream)}


def zoo_spec(c: Checkpoint) -> dict:
    """A stage taken from a published checkpoint is keyed by the checkpoint's pinned files."""
    return {"repo": c.repo, "revision": c.revision, "model": c.model.sha256,
            "trigger": c.trigger.sha256 if c.trigger else None}


def build(env) -> tuple:
    sc, d = env.scenario, env.data
    torch.manual_seed(sc.upstream.seed)
    model = models.Classifier(sc.upstream.arch, d.up_train.num_classes, sc.image.channels,
                              pretrained=sc.upstream.pretrained)
    if sc.upstream.weights is not None:  # a package's pinned file, converted once beside the store
        from .. import weights
        weights.load_into(model, weights.convert(sc, env.cache.parent / "weights"), sc.file)
    models.set_protocol(model, sc.upstream.protocol)  # linear: the head alone, on the pretrained features
    training.fit(model, d.up_train, sc.upstream.train, device=env.device, seed=sc.upstream.seed,
                 desc="clean upstream" + (" (head)" if sc.upstream.protocol == "linear" else ""),
                 progress=env.progress)
    models.set_protocol(model, "full")
    ca = metrics.accuracy(training.predict(model, d.up_test, device=env.device), d.up_test.labels)
    return model, {"metrics": {"ca": ca}}


def from_zoo(c: Checkpoint, attack=None) -> tuple:
    """A stage's output taken from a published checkpoint: pulled, verified, loaded (with the attack's learned
    trigger, for a backdoored upstream)."""
    from safetensors.torch import load_file

    from .. import hub
    paths = hub.pull(c)
    model = models.load(paths["model"], c.config)
    tensors = load_file(str(paths["trigger"])) if "trigger" in paths else {}
    if attack is not None:
        attack.load_state(tensors)  # fails loudly if the trigger does not fit the attack
    info = {"zoo": {"name": c.name, "repo": c.repo, "revision": c.revision}}
    return model, {"info": info, "metrics": c.scores, "tensors": {"attack": tensors}}
