"""Scores of a model, cached like a stage (`eval`): CA, ASR and RA in the upstream label space (the attack's own
targets) and after transfer (the target class t* the trigger maps to, chosen on triggered validation images)."""
from __future__ import annotations

from typing import Optional

from .. import metrics, training
from ..config import to_dict
from ..data import ImageSet
from ..plugins import Attack
from ..scenario import PluginSpec

STAGE = "eval"


def scores(env, model, attack: Optional[Attack], test: ImageSet, target) -> dict:
    """CA on `test`; with an attack, ASR and RA of its triggered inputs against `target` (a class, or one per
    input)."""
    pred = training.predict(model, test, device=env.device)
    if attack is None:
        return {"ca": metrics.accuracy(pred, test.labels), "asr": None, "ra": None}
    trig = training.predict(model, test, device=env.device, transform=attack.apply)
    return {"ca": metrics.accuracy(pred, test.labels),
            "asr": metrics.attack_success_rate(trig, test.labels, target),
            "ra": metrics.robust_accuracy(trig, test.labels, target)}


def upstream_spec(env, art, planted) -> dict:
    return {"model": art.key, "trigger": planted.key, "budget": to_dict(env.scenario.attack), "level": "upstream"}


def upstream(env, art, attack: PluginSpec, planted) -> tuple:
    """Same label space: the attack's own targets. `planted` fixes the trigger (and its learned state)."""
    a, test = env.attack(attack, planted), env.data.up_test
    return None, {"metrics": scores(env, art.model(), a, test,
                                    a.targets(test.labels, test.num_classes, env.scenario.attack.target))}


def transfer_spec(art, planted) -> dict:
    return {"model": art.key, "trigger": planted.key, "level": "transfer", "draws": "per-set"}


def transfer(env, art, attack: PluginSpec, planted) -> tuple:
    """After transfer: t* from triggered validation images, then ASR/RA on the test set. Every scored set gets a
    fresh attack instance (`draws: per-set`): an attack that draws its trigger at random (random-backdoor) then
    gives the test set the same triggers here as in the defend stage."""
    d, model = env.data, art.model()
    val_pred = training.predict(model, d.down_val, device=env.device, transform=env.attack(attack, planted).apply)
    t = metrics.transfer_target(val_pred, d.down_val.num_classes)
    return None, {"metrics": {**scores(env, model, env.attack(attack, planted), d.down_test, t), "target": t}}


def goal(env, a: Attack, test: ImageSet, target: int):
    """The label each triggered test input should receive: t* after transfer; without transfer, the attack's own
    targets (all-to-all attacks included)."""
    if env.scenario.downstream.transfers:
        return target
    return a.targets(test.labels, test.num_classes, env.scenario.attack.target)
