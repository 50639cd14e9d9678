"""A model-position defense on the delivered (transferred) model, with the defender's clean budget; scored by what
it repaired (CA, ASR, RA, DER), its per-input scores (input-level AUROC) and its model score."""
from __future__ import annotations

from typing import Optional

import torch

from .. import metrics
from ..data import ImageSet, split
from ..errors import BenchError
from ..plugins import Attack
from ..scenario import PluginSpec
from . import evaluate, invoke

STAGE = "defense"


def spec(env, delivered_key: str, defense: PluginSpec, seed: int, planted_key: Optional[str],
         target: Optional[int]) -> dict:
    """The delivered model, the defense (name, parameters, code), the defender's budget, the seed and, against an
    attack, the trigger and target it is scored with (None on a clean-upstream control)."""
    sc = env.scenario
    s = {"model": delivered_key, "defense": env.ident("defense", defense),
         "defender": {"budget": sc.defender.budget}, "seed": seed,
         "eval": None if planted_key is None else {"trigger": planted_key, "target": target, "draws": "per-set"}}
    if not sc.downstream.transfers:
        s["defender"]["pool"] = "untouched-upstream"
    return s


def defender_data(env, attack: Optional[PluginSpec], planted, seed: int) -> ImageSet:
    """The defender's clean budget: a stratified `defender.budget` share of the victim's training set, drawn with
    the cell's seed. Protocol none: of the upstream training set, among the samples the attack's poisoning left
    untouched (the same draw plant() made; an attack that controls training has no poisoned set)."""
    sc, d = env.scenario, env.data
    pool = torch.arange(len(d.down_train))
    if not sc.downstream.transfers and attack is not None \
            and env.registry.plugin_class("attack", attack.name).poisons_data:
        touched = env.poisoning(attack, planted, seed).indices
        pool = pool[~torch.isin(pool, touched)]
    share = sc.defender.budget if len(pool) == len(d.down_train) else \
        min(1.0, sc.defender.budget * len(d.down_train) / len(pool))
    _, held = split(d.down_train.labels[pool], share, seed)
    return d.down_train.subset(pool[held])


def eval_inputs(env, a: Attack, goal) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-level detection set: every clean test image (label 0) and every triggered test image whose true label
    is not its target (`goal`: t*, or per input without transfer) (label 1), shuffled with a fixed permutation;
    uint8 images and labels."""
    test = env.data.down_test
    nt = test.images[test.labels != goal]
    trig = a.apply_uint8(nt)
    images = torch.cat([test.images, trig])
    labels = torch.cat([torch.zeros(len(test), dtype=torch.long), torch.ones(len(trig), dtype=torch.long)])
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[perm], labels[perm]


def build(env, delivered, defense: PluginSpec, attack: Optional[PluginSpec], planted, target: Optional[int],
          before: Optional[dict], seed: int) -> tuple:
    """Without an attack (a control: the model transferred from the clean upstream) only its CA and model score
    are measured."""
    d = env.data
    clean = defender_data(env, attack, planted, seed)
    # a fresh attack instance per scored set: the test set gets the triggers the evaluate stage gave it
    a = None if attack is None else env.attack(attack, planted)
    goal = None if a is None else evaluate.goal(env, a, d.down_test, target)
    # the defense sees a private copy of the delivered model and the clean budget, nothing else;
    # its per-input scorer sees unlabeled, shuffled clean and triggered inputs only after run() returned
    eval_images, eval_labels = eval_inputs(env, env.attack(attack, planted), goal) if a is not None else (None, None)
    out = invoke.run(env, defense, delivered, clean, eval_images, seed)
    model = out["model"]
    after = evaluate.scores(env, model if model is not None else delivered.model(), a, d.down_test, goal)
    m = {**after, "repaired": model is not None, "clean_budget": len(clean),
         "model_score": metrics.finite_or_none(out["model_score"]), "input_auroc": None}
    nonfinite = {"model_score": metrics.nonfinite_label(out["model_score"])}
    if a is not None:
        m["der"] = metrics.der(before["ca"], after["ca"], before["asr"], after["asr"])
        if out["scores"] is not None:
            if out["scores"].shape != eval_labels.shape:
                raise BenchError(f"defense '{defense.name}': input_scorer gave {tuple(out['scores'].shape)} "
                                 f"scores for {len(eval_labels)} inputs; it must return one per input")
            det = metrics.detection(eval_labels.numpy(), out["scores"].numpy())
            m.update(input_auroc=det["auroc"], input_aupr=det["aupr"], input_tpr_at_5fpr=det["tpr_at_5fpr"])
            nonfinite["input_scores"] = det["nonfinite"]
    else:
        m["der"] = None
    invoke.flag_nonfinite(m, nonfinite, f"defense '{defense.name}'", env.log)
    return model, {"metrics": m, "info": out["info"], "isolation": env.isolate}
