"""Run a submitted defense in its own process, with a wall-time and a memory limit.

The child gets files, not objects, in a fresh temporary folder that is also its working directory: a copy
of the delivered model (safetensors) and the defender's data (the clean budget, or for a data-inspection
defense the training set without its poison mask). Only after the defense has returned does the parent
write the unlabeled evaluation inputs for its per-input scorer. Nothing in the child's memory, call stack
or environment leads to the attack, its target, the store or the results (tests/test_isolation.py has a
defense that tries). A crash, a hang or a memory blow-up becomes a `DefenseFailure` naming what happened;
the parent and the rest of the grid go on.

Defense processes are forked from a fork server (multiprocessing's "forkserver"): a fresh interpreter, started
once per run, that has imported torch, timm and the harness. A child thus starts in well under a second instead
of paying those imports (5-10 s on 2 cores, about 8 s per defense on a GPU machine), and, like a spawned one,
inherits nothing of the run's own memory. The server imports modules only; it never touches CUDA.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from . import models
from .data import ImageSet
from .errors import BenchError

HIDDEN_ENV = ("BDBENCH_HOME", "BDBENCH_RESULTS")


class DefenseFailure(BenchError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _orphan_watch(caller: int) -> None:
    """Exit when the run that asked for this defense dies (e.g. a grid killed with -9), or when this process is
    re-parented (its fork server exits once the run is gone): no defense keeps running unowned."""
    ppid = os.getppid()
    while os.getppid() == ppid and _alive(caller):
        time.sleep(1.0)
    os._exit(3)


PRELOAD = ["benchmark.isolation", "benchmark.plugins", "benchmark.registry", "benchmark.training"]


def _context():
    """The fork server where the platform has one (Linux, macOS), else spawn; both start clean."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)  # read when the server starts, i.e. at the first defense
        return ctx
    return mp.get_context("spawn")


def _child(job: dict) -> None:
    import threading
    threading.Thread(target=_orphan_watch, args=(job["parent"],), daemon=True).start()
    os.chdir(job["folder"])  # relative paths in the defense resolve inside its own folder
    for k in HIDDEN_ENV:
        os.environ.pop(k, None)
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
        t = load_file("data.safetensors")
        data = ImageSet(t["images"], t["labels"], job["classes"])
        del t
        model = models.load(Path("model.safetensors"), job["config"])
        device = torch.device(job["device"])
        ctx = Context(device, job["seed"], progress=False)
        out = plugin.inspect(model, data, ctx) if plugin.position == "data" else plugin.run(model, data, ctx)
        result = {"model_score": None if out.model_score is None else float(out.model_score),
                  "info": json.loads(json.dumps(out.info)), "has_model": out.model is not None, "scored": False}
        if out.model is not None:
            models.save(out.model.cpu(), Path("repaired.safetensors"))
        extra = {k: torch.as_tensor(v).detach().flatten().float().cpu().contiguous()
                 for k, v in (("sample_scores", out.sample_scores), ("sample_flags", out.sample_flags)) if v is not None}
        if extra:
            save_file(extra, "samples.safetensors")
        if out.input_scorer is not None and job["has_eval"]:
            Path("ready").write_text("")
            while not Path("eval.safetensors").exists():  # the parent writes it only now
                time.sleep(0.02)
            e = load_file("eval.safetensors")["images"]
            s = scores(out.input_scorer, ImageSet(e, torch.zeros(len(e), dtype=torch.long), ["?"]), device=device)
            save_file({"scores": s.contiguous()}, "scores.safetensors")
            result["scored"] = True
        Path("result.json").write_text(json.dumps(result))
    except BaseException as e:  # report everything, MemoryError and SystemExit included
        Path("error.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)[:2000],
                                                  "traceback": traceback.format_exception(e)[-6:]}))
        os._exit(1)


def run_defense(*, roots: list[Path], name: str, params: dict, model_path: Path, config: dict, data: ImageSet,
                eval_images: Optional[torch.Tensor], device: torch.device, seed: int, time_limit: float,
                memory_gb: float) -> dict:
    """What the defense returned: model (repaired or None), model_score, info, scores (of eval_images),
    sample_scores, sample_flags."""
    with tempfile.TemporaryDirectory(prefix="bdbench-defense-") as tmp:
        folder = Path(tmp)
        shutil.copyfile(model_path, folder / "model.safetensors")  # no path into the store
        save_file({"images": data.images.contiguous(), "labels": data.labels.contiguous()},
                  str(folder / "data.safetensors"))
        job = {"folder": tmp, "parent": os.getpid(), "roots": [str(r) for r in roots], "name": name, "params": params,
               "config": config, "classes": data.classes, "device": str(device), "seed": seed,
               "memory_gb": memory_gb, "threads": torch.get_num_threads(), "has_eval": eval_images is not None}
        proc = _context().Process(target=_child, args=(job,), daemon=True)
        proc.start()
        deadline, sent = time.monotonic() + time_limit, False
        while proc.is_alive() and time.monotonic() < deadline:
            proc.join(0.05)
            if not sent and eval_images is not None and (folder / "ready").exists():
                save_file({"images": eval_images.contiguous()}, str(folder / "eval.tmp"))
                (folder / "eval.tmp").replace(folder / "eval.safetensors")
                sent = True
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
        samples = load_file(str(folder / "samples.safetensors")) if (folder / "samples.safetensors").exists() else {}
        return {"model": models.load(folder / "repaired.safetensors", None) if r["has_model"] else None,
                "model_score": r["model_score"], "info": r["info"],
                "scores": load_file(str(folder / "scores.safetensors"))["scores"] if r["scored"] else None,
                "sample_scores": samples.get("sample_scores"), "sample_flags": samples.get("sample_flags")}
