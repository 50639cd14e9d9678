"""A data-position defense: it inspects the upstream training set with the attack's poison in it (the poison mask
withheld) and the backdoored upstream model trained on it; scored against the mask (sample-level AUROC)."""
from __future__ import annotations

import torch

from .. import metrics
from ..config import to_dict
from ..data import ImageSet
from ..errors import BenchError
from ..scenario import PluginSpec
from . import invoke

STAGE = "defense"


def spec(env, planted_key: str, defense: PluginSpec, seed: int) -> dict:
    """The backdoored upstream model, the defense (name, parameters, code), the seed and the attack budget."""
    return {"model": planted_key, "defense": env.ident("defense", defense), "seed": seed,
            "budget": to_dict(env.scenario.attack)}


def build(env, defense: PluginSpec, attack: PluginSpec, planted, seed: int) -> tuple:
    up, poisoning = env.data.up_train, env.poisoning(attack, planted, seed)
    train = poisoning.applied_to(up)
    mask = torch.zeros(len(up), dtype=torch.bool)
    mask[poisoning.indices] = True
    out = invoke.run(env, defense, planted, ImageSet(train.images, train.labels, list(up.classes)), None, seed)
    s = out["sample_scores"]
    if s is None or s.shape != (len(up),):
        raise BenchError(f"defense '{defense.name}': inspect() must return sample_scores with one score per "
                         f"training sample ({len(up)}), got {None if s is None else tuple(s.shape)}")
    det = metrics.detection(mask.numpy(), s.numpy())
    m = {"sample_auroc": det["auroc"], "sample_aupr": det["aupr"], "sample_tpr_at_5fpr": det["tpr_at_5fpr"],
         "samples": len(up), "poisoned": int(mask.sum())}
    invoke.flag_nonfinite(m, {"sample_scores": det["nonfinite"]}, f"defense '{defense.name}'", env.log)
    flags = out["sample_flags"]
    if flags is not None:
        flags = flags.bool()
        m.update(flagged=int(flags.sum()), flagged_tpr=float(flags[mask].float().mean()),
                 flagged_fpr=float(flags[~mask].float().mean()))
    return None, {"metrics": m, "info": out["info"], "isolation": env.isolate}
