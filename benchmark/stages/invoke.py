"""Running a defense: in its own (sandboxed) process when isolating, else in this one; what it returned, as plain
values the defend and inspect stages score."""
from __future__ import annotations

import json
from typing import Optional

import torch

from .. import models, training
from ..data import ImageSet
from ..plugins import Defense
from ..scenario import PluginSpec


def run(env, defense: PluginSpec, delivered, data: ImageSet, eval_images, seed: int) -> dict:
    sc = env.scenario
    torch.manual_seed(seed)
    if env.isolate != "none":
        from ..isolation import run_defense
        return run_defense(roots=env.registry.roots, name=defense.name, params=defense.params,
                           model_path=delivered.folder / "model.safetensors",
                           config=delivered.meta["model"]["config"], data=data, eval_images=eval_images,
                           device=env.device, seed=seed, time_limit=sc.defender.time_limit_s,
                           memory_gb=sc.defender.memory_gb, mode=env.isolate)
    plugin: Defense = env.registry.create("defense", defense.name, defense.params)
    ctx = env.ctx(seed)
    model = models.forget_history(delivered.model())  # what an isolated defense receives (models.for_defense)
    out = plugin.inspect(model, data, ctx) if plugin.position == "data" else plugin.run(model, data, ctx)
    from ..isolation import checked
    out = checked(out, defense.name, delivered.model())
    s = None
    if out.input_scorer is not None and eval_images is not None:
        s = training.scores(out.input_scorer, ImageSet(eval_images, torch.zeros(len(eval_images)), ["?"]),
                            device=env.device)
    return {"model": out.model, "model_score": _score(out.model_score), "info": json.loads(json.dumps(out.info)),
            "scores": s, "sample_scores": _cpu(out.sample_scores), "sample_flags": _cpu(out.sample_flags)}


def flag_nonfinite(m: dict, found: dict, who: str, log) -> None:
    """Record in the metrics which of a defense's scores were NaN or infinite (each counted 0.5: metrics.detection)."""
    found = {k: v for k, v in found.items() if v}
    if found:
        m["nonfinite"] = found
        log(f"[nonfinite] {who} returned NaN or infinite scores ({found}); each counts 0.5 (a tie) in detection")


def _score(v) -> Optional[float]:
    return None if v is None else float(v)


def _cpu(t):
    return None if t is None else torch.as_tensor(t).detach().flatten().cpu()
