"""`bdbench plan`: validate a scenario or grid and say what it would run and roughly what it costs,
without downloading or training anything (models are built on the meta device to count FLOPs)."""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from statistics import median
from pathlib import Path
from typing import Optional

from .provenance import hardware_label
from .scenario import DataSpec, Scenario


@functools.lru_cache(maxsize=None)
def gflops(arch: str, size: int, channels: int, classes: int = 10) -> float:
    """Forward GFLOPs (2 x multiply-adds) of one image, counted by torch's FlopCounterMode on meta tensors."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=classes, in_chans=channels).eval()
        x = torch.empty(1, channels, size, size)
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 1e9


def sizes(spec: DataSpec, base: Path) -> tuple[Optional[int], Optional[int]]:
    """(train, test) image counts: from the label column of a local dataset's parquet files (after `classes` and the
    per-class limits), the bundled digits, or the scenario's n_train / n_test hints."""
    if spec.source == "sklearn-digits":
        from sklearn.datasets import load_digits
        y = load_digits().target
        n = int(sum(1 for v in y if spec.classes is None or v in spec.classes))
        return n - round(n * spec.test_fraction), round(n * spec.test_fraction)
    if spec.source == "local":
        folder = (base / spec.path).resolve()
        tr, te = (_count(_parquet_label_list(folder, split, spec.label_column), spec.classes, k)
                  for split, k in ((spec.train_split, spec.train_per_class), (spec.test_split, spec.test_per_class)))
        if tr:
            return tr, te
    if spec.train_per_class or spec.test_per_class:
        return None, None  # the hints count the whole dataset
    return spec.n_train, spec.n_test


def labels(spec: DataSpec, base: Path) -> Optional[frozenset[int]]:
    """The label values of a dataset's train split, where they can be read without downloading (a local parquet
    dataset, the bundled digits); None when unknown (a Hub dataset not at hand)."""
    if spec.source == "sklearn-digits":
        return frozenset(range(10))
    if spec.source == "local":
        return _parquet_labels((base / spec.path).resolve(), spec.train_split, spec.label_column)
    return None


def _count(labels: Optional[tuple[int, ...]], classes, per_class) -> Optional[int]:
    if not labels:
        return None
    counts = Counter(v for v in labels if classes is None or v in classes)
    return sum(min(n, per_class or n) for n in counts.values())


@functools.lru_cache(maxsize=None)
def _parquet_label_list(folder: Path, split: str, column: str) -> Optional[tuple[int, ...]]:
    """Read once per folder: a grid preflights every scenario, and most share their upstream data."""
    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    try:
        import pyarrow.parquet as pq
        return tuple(int(v) for f in files for v in pq.read_table(f, columns=[column]).column(column).to_pylist()) \
            or None
    except Exception:  # noqa: BLE001 - another layout: the run's own loader checks it
        return None


def _parquet_labels(folder: Path, split: str, column: str) -> Optional[frozenset[int]]:
    values = _parquet_label_list(folder, split, column)
    return frozenset(values) if values else None


def preflight(sc: Scenario, registry) -> None:
    """What would otherwise fail only after the clean upstream has trained (hours on a GPU tier): local data
    folders that do not exist, `classes` or an attack target the data does not have, plugin parameters the
    plugin's own constructor rejects, and pinned upstream weights whose package or file is not installed. Raises
    ConfigError / BenchError naming the file and key."""
    from .errors import ConfigError
    base = sc.base_dir
    n_classes = {}
    for key, spec in (("upstream.data", sc.upstream.data), ("downstream.data", sc.downstream.data)):
        if spec is None:  # protocol none: no downstream task
            continue
        if spec.source == "local" and not (base / spec.path).is_dir():
            raise ConfigError(sc.file, f"{key}.path", f"folder {(base / spec.path).resolve()} does not exist (paths "
                              "are relative to the scenario file)")
        have = labels(spec, base)
        if have is not None and spec.classes is not None:
            missing = sorted(set(spec.classes) - have)
            if missing:
                raise ConfigError(sc.file, f"{key}.classes", f"labels {missing} do not occur in the data "
                                  f"(it has {sorted(have)})")
        n_classes[key] = len(spec.classes) if spec.classes is not None else (len(have) if have else None)
    n_up = n_classes["upstream.data"]
    if n_up is not None and sc.attack.target >= n_up:
        raise ConfigError(sc.file, "attack.target", f"class {sc.attack.target} does not exist upstream "
                          f"({n_up} classes: 0..{n_up - 1})")
    for kind, specs in (("attack", sc.attacks), ("defense", sc.defenses)):
        for i, spec in enumerate(specs):
            registry.create(kind, spec.name, spec.params, where=f"{sc.file}: key '{kind}s[{i}]'")
    if sc.upstream.weights is not None:  # the pinned weights' package is installed and ships the file
        from . import weights
        weights.source(sc)


@dataclass
class Estimate:
    scenario: Scenario
    cells: int
    gflops_up: float
    gflops_down: float
    n: dict
    train_pflop: Optional[float]   # training passes (forward + backward = 3 x forward)
    eval_pflop: Optional[float]

    def hours(self, tflops: float) -> Optional[float]:
        if self.train_pflop is None:
            return None
        return (self.train_pflop + self.eval_pflop) * 1e3 / tflops / 3600


def estimate(sc: Scenario) -> Estimate:
    base = sc.base_dir
    up_tr, up_te = sizes(sc.upstream.data, base)
    dn_tr, dn_te = sizes(sc.downstream.data, base) if sc.downstream.transfers else (0, 0)
    n = {"upstream train": up_tr, "upstream test": up_te, "downstream train": dn_tr, "downstream test": dn_te}
    g_up = gflops(sc.upstream.arch, sc.image.size, sc.image.channels)
    g_dn = gflops(sc.upstream.arch, sc.image.size, sc.image.channels, 2)
    runs = len(sc.attacks) * len(sc.seeds)
    cells = runs * (1 + len(sc.defenses))
    if None in (up_tr, up_te, dn_tr, dn_te):
        return Estimate(sc, cells, g_up, g_dn, n, None, None)
    clean_seeds = len(set(sc.seeds) | set(sc.clean_seeds or []))
    train = (sc.upstream.train.epochs * up_tr * g_up                        # once per scenario
             + runs * sc.attack.inject.epochs * up_tr * g_up                # plant, per attack and seed
             + ((runs + clean_seeds) * sc.downstream.train.epochs * dn_tr * g_dn  # transfers
                if sc.downstream.transfers else 0))
    evals = runs * (4 * up_te * g_up + 4 * dn_te * g_dn)                    # clean + triggered, both models
    return Estimate(sc, cells, g_up, g_dn, n, 3 * train / 1e6, evals / 1e6)


def print_plan(scenarios: list[Scenario], tflops: float, console=None) -> list[Estimate]:
    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=160)
    t = Table(title=f"plan: {len(scenarios)} scenario(s); time at a sustained {tflops:g} TFLOP/s", title_justify="left")
    for col in ("scenario", "arch", "px", "GFLOPs/img", "images up / down (train)", "attacks x seeds", "defenses",
                "cells", "PFLOP", "hours"):
        t.add_column(col, justify="left" if col in ("scenario", "arch") else "right")
    out, total_h, total_cells = [], 0.0, 0
    for sc in scenarios:
        e = estimate(sc)
        out.append(e)
        h = e.hours(tflops)
        total_h += h or 0
        total_cells += e.cells
        t.add_row(sc.name, sc.upstream.arch, str(sc.image.size), f"{e.gflops_up:.3g}",
                  f"{e.n['upstream train'] or '?'} / "
                  + (f"{e.n['downstream train'] or '?'}" if e.scenario.downstream.transfers else "no transfer"),
                  f"{len(sc.attacks)} x {len(sc.seeds)}", str(len(sc.defenses)), str(e.cells),
                  "?" if e.train_pflop is None else f"{e.train_pflop + e.eval_pflop:.2f}",
                  "?" if h is None else f"{h:.2f}")
    console.print(t)
    console.print(f"{total_cells} cells; about {total_h:.1f} hours of training and evaluation at {tflops:g} TFLOP/s "
                  "(defenses not included; '?' where a dataset's size is unknown: give n_train / n_test).",
                  style="dim")
    return out


@dataclass
class Progress:
    scenario: Scenario
    done: int            # result files finished (cells and controls)
    total: int
    seconds: float       # measured wall time of what is left
    unmeasured: int      # stages left that no finished result of this scenario has timed
    hardware: str        # where the timings were measured (the most common, from the files' provenance)
    controls_known: bool  # every defense has a finished cell, so which ones need clean-upstream controls is known
    spent: float = 0.0   # measured wall time of the finished files' stages, each distinct artifact once

    @property
    def lower_bound(self) -> bool:
        return bool(self.unmeasured) or not self.controls_known




def progress(sc: Scenario, results: Path, registry) -> Progress:
    """What of a scenario a results folder holds, and what the rest would take at the stage wall times recorded in
    its finished result files (those measured on the most common hardware): the median over distinct artifacts of
    each stage (the injection per attack, each defense on its own). Assumes the artifact store that computed the
    finished cells is at hand, so a stage a finished file records (an attack's injection and transfer at a seed,
    a seed's clean transfer, shared by its attacks and controls) is not redone; a stage never timed in this
    scenario is counted in `unmeasured`, not guessed."""
    from .resultfile import read_if_valid
    from .tasks import finished, plan_tasks, same_scenario, task_files
    folder = Path(results) / f"{sc.name}-v{sc.version}"
    rows = []
    for f in folder.glob("*/*/seed-*.json"):
        r = read_if_valid(f)
        if r is not None and r.ok and same_scenario(r, sc, registry):
            rows.append((f, r))
    hardware = Counter(hardware_label(r) for _, r in rows).most_common(1)[0][0] if rows else "-"
    timed: dict = {}  # (stage, attack or defense id or None) -> {artifact key: seconds}
    spent: dict = {}  # (stage, artifact key) -> seconds, on any hardware
    cached = set()    # ("backdoor", attack id, seed) and ("clean", seed): stages the store holds
    for f, r in rows:
        attack, defense, wall = r.attack_id, r.defense_id, r.wall_time_s
        artifact = {stage: r.artifacts.get(stage, f"{f}:{stage}") for stage in wall}
        spent.update({(stage, artifact[stage]): secs for stage, secs in wall.items()})
        if "backdoor" in wall and "downstream" in wall:
            cached.add(("backdoor", attack, r.seed))
        if "downstream_clean" in wall:
            cached.add(("clean", r.seed))
        if hardware_label(r) != hardware:
            continue
        for stage, secs in wall.items():
            key = {"backdoor": attack, "defense": defense}.get(stage)
            timed.setdefault(("downstream" if stage == "downstream_clean" else stage, key), {})[artifact[stage]] = secs
    med = {k: median(v.values()) for k, v in timed.items()}
    left = {"seconds": 0.0, "unmeasured": 0}

    def add(stage, key=None):
        if (stage, key) in med:
            left["seconds"] += med[(stage, key)]
        else:
            left["unmeasured"] += 1

    def needs(stage, *key):  # a stage no finished file records: computed once, then cached
        if (stage, *key) not in cached:
            cached.add((stage, *key))
            return True
        return False
    done = total = 0
    _, cells, controls = plan_tasks([sc], registry)
    if not rows:
        add("upstream")
    for task in cells + controls:
        files = task_files(task, sc, results, registry)
        missing = [d for d, p in files if not finished(p, sc, registry)]
        done, total = done + len(files) - len(missing), total + len(files)
        if not missing:
            continue
        if needs("clean", task.seed):
            add("downstream")
        if task.kind == "cell" and needs("backdoor", task.attack, task.seed):
            add("backdoor", task.attack), add("downstream")
        for d in missing:
            if d is not None:
                add("defense", d)
    defended = {r.defense_id for _, r in rows if r.role != "clean-upstream"}
    return Progress(sc, done, total, left["seconds"], left["unmeasured"], hardware,
                    all(d.id in defended for d in sc.defenses), sum(spent.values()))


def print_progress(scenarios: list[Scenario], results: Path, registry, console=None) -> list[Progress]:
    from rich.console import Console
    from rich.table import Table
    console = console or Console(width=160)
    t = Table(title=f"progress in {results} (time left at the stage times its finished files measured)",
              title_justify="left")
    for col in ("scenario", "results done", "measured on", "hours spent", "hours left", "stages never timed"):
        t.add_column(col, justify="left" if col in ("scenario", "measured on") else "right")
    out = [progress(sc, results, registry) for sc in scenarios]
    for p in out:
        t.add_row(p.scenario.name, f"{p.done} / {p.total}", p.hardware, f"{p.spent / 3600:.1f}",
                  f"{'>= ' if p.lower_bound else ''}{p.seconds / 3600:.1f}", str(p.unmeasured))
    console.print(t)
    console.print(f"{sum(p.done for p in out)} of {sum(p.total for p in out)} result files finished, whose stages took "
                  f"{sum(p.spent for p in out) / 3600:.1f} hours (each stage once, as its files recorded it, on "
                  "whatever hardware ran it; evaluation not included); about "
                  f"{sum(p.seconds for p in out) / 3600:.1f} hours left on the hardware that measured them, plus "
                  f"{sum(p.unmeasured for p in out)} stages never timed; '>=' also where a defense has no finished "
                  "cell yet (controls are counted for the defenses that gave a model score so far).", style="dim")
    return out
