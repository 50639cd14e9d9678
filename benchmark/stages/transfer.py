"""The victim's transfer: the upstream model with a new head, fine-tuned on the downstream task under the
scenario's protocol (full, linear, last blocks)."""
from __future__ import annotations

import torch

from .. import metrics, models, training
from ..config import to_dict

STAGE = "downstream"


def spec(env, upstream_key: str, seed: int) -> dict:
    """The upstream model it starts from, the image format, the downstream section and the seed."""
    sc = env.scenario
    return {"upstream": upstream_key, "image": to_dict(sc.image), "downstream": to_dict(sc.downstream), "seed": seed}


def build(env, upstream, seed: int, what: str) -> tuple:
    sc, d = env.scenario, env.data
    torch.manual_seed(seed)
    model = upstream.model().reset_head(d.down_train.num_classes)
    models.set_protocol(model, sc.downstream.protocol, sc.downstream.blocks)
    training.fit(model, d.down_train, sc.downstream.train, device=env.device, seed=seed,
                 desc=f"transfer {what}", progress=env.progress)  # only what the protocol leaves trainable
    models.set_protocol(model, "full")
    ca = metrics.accuracy(training.predict(model, d.down_test, device=env.device), d.down_test.labels)
    return model, {"metrics": {"ca": ca}}
