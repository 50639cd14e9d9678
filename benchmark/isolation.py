"""Run a submitted defense in its own process, with a wall-time and a memory limit.

The child gets files, not objects: the delivered model (safetensors), the clean budget, and after the
defense has finished, the unlabeled evaluation inputs for its per-input scorer. A crash, a hang or a memory
blow-up becomes a `DefenseFailure` naming what happened; the parent and the rest of the grid go on.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import tempfile
import traceback
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from . import models
from .data import ImageSet
from .errors import BenchError


class DefenseFailure(BenchError):
    pass


def _child(folder: str, job: dict) -> None:
    folder = Path(folder)
    try:
        if job["memory_gb"] and job["device"] == "cpu":  # an address-space cap breaks CUDA's reservations
            cap = int(job["memory_gb"] * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        torch.set_num_threads(job["threads"])
        from .plugins import Context
        from .registry import Registry
        from .training import scores

        registry = Registry([Path(r) for r in job["roots"]], entry_points=True)
        plugin = registry.create("defense", job["name"], job["params"])
        t = load_file(str(folder / "clean.safetensors"))
        clean = ImageSet(t["images"], t["labels"], job["classes"])
        model = models.load(Path(job["model"]), job["config"])
        device = torch.device(job["device"])
        out = plugin.run(model, clean, Context(device, job["seed"], progress=False))
        result = {"model_score": None if out.model_score is None else float(out.model_score),
                  "info": json.loads(json.dumps(out.info)), "has_model": out.model is not None, "scored": False}
        if out.model is not None:
            models.save(out.model.cpu(), folder / "repaired.safetensors")
        if out.input_scorer is not None:
            (folder / "ready").write_text("")
            e = load_file(str(folder / "eval.safetensors"))["images"]
            s = scores(out.input_scorer, ImageSet(e, torch.zeros(len(e), dtype=torch.long), ["?"]), device=device)
            save_file({"scores": s.contiguous()}, str(folder / "scores.safetensors"))
            result["scored"] = True
        (folder / "result.json").write_text(json.dumps(result))
    except BaseException as e:  # report everything, MemoryError and SystemExit included
        (folder / "error.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)[:2000],
                                                       "traceback": traceback.format_exception(e)[-6:]}))
        os._exit(1)


def run_defense(*, roots: list[Path], name: str, params: dict, model_path: Path, config: dict, clean: ImageSet,
                eval_images: Optional[torch.Tensor], device: torch.device, seed: int, time_limit: float,
                memory_gb: float) -> tuple[Optional[models.Classifier], Optional[float], dict, Optional[torch.Tensor]]:
    """(repaired model or None, model score, info, scores of eval_images or None)."""
    with tempfile.TemporaryDirectory(prefix="bdbench-defense-") as tmp:
        folder = Path(tmp)
        save_file({"images": clean.images.contiguous(), "labels": clean.labels.contiguous()},
                  str(folder / "clean.safetensors"))
        if eval_images is not None:  # written now, but the child reads it only after run() returned
            save_file({"images": eval_images.contiguous()}, str(folder / "eval.safetensors"))
        job = {"roots": [str(r) for r in roots], "name": name, "params": params, "model": str(model_path),
               "config": config, "classes": clean.classes, "device": str(device), "seed": seed,
               "memory_gb": memory_gb, "threads": torch.get_num_threads()}
        proc = mp.get_context("spawn").Process(target=_child, args=(tmp, job), daemon=True)
        proc.start()
        proc.join(time_limit)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise DefenseFailure(f"defense '{name}' exceeded its wall-time limit of {time_limit:g} s and was stopped")
        if (folder / "error.json").exists():
            e = json.loads((folder / "error.json").read_text())
            hint = f" (memory limit {memory_gb:g} GiB)" if e["type"] == "MemoryError" or "allocate" in e["message"] else ""
            raise DefenseFailure(f"defense '{name}' raised {e['type']}: {e['message']}{hint}\n"
                                 + "".join(e["traceback"]))
        if proc.exitcode != 0 or not (folder / "result.json").exists():
            raise DefenseFailure(f"defense '{name}' died with exit code {proc.exitcode} "
                                 f"(killed by the system? memory limit {memory_gb:g} GiB)")
        r = json.loads((folder / "result.json").read_text())
        model = models.load(folder / "repaired.safetensors", None) if r["has_model"] else None
        scores = load_file(str(folder / "scores.safetensors"))["scores"] if r["scored"] else None
        return model, r["model_score"], r["info"], scores
