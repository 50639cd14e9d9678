"""Submitted defenses run in their own process: a crash, a hang or a memory blow-up is a failed cell."""
import dataclasses

import pytest

from benchmark.registry import Registry
from benchmark.scenario import Defender, PluginSpec

from .conftest import REPO, Run, write_submission

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
    limited = dataclasses.replace(sc, defender=Defender(budget=sc.defender.budget, time_limit_s=30, memory_gb=4))
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
