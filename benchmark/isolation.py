"""Run a submitted defense in its own process, with a wall-time and a memory limit.

The child gets files, not objects, in a fresh temporary folder that is also its working directory: a copy
of the delivered model (safetensors, its training-history counters zeroed: see `models.for_defense`) and the
defender's data (the clean budget, or for a data-inspection defense the training set without its poison mask).
Only after the defense has returned does the parent write the unlabeled evaluation inputs for its per-input
scorer. A crash, a hang or a memory blow-up becomes a `DefenseFailure` naming what happened; the parent and the
rest of the grid go on.

Two ways to run the child (`MODES`):

- `sandbox` (the default): a fresh interpreter in a bubblewrap sandbox (sandbox.py) that sees its folder, the
  Python installation, the harness and its own submission, read-only, and nothing else: not the store, the
  results, the caller's /proc, environment or open files, nor the network. tests/test_isolation.py has a
  defense that looks everywhere and finds nothing. Each defense pays the interpreter's start (importing torch
  and timm: a few seconds on 2 cores).
- `process`: forked from a fork server (multiprocessing's "forkserver", a fresh interpreter started once per run
  that has imported torch, timm and the harness), so it inherits nothing of the run's memory and starts in well
  under a second; but it shares the caller's filesystem, /proc and network. For machines without user
  namespaces and for development: results computed so are marked in their provenance.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import stat
import subprocess
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
MODES = ("sandbox", "process", "none")  # "none": in the run's own process (Runner._invoke), for debugging


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
    re-parented (its fork server exits once the run is gone): no defense keeps running unowned. (In a sandbox,
    bwrap's --die-with-parent does this.)"""
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


def resolve_mode(mode, *, refuse: bool = False, log=print) -> str:
    """The isolation a run will use: `mode` (or True -> sandbox, False -> none), with `sandbox` falling back to
    `process` where no sandbox can start: loudly, or as an error when `refuse` (a leaderboard run)."""
    mode = {True: "sandbox", False: "none"}.get(mode, mode)
    if mode not in MODES:
        raise BenchError(f"isolation {mode!r}: use one of {', '.join(MODES)}")
    if mode != "sandbox":
        return mode
    from . import sandbox
    ok, why = sandbox.available()
    if ok:
        return mode
    if refuse:
        raise BenchError(f"no sandbox for defenses on this machine ({why}). Results meant for the leaderboard run "
                         f"submitted code in a sandbox; to run anyway, say so: --isolation process (the results "
                         f"record it)")
    log(f"WARNING: no sandbox for defenses on this machine ({why}). Each defense runs in a plain process, which "
        f"can read the store, the results and the run's /proc: do not score untrusted submissions like this.")
    return "process"


def checked(out, name: str, given: torch.nn.Module):
    """What a defense returned, if it is a DefenseOutput the harness can score; else a DefenseFailure saying what
    the contract (benchmark/plugins.py) asks for."""
    from .plugins import DefenseOutput
    if not isinstance(out, DefenseOutput):
        raise DefenseFailure(f"defense '{name}' returned {type(out).__name__}, not a DefenseOutput; return "
                             f"DefenseOutput(model=..., model_score=..., input_scorer=...) (benchmark/plugins.py)")
    if out.model is not None and not isinstance(out.model, models.Classifier):
        raise DefenseFailure(f"defense '{name}' returned a model of type {type(out.model).__name__}; return the "
                             f"Classifier it was given (changed in place) or a copy of it")
    if out.model is not None and out.model.config != given.config:
        raise DefenseFailure(f"defense '{name}' returned a model of another architecture ({out.model.config}); "
                             f"a repaired model keeps the delivered one's ({given.config})")
    if out.model_score is not None and (isinstance(out.model_score, bool)
                                        or not isinstance(out.model_score, (int, float, torch.Tensor))
                                        or torch.as_tensor(out.model_score).numel() != 1):
        raise DefenseFailure(f"defense '{name}' returned model_score {out.model_score!r:.80}: it must be one number "
                             f"(higher = more likely backdoored) or None")
    if out.input_scorer is not None and not callable(out.input_scorer):
        raise DefenseFailure(f"defense '{name}': input_scorer must be a function of a batch of images, got "
                             f"{type(out.input_scorer).__name__}")
    return out


def main() -> None:
    """The sandboxed child's entry: the job lies in its working folder."""
    _child(json.loads(Path("job.json").read_text()))


def _child(job: dict) -> None:
    if job.get("watch"):  # forked in process mode; in a sandbox, bwrap kills the child with its parent
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

        registry = Registry([] if job["entry_points"] else [Path(job["plugin"])], entry_points=job["entry_points"])
        plugin = registry.create("defense", job["name"], job["params"])
        t = load_file("data.safetensors")
        data = ImageSet(t["images"], t["labels"], job["classes"])
        del t
        model = models.load(Path("model.safetensors"), job["config"])
        device = torch.device(job["device"])
        ctx = Context(device, job["seed"], progress=False)
        out = plugin.inspect(model, data, ctx) if plugin.position == "data" else plugin.run(model, data, ctx)
        out = checked(out, job["name"], models.load(Path("model.safetensors"), job["config"]))
        result = {"model_score": None if out.model_score is None else repr(float(out.model_score)),
                  "info": json.loads(json.dumps(out.info)), "has_model": out.model is not None,
                  "scored": False}
        if out.model is not None:
            models.save(out.model.cpu(), Path("repaired.safetensors"))
        extra = {k: torch.as_tensor(v).detach().flatten().float().cpu().contiguous()
                 for k, v in (("sample_scores", out.sample_scores), ("sample_flags", out.sample_flags))
                 if v is not None}
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
        Path("result.json").write_text(json.dumps(result))  # info may hold NaN or inf: Python reads them back
    except BaseException as e:  # report everything, MemoryError and SystemExit included
        Path("error.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)[:2000],
                                                  "traceback": traceback.format_exception(e)[-6:]}))
        os._exit(1)


class _Sandboxed:
    """A sandboxed child behind the few calls run_defense makes of a multiprocessing.Process."""

    def __init__(self, folder: Path, plugin: str, package_path: Optional[str], device: torch.device, threads: int):
        import sys

        from . import sandbox
        self.p = sandbox.popen(folder, [sys.executable, "-c", "from benchmark.isolation import main; main()"],
                               plugin_folder=Path(plugin), python_path=[package_path] if package_path else [],
                               gpu=device.type == "cuda", preexec=_limit_file_size,
                               threads=threads, log=folder / "output.log")

    def is_alive(self) -> bool:
        return self.p.poll() is None

    def join(self, timeout: Optional[float] = None) -> None:
        try:
            self.p.wait(timeout)
        except Exception:
            pass

    def kill(self) -> None:
        import signal
        try:
            os.killpg(self.p.pid, signal.SIGKILL)  # bwrap and everything in its session
        except ProcessLookupError:
            pass

    @property
    def exitcode(self) -> Optional[int]:
        return self.p.returncode


def _plugin_source(roots: list[Path], name: str) -> tuple[str, Optional[str]]:
    """The defense's own submission folder (all the child may see of the submissions) and, for one registered
    through an installed package's entry point, the import path that holds that package (None for a folder)."""
    import sys

    from .registry import Registry
    reg = Registry(roots, entry_points=False)
    if name in reg.names("defense"):
        return reg.manifest("defense", name).folder, None
    reg = Registry(roots, entry_points=True)
    top = sys.modules[reg.plugin_class("defense", name).__module__.split(".")[0]]
    return reg.manifest("defense", name).folder, str(Path(top.__file__).resolve().parent.parent)


def _own_file(folder: Path, name: str, limit: Optional[int] = None, most: Optional[int] = None) -> Optional[bytes]:
    """The bytes of a regular file the child left in its folder (None if absent; the last `limit` bytes; a file
    over `most` bytes is refused). The child controls that folder, so a link or a FIFO in place of an output is
    refused, never followed: the harness reads no host file for it, and nothing larger than it can be."""
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DefenseFailure(f"the defense left '{name}' as something other than a regular file "
                             f"({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DefenseFailure(f"the defense left '{name}' as something other than a regular file")
        if most is not None and st.st_size > most:
            raise DefenseFailure(f"the defense left '{name}' of {st.st_size} bytes, more than the {most} its outputs "
                                 f"can take")
        if limit is not None and st.st_size > limit:
            f.seek(st.st_size - limit)
        return f.read()


def _tail(folder: Path, n: int = 1500) -> str:
    try:
        raw = _own_file(folder, "output.log", limit=n)
    except DefenseFailure as e:
        return f"\n({e})"
    text = (raw or b"").decode(errors="replace").strip()
    return f"\n--- the defense's last output ---\n{text}" if text else ""


def _send(folder: Path, images: torch.Tensor) -> None:
    """Write the evaluation inputs into the child's folder: into a file this process creates (O_EXCL, so no link
    the child planted is followed), then renamed to the name the child waits for."""
    from safetensors.torch import save
    tmp = folder / f".eval-{os.urandom(8).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(save({"images": images.contiguous()}))
    os.replace(tmp, folder / "eval.safetensors")


def _outputs(folder: Path, name: str, config: dict, bounds: dict) -> dict:
    """What the child wrote, read as data: JSON and safetensors only, the repaired model with the delivered model's
    architecture (never one the child names)."""
    from safetensors.torch import load
    try:
        r = json.loads(_own_file(folder, "result.json", limit=1 << 24) or b"{}")
        model = None
        if r["has_model"]:
            raw = _own_file(folder, "repaired.safetensors", most=bounds["repaired.safetensors"])
            if raw is None:
                raise DefenseFailure(f"defense '{name}' returned a model but left no repaired.safetensors")
            with tempfile.TemporaryDirectory(prefix="bdbench-repaired-") as own:  # a folder the child never saw
                (Path(own) / "repaired.safetensors").write_bytes(raw)
                model = models.load(Path(own) / "repaired.safetensors", config)
        raw = _own_file(folder, "samples.safetensors", most=bounds["samples.safetensors"])
        samples = load(raw) if raw is not None else {}
        raw_scores = _own_file(folder, "scores.safetensors", most=bounds["scores.safetensors"]) if r["scored"] else None
        score = r["model_score"]
        return {"model": model, "model_score": None if score is None else float(score), "info": r["info"],
                "scores": load(raw_scores or b"")["scores"] if r["scored"] else None,
                "sample_scores": samples.get("sample_scores"), "sample_flags": samples.get("sample_flags")}
    except DefenseFailure:
        raise
    except Exception as e:
        raise DefenseFailure(f"defense '{name}' left outputs the harness cannot read: {type(e).__name__}: "
                             f"{str(e)[:300]}") from None


DISK_BYTES = 8 << 30  # what a defense may leave in its folder, inputs included; also the largest file it may write


def _is_file(path: Path) -> bool:
    """A regular file at `path` itself (a link the child planted is not followed: no host path is probed)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _usage(folder: Path) -> int:
    """Bytes on disk under `folder` (du walks the tree without recursion limits), 0 if du is unavailable."""
    try:
        r = subprocess.run(["du", "-s", "-x", "-B1", str(folder)], capture_output=True, text=True, timeout=30)
        return int(r.stdout.split()[0]) if r.returncode == 0 and r.stdout else 0
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def _remove(folder: Path) -> None:
    """Delete the child's folder, however deep it made it (shutil.rmtree recurses and fails on ~1000 levels)."""
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(folder)], capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        pass
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)


def _limit_file_size() -> None:  # in the sandbox's process, before bwrap starts: no file beyond DISK_BYTES
    resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_BYTES, DISK_BYTES))


def run_defense(*, roots: list[Path], name: str, params: dict, model_path: Path, config: dict, data: ImageSet,
                eval_images: Optional[torch.Tensor], device: torch.device, seed: int, time_limit: float,
                memory_gb: float, mode: str = "sandbox") -> dict:
    """What the defense returned: model (repaired or None), model_score (a float, possibly NaN or inf), info,
    scores (of eval_images), sample_scores, sample_flags."""
    if mode not in ("sandbox", "process"):
        raise ValueError(f"run_defense runs 'sandbox' or 'process', not {mode!r}")
    plugin, package_path = _plugin_source(roots, name)
    folder = Path(tempfile.mkdtemp(prefix="bdbench-defense-"))
    proc = None
    try:
        models.for_defense(model_path, folder / "model.safetensors")  # no path into the store, no history
        save_file({"images": data.images.contiguous(), "labels": data.labels.contiguous()},
                  str(folder / "data.safetensors"))
        job = {"folder": str(folder) if mode == "process" else ".", "plugin": plugin,
               "entry_points": package_path is not None, "name": name, "params": params, "config": config,
               "classes": data.classes, "device": str(device), "seed": seed, "memory_gb": memory_gb,
               "threads": torch.get_num_threads(), "has_eval": eval_images is not None}
        if mode == "sandbox":
            (folder / "job.json").write_text(json.dumps(job))
            proc = _Sandboxed(folder, plugin, package_path, device, job["threads"])
        else:
            job.update(watch=True, parent=os.getpid())
            proc = _context().Process(target=_child, args=(job,), daemon=True)
            proc.start()
        deadline, sent, checked_disk = time.monotonic() + time_limit, False, time.monotonic()
        while proc.is_alive() and time.monotonic() < deadline:
            proc.join(0.05)
            if not sent and eval_images is not None and _is_file(folder / "ready"):
                try:
                    _send(folder, eval_images)
                except OSError as e:
                    raise DefenseFailure(f"defense '{name}': its evaluation inputs could not be handed over "
                                         f"({e.strerror}); it must leave the name eval.safetensors free") from None
                sent = True
            if time.monotonic() - checked_disk > 2.0:
                checked_disk = time.monotonic()
                if _usage(folder) > DISK_BYTES:
                    raise DefenseFailure(f"defense '{name}' wrote more than {DISK_BYTES >> 30} GiB into its folder "
                                         f"and was stopped")
        if proc.is_alive():
            raise DefenseFailure(f"defense '{name}' exceeded its wall-time limit of {time_limit:g} s and was stopped")
        out = _tail(folder)
        error = _own_file(folder, "error.json", limit=1 << 20)
        if error is not None:
            try:
                e = json.loads(error)
                kind, message, trace = str(e["type"]), str(e["message"]), "".join(map(str, e["traceback"]))
            except Exception:
                kind, message, trace = "an error", "it did not describe", ""
            hint = f" (memory limit {memory_gb:g} GiB)" if kind == "MemoryError" or "allocate" in message else ""
            raise DefenseFailure(f"defense '{name}' raised {kind}: {message}{hint}\n" + trace + out)
        if proc.exitcode != 0 or _own_file(folder, "result.json", limit=0) is None:
            raise DefenseFailure(f"defense '{name}' died with exit code {proc.exitcode} "
                                 f"(killed by the system? memory limit {memory_gb:g} GiB){out}")
        bounds = {"repaired.safetensors": 2 * (folder / "model.safetensors").stat().st_size + (1 << 20),
                  "samples.safetensors": 8 * len(data) + (1 << 16),
                  "scores.safetensors": 4 * (0 if eval_images is None else len(eval_images)) + (1 << 16)}
        return _outputs(folder, name, config, bounds)
    finally:
        if proc is not None and proc.is_alive():  # whatever ended the wait, the defense ends with it
            proc.kill()
            proc.join()
        _remove(folder)
