"""Running a grid (see gridfile.py for the file): its tasks (tasks.py) phase by phase, on a process pool or Ray
(executors.py). Finished work is never redone: a task whose result files are all finished is skipped without
loading anything, and every stage it would compute is cached in the content-addressed store (see store.py), so a
killed grid resumes where it stopped.
"""
from __future__ import annotations

import fnmatch
import time
from pathlib import Path

from .errors import BenchError
from .gridfile import load_grid, select
from .tasks import Task, is_done, plan_tasks


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
