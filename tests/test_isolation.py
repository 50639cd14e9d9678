"""Submitted defenses run in their own process: a crash, a hang or a memory blow-up is a failed cell."""
import dataclasses

import pytest

from benchmark.registry import Registry
from benchmark.scenario import Defender, PluginSpec

from .conftest import REPO, Run, write_submission

# A defense that tries every way it can think of to reach the attack, its target, triggered data, the
# store or the results through what it is given or what lives in its process; it reports what it found.
CHEAT = """
import gc, os, sys
from pathlib import Path
from benchmark import Defense, DefenseOutput
SECRET_NAMES = {"attack", "planted", "target", "eval_images", "eval_labels", "before", "a", "runner", "self_runner"}
class Plugin(Defense):
    def run(self, model, clean, ctx):
        found = []
        forbidden = self.params["forbidden"]
        f = sys._getframe(1)
        while f is not None:  # the call stack: whoever called run() and their locals
            for k, v in f.f_locals.items():
                if k in SECRET_NAMES and v is not None and f.f_code.co_name != "run":
                    found.append(f"stack local {k} in {f.f_code.co_name}")
                if forbidden in repr(v)[:100000]:
                    found.append(f"stack local {k} in {f.f_code.co_name} names the store")
            f = f.f_back
        for o in gc.get_objects():  # anything alive in the process
            t = type(o).__name__
            if (t in ("Runner", "Store", "Artifact", "Poisoning") and type(o).__module__.startswith("benchmark")) or (t != "Plugin" and any(
                    b.__name__ == "Attack" for b in type(o).__mro__[1:])):
                found.append(f"live object {t}")
        for k, v in os.environ.items():
            if forbidden in v:
                found.append(f"environment {k}")
        if Path("eval.safetensors").exists():
            found.append("evaluation inputs before run() returned")
        if len(clean) > self.params["max_clean"] or set(clean.labels.tolist()) - set(range(clean.num_classes)):
            found.append("more than the clean budget")
        for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
            if name.split(".")[-1] not in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                                          "mean", "std", "feature_mask"):
                found.append(f"model carries {name}")
        return DefenseOutput(input_scorer=lambda x: x.mean((1, 2, 3)), model_score=float(len(found)),
                             info={"found": sorted(set(found))})
"""

HANG = """
import time
from benchmark import Defense
class Plugin(Defense):
    def run(self, model, clean, ctx):
        time.sleep(600)
"""

HOG = """
import torch
from benchmark import Defense
class Plugin(Defense):
    def run(self, model, clean, ctx):
        hog = torch.ones(3 * 2 ** 30, dtype=torch.float64)  # 24 GiB
        return None
"""


@pytest.fixture(scope="module")
def isolated(digits_env, tmp_path_factory):
    home, registry, sc, first, _ = digits_env
    subs = tmp_path_factory.mktemp("subs")
    write_submission(subs, "defense", "hang", HANG)
    write_submission(subs, "defense", "hog", HOG)
    reg = Registry(registry.roots + [subs], entry_points=False)
    limited = dataclasses.replace(sc, defender=Defender(budget=sc.defender.budget, time_limit_s=30, memory_gb=4),
                                  clean_seeds=[])  # no control cells: the hang would cost another 30 s
    store_home = tmp_path_factory.mktemp("iso")
    import shutil
    shutil.copytree(home / "store", store_home / "store", ignore=shutil.ignore_patterns("defense"))
    run = Run(store_home, reg, limited, ["finetune", "crash", "hang", "hog", "corner"], isolate=True)
    return first, run


def test_isolated_defense_gives_the_same_result(isolated):
    first, run = isolated
    assert run.cell("finetune")["status"] == "ok"
    assert run.cell("finetune")["metrics"]["defense"] == first.cell("finetune")["metrics"]["defense"]
    assert run.cell("corner")["metrics"]["defense"]["input_auroc"] == 1.0  # the scorer ran in the child


def test_crash_hang_and_memory_blow_up_are_failed_cells(isolated):
    _, run = isolated
    crash, hang, hog = run.cell("crash"), run.cell("hang"), run.cell("hog")
    assert crash["status"] == "failed" and "RuntimeError: deliberate crash" in crash["error"]["message"]
    assert hang["status"] == "failed" and "wall-time limit of 30 s" in hang["error"]["message"]
    assert hog["status"] == "failed" and "memory limit 4 GiB" in hog["error"]["message"]
    assert run.computed.count("defense") == 2  # finetune and corner; failures store nothing


def test_a_cheating_defense_finds_nothing_when_isolated(digits_env, tmp_path_factory):
    """The threat model is enforced, not promised: under isolation (the default of `bdbench run`) the cheat
    finds no attack, target, triggered input, store path or result; in-process it finds them (the probe works)."""
    home, registry, sc, *_ = digits_env
    subs = tmp_path_factory.mktemp("cheat")
    store_home = tmp_path_factory.mktemp("cheat-home")
    import shutil
    shutil.copytree(home / "store", store_home / "store", ignore=shutil.ignore_patterns("defense"))
    write_submission(subs, "defense", "cheat", CHEAT, params={"forbidden": str(store_home), "max_clean": 10 ** 6})
    reg = Registry(registry.roots + [subs], entry_points=False)
    quick = dataclasses.replace(sc, clean_seeds=[])
    clean_n = None
    for isolate in (True, False):
        spec = PluginSpec("cheat", label=f"cheat-{isolate}", params={"max_clean": 10 ** 6 + isolate})  # no shared cache
        run = Run(store_home, reg, quick, [spec], isolate=isolate)
        c = run.cell(f"cheat-{isolate}")
        assert c["status"] == "ok", c.get("error")
        found = c["info"]["found"]
        if isolate:
            assert found == [], found
            assert c["metrics"]["defense"]["input_auroc"] is not None  # it still scored its inputs afterwards
            clean_n = c["metrics"]["defense"]["clean_budget"]
        else:
            assert any("stack local" in f for f in found) and any("live object" in f for f in found), found
    assert 0 < clean_n <= 35  # 5% of the digits victim's training set (about 600 images)


def test_a_defense_process_exits_when_its_parent_is_killed(tmp_path):
    """kill -9 of the run (e.g. a grid) must not leave a defense running unowned."""
    import os
    import signal
    import subprocess
    import sys
    import time
    subs = tmp_path / "subs"
    write_submission(subs, "defense", "hang", HANG)
    script = f"""
import torch
from pathlib import Path
from benchmark.isolation import run_defense
from benchmark.models import Classifier, save
from tests.conftest import random_images
m = Classifier("test_resnet", 4, 3); save(m, Path({str(tmp_path)!r}) / "m.safetensors")
run_defense(roots=[Path({str(subs)!r})], name="hang", params={{}}, model_path=Path({str(tmp_path)!r}) / "m.safetensors",
            config=m.config, data=random_images(n=8), eval_images=None, device=torch.device("cpu"), seed=0,
            time_limit=600, memory_gb=0)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)

    def ppid(pid):
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])

    def descendants():  # this run's processes (other runs on the machine are not ours): the fork server, the defense
        out = []
        for pid in os.listdir("/proc"):
            try:
                p = int(pid) if pid.isdigit() else 0
                while p > 1 and p != parent.pid:
                    p = ppid(p)
                if p == parent.pid and int(pid) != parent.pid:
                    out.append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
        return out

    def children():  # the defense process itself: it works in its own folder
        out = []
        for pid in descendants():
            try:
                if "bdbench-defense-" in os.readlink(f"/proc/{pid}/cwd"):
                    out.append(pid)
            except OSError:
                pass
        return out
    deadline = time.time() + 120
    while not children() and time.time() < deadline:
        time.sleep(0.2)
    assert children(), "the defense process never started"
    kids = descendants()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{k}") and open(f"/proc/{k}/stat").read().split()[2] != "Z" for k in kids) \
            and time.time() < deadline:
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{k}") and open(f"/proc/{k}/stat").read().split()[2] != "Z" for k in kids)
