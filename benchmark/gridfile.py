"""Grid files: many scenarios x attacks x defenses x seeds, as one declarative YAML file, and the catalogue of
every scenario this checkout can run (shipped scenarios, shipped grids' expansions, ci/experiments).
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
Running a grid: grid.py; its tasks and what counts as finished: tasks.py.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import Invalid, parse, read_yaml
from .errors import BenchError, ConfigError
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


def tiers() -> dict[tuple[str, int], tuple[str, str]]:
    """(name, version) of each shipped grid's scenarios -> (tier, application): the tier is the grid and its
    upstream architecture (e.g. 'cpu: resnet18', 'pretrained: tf_efficientnet_lite0'), the application the name of
    the downstream dataset. Only the versions the grid files name now: the current tier, not its archive."""
    out, claimed = {}, {}
    for p in sorted(SHIPPED.glob("*.yaml")):
        is_grid, scenarios = _quiet_load(p)
        for s in scenarios if is_grid else ():
            d = s.downstream.data
            if d is None:
                continue
            app = {"local": lambda: Path(d.path).name, "derived": lambda: d.name}.get(
                d.source, lambda: (d.id or d.source).split("/")[-1])()
            tier = f"{p.stem}: {s.upstream.arch}"
            if claimed.setdefault((tier, app), s.name) != s.name:  # two scenarios of one cell: keep them apart
                app = f"{app} ({s.name})"
            out[(s.name, s.version)] = (tier, app)
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
