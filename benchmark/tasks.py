"""A grid's units of work and what counts as finished. A grid runs as tasks: the clean upstream of every scenario
first (so parallel workers never train it twice), then one task per (scenario, attack, seed) with all its
defenses, then the clean-upstream controls. A task whose result files all exist and are finished (status ok, same
scenario: see same_scenario, current plugin code, no superseded scoring) is skipped without loading anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .resultfile import CLEAN_UPSTREAM, Result, read_if_valid
from .results import superseded
from .scenario import Scenario


@dataclass
class Task:
    """One unit of work. kind: 'upstream' (the scenario's clean model), 'cell' (an attack at a seed with all
    defenses), 'controls' (the defenses on the clean-upstream transfer of a seed)."""
    kind: str
    scenario: str  # the scenario's name
    attack: Optional[str] = None
    seed: Optional[int] = None

    @property
    def label(self) -> str:
        return " / ".join(str(x) for x in (self.scenario, self.kind if self.kind != "cell" else self.attack,
                                          None if self.seed is None else f"seed {self.seed}") if x is not None)


def plan_tasks(scenarios: list[Scenario], registry=None) -> list[list[Task]]:
    """Three phases: every phase's tasks are independent of each other and need the previous phase done. A null
    attack's cells (one that plants nothing, e.g. no-poison: needs the registry to tell) are controls: they go
    with the clean-upstream controls, once the attacks' cells have shown which defenses give a model score."""
    def null(a):
        return registry is not None and not registry.plugin_class("attack", a.name).plants_backdoor
    ups = [Task("upstream", s.name) for s in scenarios]
    cells = [Task("cell", s.name, a.id, seed) for s in scenarios for a in s.attacks for seed in s.seeds
             if not null(a)]
    controls = [Task("controls", s.name, None, seed) for s in scenarios if s.defenses
                for seed in (s.clean_seeds if s.clean_seeds is not None else s.seeds)] + \
               [Task("cell", s.name, a.id, seed) for s in scenarios for a in s.attacks for seed in s.seeds if null(a)]
    return [ups, cells, controls]


def same_scenario(r: Result, sc: Scenario, registry=None) -> bool:
    """Whether result `r` was computed for this scenario: by the same file (sha256), or by the same recipe (see
    scenario.recipe_hash) with its attack and defense as this scenario states them, so that adding an attack, a
    defense or a seed to a scenario file keeps every finished cell (the parameter check needs the registry)."""
    if r.scenario.sha256 == sc.sha256:
        return True
    if r.scenario.recipe is None or r.scenario.recipe != sc.recipe or registry is None:
        return False
    for kind, specs, p in (("attack", sc.attacks, r.attack), ("defense", sc.defenses, r.defense)):
        if p is None:
            continue  # the no-defense cell; a control's clean upstream is part of the recipe
        spec = next((x for x in specs if x.id == p.id), None)
        if spec is None or spec.name != p.name or p.name not in registry.names(kind) or \
                json.loads(json.dumps(registry.resolve_params(kind, spec.name, spec.params))) != p.params:
            return False
    return True


def finished(path: Path, sc: Scenario, registry=None) -> bool:
    """Finished: status ok, for this scenario (same_scenario), and (where the file records it) computed by the
    plugins' current code: a submission whose source changed since has its cells redone (its stages are keyed by
    its code, so only they recompute)."""
    r = read_if_valid(path)
    if r is None or not r.ok or not same_scenario(r, sc, registry):
        return False
    if r.defense and superseded(r):  # scored before a harness fix that changed what it measures
        return False
    for kind, p in (("attack", r.attack), ("defense", r.defense)):
        if registry is not None and p is not None and p.code is not None and p.name in registry.names(kind) \
                and p.code != registry.code_hash(kind, p.name):
            return False
    return True


def upstream_ready(sc: Scenario, registry, home: Path) -> bool:
    """Whether the store at `home` holds the scenario's clean upstream (built here, not pulled from a zoo)."""
    from .stages import upstream
    from .store import Store
    return Store(home).get(upstream.STAGE, upstream.spec(sc)) is not None


def task_files(task: Task, sc: Scenario, results: Path, registry) -> list[tuple[Optional[str], Path]]:
    """(defense id, or None for the no-defense cell; result file) for every file a cell or controls task writes.
    Data-position defenses have no cell under an attack that does not poison data; controls, and a null attack's
    cells, are written for the defenses that gave a model score in a finished cell of the scenario."""
    from .pipeline import cell_path
    from .results import scoring_defenses
    def scoring():  # read from the result files: only for the tasks that need it
        return scoring_defenses(Path(results) / f"{sc.name}-v{sc.version}", [d.id for d in sc.defenses])
    if task.kind == "cell":
        cls = registry.plugin_class("attack", next(a for a in sc.attacks if a.id == task.attack).name)
        wanted = [None] + (scoring() if not cls.plants_backdoor else [
            d.id for d in sc.defenses
            if cls.poisons_data or registry.plugin_class("defense", d.name).position != "data"])
        return [(d, cell_path(results, sc, task.attack, d, task.seed)) for d in wanted]
    if task.kind == "controls":
        return [(d, cell_path(results, sc, CLEAN_UPSTREAM, d, task.seed)) for d in scoring()]
    raise ValueError(f"a {task.kind} task writes no result file")


def is_done(task: Task, sc: Scenario, results: Path, registry, home: Path) -> bool:
    """Whether every result file the task would write exists, finished (status ok), for this exact scenario."""
    if task.kind == "upstream":
        return upstream_ready(sc, registry, home)
    return all(finished(p, sc, registry) for _, p in task_files(task, sc, results, registry))
