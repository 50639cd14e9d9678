"""Content-addressed stage artifacts: `<root>/<stage>/<key>/{model.safetensors, meta.json}`.

The key is a hash of everything that determines the artifact (its spec, which includes the keys of
the artifacts it was built from), so a rerun finds finished work and any change of input builds
anew. Writes are atomic (a temporary folder renamed into place): a killed run leaves no half
artifact, and loses none that finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from safetensors.torch import load_file, save_file

from . import models
from .errors import CheckpointError

FORMAT = 1


def key_of(stage: str, spec: dict) -> str:
    blob = json.dumps({"format": FORMAT, "stage": stage, "spec": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Artifact:
    stage: str
    key: str
    folder: Path
    meta: dict

    @property
    def has_model(self) -> bool:
        return "model" in self.meta

    def _verified(self, entry: dict) -> Path:
        path = self.folder / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; delete {self.folder} to rebuild it")
        if file_sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: sha256 does not match its meta.json (tampered or corrupt); "
                                  f"delete {self.folder} to rebuild it")
        return path

    def model(self) -> models.Classifier:
        model = models.load(self._verified(self.meta["model"]), self.meta["model"]["config"])
        return models.check_finite(model, f"{self.folder}/model.safetensors (stage {self.stage})")

    def tensors(self, name: str) -> dict:
        """Named tensors saved beside the model (e.g. an attack's learned trigger); {} if none."""
        entry = self.meta.get("tensors", {}).get(name)
        return load_file(str(self._verified(entry))) if entry else {}


def _named(spec: dict) -> str:
    """What a stage spec trains, in words: its plugin names and seed."""
    parts = [f"{k} '{spec[k]['name']}'" for k in ("attack", "defense")
             if isinstance(spec.get(k), dict) and "name" in spec[k]]
    return ", ".join(parts + ([f"seed {spec['seed']}"] if "seed" in spec else [])) or "clean"


@dataclass
class Store:
    root: Path
    computed: list[tuple[str, str]] = field(default_factory=list)  # (stage, key) built by this process

    def __post_init__(self):
        self.root = Path(self.root)

    def get(self, stage: str, spec: dict) -> Optional[Artifact]:
        key = key_of(stage, spec)
        folder = self.root / stage / key
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None
        return Artifact(stage, key, folder, json.loads(meta_path.read_text()))

    def build(self, stage: str, spec: dict, fn: Callable[[], tuple[Optional[models.Classifier], dict]]) -> Artifact:
        """Return the artifact for (stage, spec), running `fn` -> (model or None, meta) only if absent.
        `meta["tensors"]`, if given, maps names to {str: Tensor}, each saved as `<name>.safetensors`."""
        found = self.get(stage, spec)
        if found is not None:
            return found
        key = key_of(stage, spec)
        t0 = time.perf_counter()
        model, meta = fn()
        wall = time.perf_counter() - t0
        if model is not None:  # a diverged model is not stored: every cell built on it would be an artefact
            models.check_finite(model, f"the {stage} stage's model ({_named(spec)}, not stored)")
        final = self.root / stage / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}-"))
        try:
            meta = {"stage": stage, "key": key, "spec": spec, "wall_time_s": wall,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
            tensors = meta.pop("tensors", None) or {}
            for name, tdict in tensors.items():
                if tdict:
                    path = tmp / f"{name}.safetensors"
                    save_file({k: v.detach().cpu().contiguous() for k, v in tdict.items()}, str(path))
                    meta.setdefault("tensors", {})[name] = {"file": path.name, "sha256": file_sha256(path)}
            if model is not None:
                path = tmp / "model.safetensors"
                models.save(model.cpu(), path)
                meta["model"] = {"file": "model.safetensors", "sha256": file_sha256(path), "config": model.config}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            try:
                os.replace(tmp, final)  # atomic; fails if another run has put the same artifact there
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp)  # another run finished the same stage first: keep theirs
                self.computed.append((stage, key))
                return Artifact(stage, key, final, json.loads((final / "meta.json").read_text()))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.computed.append((stage, key))
        return Artifact(stage, key, final, json.loads((final / "meta.json").read_text()))
