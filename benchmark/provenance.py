"""Where a number came from: code version, packages, hardware."""
from __future__ import annotations

import fnmatch
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

MAX_CHANGED = 50
# Tracked files that cannot change a number: the committed results (a grid rewrites them as it runs) and the docs.
NOT_CODE = ("leaderboard/results/*", "*.md")


def code_changes(changed: list[str]) -> list[str]:
    """The changed files that are code, scenarios or manifests, in the order given."""
    return [p for p in changed if not any(fnmatch.fnmatchcase(p, g) for g in NOT_CODE)]
PACKAGES = ("bdbench", "torch", "torchvision", "timm", "datasets", "huggingface-hub", "safetensors", "numpy",
            "scikit-learn")


@lru_cache(maxsize=1)
def git_state(repo: str | None = None) -> dict:
    """The commit, whether tracked files differ from it, and which (a copy of the tree whose .git is older, a
    cluster's or a GPU machine's, then still says what ran). Untracked files are not code that ran from here, nor
    are result files or docs (NOT_CODE): a grid writing into leaderboard/results leaves its later cells clean."""
    repo = repo or str(Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        diff = subprocess.run(["git", "-C", repo, "diff", "HEAD", "--name-only", "-z", "--no-renames"],
                              capture_output=True, text=True, timeout=10)
        if diff.returncode != 0:
            return {"commit": commit.stdout.strip(), "dirty": None}
        changed = sorted(code_changes([p for p in diff.stdout.split("\0") if p]))
        if len(changed) > MAX_CHANGED:
            changed = changed[:MAX_CHANGED] + [f"... and {len(changed) - MAX_CHANGED} more"]
        return {"commit": commit.stdout.strip(), "dirty": bool(changed), **({"changed": changed} if changed else {})}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def packages() -> dict:
    """Installed versions; bdbench's is the running code's own (run from a source tree on PYTHONPATH, as on a
    GPU machine or a cluster, it has no installed metadata, and an editable install's metadata can be stale)."""
    from . import __version__

    out = {}
    for name in PACKAGES:
        try:
            out[name] = __version__ if name == "bdbench" else metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def hardware(device: torch.device) -> dict:
    """The machine, with what makes CPU numbers differ between machines: the CPU model and the vector instruction
    set torch's kernels use (AVX2, AVX512, ...), which changes their floating-point order."""
    hw = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
          "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def collect(device: torch.device) -> dict:
    return {"git": git_state(), "packages": packages(), "hardware": hardware(device)}


def hardware_label(result) -> str:
    """Where a result's numbers were computed, in a few words: 'cpu, 2 cores', 'NVIDIA H200, 16 cores'. Takes a
    resultfile.Result or a file's JSON."""
    prov = result.get("provenance") if isinstance(result, dict) else result.provenance
    hw = (prov or {}).get("hardware") or {}
    return f"{hw.get('gpu') or hw.get('device', '?')}, {hw.get('cpu_count', '?')} cores"
