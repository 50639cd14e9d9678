"""Where a number came from: code version, packages, hardware."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("bdbench", "torch", "torchvision", "timm", "datasets", "huggingface-hub", "safetensors", "numpy", "scikit-learn")


@lru_cache(maxsize=1)
def git_state(repo: str | None = None) -> dict:
    repo = repo or str(Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        # which tracked files differ from the commit: a copy of the tree whose .git is older (a cluster's or a
        # GPU machine's) then still says what ran
        changed = sorted(line[3:] for line in dirty.stdout.splitlines() if line.strip())
        return {"commit": commit.stdout.strip(), "dirty": bool(changed), **({"changed": changed[:50]} if changed else {})}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def packages() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware(device: torch.device) -> dict:
    hw = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def collect(device: torch.device) -> dict:
    return {"git": git_state(), "packages": packages(), "hardware": hardware(device)}
