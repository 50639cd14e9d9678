"""The backdoored upstream: the attack plants its backdoor into the clean upstream (by default, poisoned data and
the scenario's injection fine-tuning)."""
from __future__ import annotations

import json

import torch

from .. import models
from ..config import to_dict
from ..errors import BenchError
from ..scenario import PluginSpec

STAGE = "backdoor"


def spec(env, clean_key: str, attack: PluginSpec, seed: int) -> dict:
    """The clean upstream it starts from, the attack (name, parameters, code), the attack budget and the seed."""
    return {"clean": clean_key, "attack": env.ident("attack", attack), "budget": to_dict(env.scenario.attack),
            "seed": seed}


def build(env, clean, attack: PluginSpec, seed: int) -> tuple:
    torch.manual_seed(seed)
    a = env.attack(attack)
    model = a.plant(clean.model(), env.data.up_train, env.scenario.attack, env.ctx(seed))
    if not isinstance(model, models.Classifier):
        raise BenchError(f"attack '{attack.name}': plant() must return the Classifier it was given")
    return model, {"info": json.loads(json.dumps(a.info)), "tensors": {"attack": a.state()}}
