"""Grids: many scenarios x attacks x defenses x seeds, as one declarative YAML file.

    name: cpu-tier
    scenarios: [cpu-cifar10-chest]          # shipped names or paths (relative to this file)
    vary:                                   # optional: the cartesian product of overrides, by dotted key
      upstream.arch: {resnet18: resnet18, mobilenet: mobilenetv3_small_050}   # label: value (or a list)
      "upstream.arch,image.size": {incv3: [inception_v3, 299]}                 # several keys move together
    adjust:                                 # optional: more settings for the scenarios of one vary label
      mobilenet: {version: 2, upstream.train.epochs: 20}                        # e.g. a recipe per architecture
    attacks: [badnets, blended]             # optional: replace each scenario's lists
    defenses: [finetune]
    seeds: [0, 1, 2]

Each combination is a scenario of its own, named `<scenario>-<label>...`, versioned with its base file
(or its `adjust`) and hashed over the base file and its overrides; an `adjust` entry joins the hash of the
scenarios with its label only, so adding one leaves every other scenario's hash, and so its results, as they were.
A grid runs as tasks: the clean upstream of every
scenario first (so parallel workers never train it twice), then one task per (scenario, attack, seed)
with all its defenses, then the clean-upstream controls. Finished work is never redone: a task whose
result files all exist (status ok, same scenario: see same_scenario) is skipped without loading anything,
and every stage it would compute is cached in the content-addressed store (see store.py), so a killed grid
resumes where it stopped.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import itertools
import time
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from .config import Invalid, parse, read_yaml
from .errors import BenchError, ConfigError
from .results import superseded
from .scenario import PluginSpec, Scenario, from_dict, resolve


@dataclass
class GridFile:
    name: str
    scenarios: list[str]
    vary: dict[str, Any] = field(default_factory=dict)
    adjust: dict[str, dict[str, Any]] = field(default_factory=dict)
    attacks: Optional[list[PluginSpec]] = None
    defenses: Optional[list[PluginSpec]] = None
    seeds: Optional[list[int]] = None
    description: str = ""

    def check(self):
        if not self.scenarios:
            raise Invalid("scenarios", "needs at least one scenario")
        for k, v in self.vary.items():
            if not isinstance(v, (list, dict)) or not v:
                raise Invalid(f"vary.{k}", "give a non-empty list of values or a mapping label -> value")
        for label, settings in self.adjust.items():  # keys are checked against the labels and scenario names
            if not isinstance(settings, dict) or not settings:
                raise Invalid(f"adjust.{label}", "give a mapping dotted.key -> value, e.g. {upstream.train.epochs: 20}")


def _axis(key: str, values) -> list[tuple[str, Any]]:
    if isinstance(values, dict):
        return [(str(label), v) for label, v in values.items()]
    return [(str(v).replace("/", "_"), v) for v in values]


def _set(d: dict, dotted: str, value, file, key) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            raise ConfigError(file, key, f"'{dotted}' does not name a setting of the scenario (no mapping '{p}')")
        d = d[p]
    d[parts[-1]] = copy.deepcopy(value)


SHIPPED = Path(__file__).parent / "grids"


def select(sc: Scenario, attacks=None, defenses=None, seeds=None, clean_seeds=None) -> Scenario:
    """The scenario restricted to these attack / defense ids and seeds (None: keep; [] defenses: none). The
    scenario itself (name, version, hash) is unchanged: a subset of its cells."""
    import dataclasses
    for kind, want, have in (("attack", attacks, sc.attacks), ("defense", defenses, sc.defenses)):
        unknown = sorted(set(want or []) - {p.id for p in have})
        if unknown:
            raise BenchError(f"scenario {sc.name} has no {kind} {unknown}; it has {[p.id for p in have]}")
    return dataclasses.replace(
        sc, attacks=[a for a in sc.attacks if attacks is None or a.id in attacks],
        defenses=[d for d in sc.defenses if defenses is None or d.id in defenses],
        seeds=list(seeds) if seeds is not None else sc.seeds,
        clean_seeds=list(clean_seeds) if clean_seeds is not None else sc.clean_seeds)


def load_grid(path: str | Path, registry=None) -> tuple[GridFile, list[Scenario]]:
    """The grid and its expanded, validated scenarios. A plain scenario file (or shipped scenario name) is a
    grid of one; a shipped grid is found by name in benchmark/grids/."""
    path = Path(path)
    if not path.exists() and (SHIPPED / f"{path}.yaml").is_file():
        path = SHIPPED / f"{path}.yaml"
    raw = path.read_bytes() if path.is_file() else None
    data = read_yaml(raw, path) if raw is not None else None
    if raw is None or not (isinstance(data, dict) and "scenarios" in data):
        from .scenario import load_scenario
        sc = load_scenario(str(path), registry)
        return GridFile(name=sc.name, scenarios=[str(path)]), [sc]
    grid = parse(GridFile, data, file=path)
    out = []
    axes = [[(k, label, v) for label, v in _axis(k, vals)] for k, vals in grid.vary.items()]
    bases = []
    for ref in grid.scenarios:
        base_path = resolve(ref if Path(ref).suffix not in (".yaml", ".yml") else str(path.parent / ref))
        base_raw = base_path.read_bytes()
        base = read_yaml(base_raw, base_path)
        if not isinstance(base, dict) or not isinstance(base.get("name"), str):
            raise ConfigError(base_path, "name", "a scenario file is a mapping with a 'name'; see benchmark/scenarios/")
        bases.append(base["name"])
        for combo in itertools.product(*axes) if axes else [()]:
            d = copy.deepcopy(base)
            for k, label, v in combo:
                keys = [x.strip() for x in k.split(",")]
                vals = v if len(keys) > 1 else [v]
                if len(vals) != len(keys):
                    raise ConfigError(path, f"vary.{k}.{label}", f"give {len(keys)} values, one per key in '{k}'")
                for kk, vv in zip(keys, vals):
                    _set(d, kk, vv, path, f"vary.{k}")
            # a vary label's settings, then the base scenario's own (by name), which win
            adjusted = [[label, grid.adjust[label]] for _, label, _ in combo if label in grid.adjust] + \
                ([[base["name"], grid.adjust[base["name"]]]] if base["name"] in grid.adjust else [])
            for label, settings in adjusted:
                for kk, vv in settings.items():
                    _set(d, kk, vv, path, f"adjust.{label}.{kk}")
            for k in ("attacks", "defenses", "seeds"):
                if data.get(k) is not None:
                    d[k] = copy.deepcopy(data[k])
            if combo:
                d["name"] = "-".join([d["name"]] + [label for _, label, _ in combo])
            overrides = json.dumps([[k, label, v] for k, label, v in combo] + [data.get(k) for k in
                                   ("attacks", "defenses", "seeds")] + ([["adjust", adjusted]] if adjusted else []),
                                   sort_keys=True, default=str)
            sha = hashlib.sha256(base_raw + overrides.encode()).hexdigest()
            try:
                out.append(from_dict(d, base_path, sha, registry))
            except ConfigError as e:
                raise BenchError(f"{path}: scenario {d.get('name')} (from {base_path} with "
                                 f"{', '.join(f'{k}={label}' for k, label, _ in combo) or 'no overrides'}): "
                                 f"{e}") from None
    labels = {label for axis in axes for _, label, _ in axis}
    for key in grid.adjust:
        if key in labels and key in bases:
            raise ConfigError(path, f"adjust.{key}", "is both a vary label and a scenario's name; rename the label")
        if key not in labels and key not in bases:
            raise ConfigError(path, f"adjust.{key}", f"neither a vary label nor a scenario's name (labels: "
                                                     f"{sorted(labels)}; scenarios: {bases})")
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BenchError(f"{path}: the grid expands to duplicate scenario names {dup}; give the vary values labels")
    return grid, out


# ---------------------------------------------------------------- tasks

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


def same_scenario(r: dict, sc: Scenario, registry=None) -> bool:
    """Whether result `r` was computed for this scenario: by the same file (sha256), or by the same recipe (see
    scenario.recipe_hash) with its attack and defense as this scenario states them, so that adding an attack, a
    defense or a seed to a scenario file keeps every finished cell (the parameter check needs the registry)."""
    s = r.get("scenario") or {}
    if s.get("sha256") == sc.sha256:
        return True
    if s.get("recipe") is None or s.get("recipe") != sc.recipe or registry is None:
        return False
    for kind, specs in (("attack", sc.attacks), ("defense", sc.defenses)):
        p = r.get(kind)
        if p is None or (kind == "attack" and r.get("control")):
            continue  # the no-defense cell; a control's clean upstream is part of the recipe
        spec = next((x for x in specs if x.id == p.get("id")), None)
        if spec is None or spec.name != p.get("name") or p.get("name") not in registry.names(kind) or \
                json.loads(json.dumps(registry.resolve_params(kind, spec.name, spec.params))) != p.get("params"):
            return False
    return True


def _ok(path: Path, sc: Scenario, registry=None) -> bool:
    """Finished: status ok, for this scenario (same_scenario), and (where the file records it) computed by the
    plugins' current code: a submission whose source changed since has its cells redone (its stages are keyed by
    its code, so only they recompute)."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if r.get("status") != "ok" or not same_scenario(r, sc, registry):
        return False
    if r.get("defense") and superseded(r):  # scored before a harness fix that changed what it measures
        return False
    for kind in ("attack", "defense"):
        p = r.get(kind) or {}
        if registry is not None and p.get("code") is not None and p.get("name") in registry.names(kind) \
                and p["code"] != registry.code_hash(kind, p["name"]):
            return False
    return True


def upstream_ready(sc: Scenario, registry, home: Path) -> bool:
    import torch

    from .pipeline import Runner
    from .store import Store
    try:
        Runner(sc, registry, Store(home), Path("."), torch.device("cpu"), progress=False, log=lambda m: None,
               build=False).clean_upstream()
        return True
    except BenchError:
        return False


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
        return [(d, cell_path(results, sc, "clean-upstream", d, task.seed)) for d in scoring()]
    raise ValueError(f"a {task.kind} task writes no result file")


def is_done(task: Task, sc: Scenario, results: Path, registry, home: Path) -> bool:
    """Whether every result file the task would write exists, finished (status ok), for this exact scenario."""
    if task.kind == "upstream":
        return upstream_ready(sc, registry, home)
    return all(_ok(p, sc, registry) for _, p in task_files(task, sc, results, registry))


def run(grid_path: Path, *, home: Path, results: Path, registry, executor: str = "local", workers: int = 1,
        threads: int = 0, device: str = "auto", isolate: bool | str = True, address: str | None = None,
        gpus_per_task: float = 0.0, progress: bool = True, log=print, only: dict | None = None) -> dict:
    """Run every unfinished task of the grid, phase by phase; returns counts for the caller to report.
    `only`: {scenarios, attacks, defenses, seeds} restricting what runs (None entries: everything)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from . import executors

    grid, scenarios = load_grid(grid_path, registry)
    only = {k: v for k, v in (only or {}).items() if v is not None}
    scenarios = [select(s, only.get("attacks"), only.get("defenses"), only.get("seeds"), only.get("clean_seeds"))
                 for s in scenarios
                 if "scenarios" not in only or any(fnmatch.fnmatch(s.name, p) for p in only["scenarios"])]
    if not scenarios:
        raise BenchError(f"{grid_path}: no scenario matches {only.get('scenarios')}")
    from .plan import preflight
    for s in scenarios:
        preflight(s, registry)  # fail now, not after the first clean upstream has trained
    by_name = {s.name: s for s in scenarios}
    phases = plan_tasks(scenarios, registry)
    total = sum(len(p) for p in phases)
    base = {"grid": str(Path(grid_path).resolve() if Path(grid_path).exists() else grid_path), "only": only,
            "roots": [str(r) for r in registry.roots], "home": str(home),
            "results": str(results), "device": device, "isolate": isolate, "threads": threads}
    counts = {"tasks": total, "skipped": 0, "ran": 0, "failed_tasks": 0, "failed_cells": 0, "computed": 0}
    errors = []
    t0 = time.perf_counter()
    def unfinished(tasks):
        return [t for t in tasks if not is_done(t, by_name[t.scenario], results, registry, home)]
    # each task's line says how far the run is and its ETA: a log file (nohup, a batch job) gets no progress bar.
    # A phase's count is exact once the phases before it are finished (which controls a scenario needs shows in its
    # cells' files); until then all its tasks count as left, and each phase with work counts again when it starts.
    pending = 0
    for p in phases:
        pending += len(unfinished(p)) if not pending else len(p)
    log(f"[grid] {grid.name}: {total} tasks, {total - pending} finished before, {pending} to run")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        tid = bar.add_task(f"grid {grid.name}", total=total)
        for i, phase in enumerate(phases):
            waiting = unfinished(phase)
            counts["skipped"] += len(phase) - len(waiting)
            bar.advance(tid, len(phase) - len(waiting))
            todo = [{**base, "kind": t.kind, "scenario": t.scenario, "attack": t.attack, "seed": t.seed,
                     "sha256": by_name[t.scenario].sha256} for t in waiting]
            if not todo:
                continue
            pending = counts["ran"] + len(todo) + sum(len(p) for p in phases[i + 1:])
            if executor == "ray":
                stream = executors.ray(todo, address, max(1, threads or 1), gpus_per_task)
            elif workers > 1:
                stream = executors.local(todo, workers)
            else:
                stream = executors.serial(todo)
            for r in stream:
                counts["ran"] += 1
                j = r["job"]
                label = Task(j["kind"], j["scenario"], j["attack"], j["seed"]).label
                left = eta(time.perf_counter() - t0, counts["ran"], pending - counts["ran"])
                where = f"[{counts['ran']}/{pending}, {left}]"
                if r["ok"]:
                    counts["failed_cells"] += r["failed"]
                    counts["computed"] += r["computed"]
                    log(f"[done] {where} {label}: {r['cells']} cells ({r['failed']} failed), {r['computed']} "
                        f"stages computed, {r['wall']:.1f} s")
                else:
                    counts["failed_tasks"] += 1
                    errors.append(f"{label}: {r['error']}")
                    log(f"[failed] {where} {label}: {r['error']}")
                bar.advance(tid)
    counts["wall_s"] = time.perf_counter() - t0
    counts["errors"] = errors
    counts["scenarios"] = [(s.name, s.version) for s in scenarios]  # results.scenario_key of each
    return counts


def eta(elapsed: float, ran: int, left: int) -> str:
    """Time left for `left` tasks at the rate the `ran` tasks of this run went (parallel workers included). Tasks
    differ in size (a clean upstream against one defense), so this is a rough guide, as the bar's ETA is."""
    if left <= 0:
        return "ETA 0:00:00"
    if not ran:
        return "ETA unknown"
    s = round(elapsed / ran * left)
    return f"ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---------------------------------------------------------------- where a result's scenario comes from

def grid_expansion(name: str, registry=None) -> Optional[tuple[str, Scenario]]:
    """(grid name, scenario) for the shipped grid expansion called `name` (e.g. cpu-cifar10-gtsrb-resnet18 from
    the `cpu` grid), so that `bdbench run` and `show` take the names the leaderboard prints; None if none is."""
    for grid_name, names in expansion_names().items():
        if name in names:
            _, scenarios = load_grid(SHIPPED / f"{grid_name}.yaml", registry)  # with the registry: parameters checked
            return grid_name, next(s for s in scenarios if s.name == name)
    return None


def expansion_names() -> dict[str, list[str]]:
    """Shipped grid name -> the names of the scenarios it expands to."""
    out = {}
    for p in sorted(SHIPPED.glob("*.yaml")):
        is_grid, scenarios = _quiet_load(p)
        if is_grid:
            out[p.stem] = [s.name for s in scenarios]
    return out


def known_scenarios(repo: Optional[Path] = None) -> list[tuple[str, Scenario]]:
    """Every scenario this checkout can run, as (the command prefix that runs it, the scenario): `bdbench run NAME`
    (shipped), `bdbench grid GRID --scenario NAME` (a shipped grid's expansion), or for a file under
    ci/experiments/ `bdbench run FILE` (a scenario) or `bdbench grid FILE --scenario NAME` (a grid)."""
    from .scenario import SHIPPED as SCENARIOS
    repo = repo or Path(__file__).resolve().parent.parent
    files = [(p, p.stem) for p in sorted(Path(str(SCENARIOS)).glob("*.yaml"))] + \
            [(p, p.stem) for p in sorted(SHIPPED.glob("*.yaml"))] + \
            [(p, p.relative_to(repo).as_posix()) for p in sorted((repo / "ci" / "experiments").glob("*.yaml"))]
    out = []
    for p, ref in files:
        is_grid, scenarios = _quiet_load(p)
        out += [(f"bdbench grid {ref} --scenario {s.name}" if is_grid else f"bdbench run {ref}", s) for s in scenarios]
    return out


def reproducers(repo: Optional[Path] = None) -> dict:
    """known_scenarios' commands by scenario sha256, recipe hash and (name, version). The leaderboard prints these
    beside each row; grid names and experiment files are what `bdbench run NAME` alone would not find. The first
    file to name a scenario wins."""
    out: dict = {}
    for cmd, s in known_scenarios(repo):
        for key in (s.sha256, s.recipe, (s.name, s.version)):
            out.setdefault(key, cmd)
    return out


def _quiet_load(path: Path) -> tuple[bool, list[Scenario]]:
    """(whether the file is a grid, its scenarios); a broken file names no reproducer (`bdbench plan FILE` says why)."""
    try:
        g, scenarios = load_grid(path)
    except BenchError:
        return False, []
    return g.scenarios != [str(path)], scenarios
