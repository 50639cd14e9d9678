"""Where grid tasks run: this machine's process pool, or a Ray cluster. Both call `run_task` on plain
job dicts (picklable, no open handles), so a task computes the same thing wherever it lands; the store
and the results folder must be shared between the workers (a cluster mounts them)."""
from __future__ import annotations

import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, Iterator

_WORKER_DEVICE = None


def run_task(job: dict) -> dict:
    """Run one grid task; never raises (a failure is reported in the returned dict)."""
    t0 = time.perf_counter()
    try:
        import torch

        from .device import pick
        from .errors import BenchError
        from .gridfile import load_grid, select
        from .pipeline import Runner
        from .registry import Registry
        from .store import Store

        if job.get("threads"):
            torch.set_num_threads(job["threads"])
        registry = Registry([Path(r) for r in job["roots"]], entry_points=True)
        try:
            _, scenarios = load_grid(job["grid"], registry)
        except BenchError as e:
            raise BenchError(f"the worker could not load the grid: {e}. If the file changed after the grid started, "
                             f"rerun the grid; else see that the worker has the same files and plugins") from None
        sc = next((s for s in scenarios if s.name == job["scenario"]), None)
        if sc is None:
            raise BenchError(f"{job['grid']} no longer gives scenario {job['scenario']}: it changed after the grid "
                             f"started; rerun the grid")
        if job.get("sha256") and sc.sha256 != job["sha256"]:  # a task runs what the grid planned, or nothing
            raise BenchError(f"{job['grid']}: scenario {sc.name} changed after the grid started (its hash differs); "
                             f"rerun the grid, which keeps every finished result")
        o = job.get("only") or {}
        sc = select(sc, o.get("attacks"), o.get("defenses"), o.get("seeds"), o.get("clean_seeds"))
        device = pick(_WORKER_DEVICE or job["device"])
        from .isolation import resolve_mode
        isolate = resolve_mode(job["isolate"], refuse=True)  # a worker without a sandbox runs no leaderboard task
        runner = Runner(sc, registry, Store(Path(job["home"])), Path(job["results"]), device, progress=False,
                        log=lambda m: None, isolate=isolate)
        computed_before = 0
        if job["kind"] == "upstream":
            runner.clean_upstream()
            cells = []
        elif job["kind"] == "cell":
            cells = runner.cell(next(a for a in sc.attacks if a.id == job["attack"]), job["seed"])
        else:
            cells = runner.controls(job["seed"])
        return {"job": job, "ok": True, "cells": len(cells), "failed": sum(not c.ok for c in cells),
                "computed": len(runner.store.computed) - computed_before, "wall": time.perf_counter() - t0}
    except BaseException as e:  # noqa: BLE001 - reported, the grid goes on
        return {"job": job, "ok": False, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exception(e)[-4:], "wall": time.perf_counter() - t0}


def _init_worker(devices) -> None:
    global _WORKER_DEVICE
    if devices is not None:  # one GPU per worker: take the next free id
        _WORKER_DEVICE = f"cuda:{devices.get()}"


def local(jobs: list[dict], workers: int) -> Iterator[dict]:
    """A spawn-based process pool; with CUDA, one GPU per worker."""
    import multiprocessing as mp

    import torch
    ctx = mp.get_context("spawn")
    devices = None
    if torch.cuda.is_available() and jobs and jobs[0]["device"] in ("auto", "cuda"):
        devices = ctx.Manager().Queue()
        for i in range(workers):
            devices.put(i % torch.cuda.device_count())
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(devices,)) as pool:
        futures = [pool.submit(run_task, j) for j in jobs]
        for f in as_completed(futures):
            yield f.result()


def ray(jobs: list[dict], address: str | None, threads: int, gpus_per_task: float) -> Iterator[dict]:
    """Ray tasks: `ray.init()` on this machine when no address is given, else the cluster at `address`
    ("auto" for the one this process runs in). Each task asks for `threads` CPUs and `gpus_per_task` GPUs."""
    try:
        import ray as _ray
    except ImportError:
        raise SystemExit("the Ray executor needs ray: pip install 'bdbench[ray]'") from None
    if not _ray.is_initialized():
        _ray.init(address=address, include_dashboard=False, log_to_driver=False,
                  **({} if address else {"num_cpus": os.cpu_count()}))
    remote = _ray.remote(num_cpus=threads, num_gpus=gpus_per_task, max_retries=1)(run_task)
    pending = [remote.remote(j) for j in jobs]
    while pending:
        done, pending = _ray.wait(pending, num_returns=1)
        yield _ray.get(done[0])


def serial(jobs: Iterable[dict]) -> Iterator[dict]:
    for j in jobs:
        yield run_task(j)
