import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmark.data import ImageSet
from benchmark.pipeline import Runner
from benchmark.registry import Registry
from benchmark.scenario import PluginSpec, load_scenario
from benchmark.store import Store

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def registry():
    return Registry([REPO / "submissions"], entry_points=False)


@pytest.fixture(scope="session")
def plugin_module(registry):
    """The loaded module of a shipped plugin, for tests of its helper functions: plugin_module("attack", "wanet")."""
    return lambda kind, name: sys.modules[registry.plugin_class(kind, name).__module__]


def sandbox_or_skip() -> None:
    """Skip a test that needs the defense sandbox where none starts (no bubblewrap, no user namespaces); fail
    instead under CI (BDBENCH_REQUIRE_SANDBOX=1, set by .ci/run, which installs bubblewrap)."""
    import os

    from benchmark.sandbox import available
    ok, why = available()
    if not ok:
        if os.environ.get("BDBENCH_REQUIRE_SANDBOX"):
            pytest.fail(f"no sandbox for defenses: {why}")
        pytest.skip(f"no sandbox for defenses here: {why}")


def has_sandbox() -> bool:
    from benchmark.sandbox import available
    return available()[0]


def random_images(n=40, c=3, size=32, classes=4, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageSet(x, y, [f"c{i}" for i in range(classes)])


def write_submission(root: Path, kind: str, name: str, code: str, params: dict | None = None,
                     manifest: str | None = None):
    folder = root / f"{kind}s" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(textwrap.dedent(code))
    import yaml
    (folder / "submission.yaml").write_text(manifest if manifest is not None else yaml.safe_dump({
        "name": name, "kind": kind, "entry": "plugin:Plugin", "paper": "test", "authors": ["test"],
        "licence": "Apache-2.0", "parameters": params or {}}))
    return folder


CRASH = """
from benchmark import Defense
class Plugin(Defense):
    def run(self, model, clean, ctx):
        raise RuntimeError("deliberate crash")
"""

# scores an input by the brightness of its bottom-right 3x3 corner (where BadNets puts its patch);
# `sign` -1 inverts it: the harness's AUROC must follow the score's direction
CORNER = """
from benchmark import Defense, DefenseOutput
class Plugin(Defense):
    def run(self, model, clean, ctx):
        return DefenseOutput(input_scorer=lambda x: self.params["sign"] * x[:, :, -3:, -3:].mean((1, 2, 3)),
                             model_score=0.25)
"""


class Run:
    def __init__(self, home, registry, sc, defenses, seeds=(0,), zoo=None, isolate=False):
        self.runner = Runner(sc, registry, Store(home / "store"), home / "results", torch.device("cpu"),
                             progress=False, log=lambda m: None, zoo=zoo, isolate=isolate)
        self.results = self.runner.run(defenses=[PluginSpec(d) if isinstance(d, str) else d for d in defenses],
                                       seeds=list(seeds))
        self.cells = [r.to_dict() for r in self.results]  # as the result files hold them

    def cell(self, defense, control=False):
        return next(c for c in self.cells if (c["defense"] or {}).get("id") == defense
                    and (c["role"] == "clean-upstream") == control)

    @property
    def computed(self):
        return [stage for stage, _ in self.runner.store.computed]


@pytest.fixture(scope="session")
def digits_env(tmp_path_factory):
    """The embedded default scenario run once for the session (seed 0): first with finetune, then adding
    linf-pruning and a crashing defense, in one store."""
    home = tmp_path_factory.mktemp("bdbench")
    subs = home / "subs"
    write_submission(subs, "defense", "crash", CRASH)
    write_submission(subs, "defense", "corner", CORNER, params={"sign": 1.0})
    # the crash and corner test defenses are reused by test_isolation through registry.roots
    registry = Registry([REPO / "submissions", subs], entry_points=False)
    sc = load_scenario("digits", registry)
    first = Run(home, registry, sc, ["finetune"])
    second = Run(home, registry, sc, ["finetune", "linf-pruning", "crash"])
    return home, registry, sc, first, second


def result(role="backdoored", attack="a", defense="linf", seed=0, status="ok", score=1.0, build="a" * 64, ca=None,
           finished="2026-12-01T00:00:00Z", gpu=None, position="model", metrics=None, scenario="s", code=None,
           wall_time_s=None, info=None, **defense_scores):
    """A typed result record (benchmark.resultfile.Result) with what aggregation reads, for tests that build cells
    by hand: `score` is the defense's model score, `ca` the clean upstream CA (upstream and transfer sections are
    written only with it, as in a control's file); `metrics` replaces them all."""
    from benchmark.resultfile import Result
    if metrics is None and status == "ok":
        metrics = {}
        if defense:
            metrics["defense"] = ({"ca": 0.9, "asr": 0.1, "ra": 0.8, "der": 0.9, "repaired": True, "input_auroc": None,
                                   "model_score": score, **defense_scores} if position == "model" else
                                  {"samples": 100, "poisoned": 10, "sample_auroc": score, "sample_aupr": None,
                                   "sample_tpr_at_5fpr": None, **defense_scores})
        if ca is None and role != "clean-upstream":
            ca = 0.75  # a cell with an attack always has its upstream and transfer scores
        if ca is not None:
            metrics["upstream"] = {"clean": {"ca": ca, "asr": 0.0, "ra": ca},
                                   "backdoored": {"ca": ca, "asr": 0.9, "ra": 0.1}}
            metrics["transfer"] = {"clean": {"ca": ca + 0.1, "asr": 0.0, "ra": ca, "target": 0},
                                   "backdoored": {"ca": ca + 0.1, "asr": 0.5, "ra": 0.4, "target": 0}}
    d = {"schema": 2, "scenario": {"name": scenario, "version": 1, "sha256": None, "recipe": None}, "role": role,
         "attack": None if role == "clean-upstream" else {"id": attack, "name": attack, "params": {}},
         "defense": {"id": defense, "name": defense, "params": {}, "position": position, "code": code}
         if defense else None, "info": info,
         "seed": seed, "status": status, "metrics": metrics, "artifacts": {}, "weights": {},
         "wall_time_s": wall_time_s or {},
         "upstream_build": build, "finished": finished,
         "provenance": {"git": {"commit": None}, "packages": {"bdbench": "0", "torch": "0"},
                        "hardware": {"device": "cuda" if gpu else "cpu", "gpu": gpu, "cpu_count": 2}}}
    if status != "ok":
        d["error"] = {"type": "RuntimeError", "message": "failed"}
    return Result.from_dict(d)
