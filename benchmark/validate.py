"""`bdbench validate PATH`: everything CI checks on a submission, each failure saying what to fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .errors import BenchError
from .plugins import Attack, Defense
from .registry import Registry, default_roots, load_manifest


def validate(path: Path, time_limit: int = 600, workdir: Path | None = None) -> list[str]:
    """Return the problems found (empty: valid)."""
    path = Path(path).resolve()
    yml = path / "submission.yaml"
    if not yml.is_file():
        return [f"{yml} not found: a submission is a folder with submission.yaml and its module"]
    try:
        m = load_manifest(yml)
    except BenchError as e:
        return [f"manifest: {e}"]
    if path.parent.name != f"{m.kind}s":
        return [f"{path} must lie in a folder named {m.kind}s/ (submissions/{m.kind}s/{m.name}/)"]
    if path.name != m.name:
        return [f"the folder is named '{path.name}' but the manifest's name is '{m.name}': make them equal"]
    try:
        registry = Registry(default_roots() + [path])
        plugin = registry.create(m.kind, m.name)
    except BenchError as e:
        return [f"entry point: {e}"]
    problems = _conformance(plugin, m.kind)
    if problems:
        return problems
    return _tiny_run(m, path, time_limit, workdir)


def _conformance(plugin, kind: str) -> list[str]:
    cls = type(plugin)
    if kind == "attack":
        if cls.apply is Attack.apply:
            return [f"{cls.__name__} must implement apply(x) (the trigger on a float batch in [0, 1])"]
        for c in (1, 3):
            x = torch.rand(4, c, 32, 32, generator=torch.Generator().manual_seed(0))
            try:
                y = plugin.apply(x.clone())
            except RuntimeError as e:
                if "plant" in str(e):  # a learned trigger exists only after planting: the tiny run checks it
                    return []
                return [f"apply() raised on a ({', '.join(map(str, x.shape))}) batch: {type(e).__name__}: {e}"]
            except Exception as e:
                return [f"apply() raised on a ({', '.join(map(str, x.shape))}) batch: {type(e).__name__}: {e}"]
            if not torch.is_tensor(y) or y.shape != x.shape or y.dtype != x.dtype or y.device != x.device:
                return [f"apply() must return a tensor of the input's shape, dtype and device; got "
                        f"{getattr(y, 'shape', type(y))}"]
            if float(y.min()) < -1e-6 or float(y.max()) > 1 + 1e-6:
                return ["apply() must keep images in [0, 1] (clip the triggered image)"]
        return []
    if cls.run is Defense.run:
        return [f"{cls.__name__} must implement run(model, clean, ctx) returning a DefenseOutput"]
    return []


def _tiny_run(m, folder: Path, time_limit: int, workdir: Path | None) -> list[str]:
    args = ["--attack", m.name, "--defense"] if m.kind == "attack" else ["--attack", "badnets", "--defense", m.name]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ}
        if workdir is not None:
            env["BDBENCH_HOME"] = str(workdir)
        cmd = [sys.executable, "-m", "benchmark", "run", "digits", *args, "--seeds", "0", "--quiet",
               "--submissions", str(folder), "--results", tmp]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=time_limit, env=env)
        except subprocess.TimeoutExpired:
            return [f"the tiny run on the default scenario did not finish within {time_limit} s: make it faster "
                    f"(or raise --time-limit): {' '.join(cmd)}"]
        if r.returncode != 0:
            return [f"the tiny run failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}"]
        failed = []
        for p in Path(tmp).rglob("*.json"):
            res = json.loads(p.read_text())
            if res["status"] != "ok":
                e = res["error"]
                failed.append(f"cell {p.relative_to(tmp)} failed: {e['type']}: {e['message']} "
                              f"({''.join(e.get('traceback', [])[-2:]).strip()[-600:]})")
        return failed
