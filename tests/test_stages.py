"""Stages as modules (benchmark/stages/): keys that do not move, and the store answering without a run."""
import torch

from benchmark.pipeline import Runner
from benchmark.scenario import load_scenario
from benchmark.stages import transfer, upstream
from benchmark.stages.env import Env
from benchmark.store import Store, key_of
from benchmark.tasks import upstream_ready


def test_stage_keys_are_pinned(registry, tmp_path):
    """A stage key is a hash of its spec; moving the code that computes specs must not move it, or every store
    built before (and the `artifacts` of every committed result) would stop matching. These two keys are the ones
    the committed digits-v1 results name."""
    sc = load_scenario("digits", registry)
    up = key_of(upstream.STAGE, upstream.spec(sc))
    assert up == "d1c742b002c4294456f1ac3b"
    env = Env(sc, registry, torch.device("cpu"), tmp_path)
    assert key_of(transfer.STAGE, transfer.spec(env, up, 0)) == "4ed3d87d8917f276bfb11d92"


def test_the_store_says_whether_a_stage_exists_without_a_runner(registry, tmp_path, monkeypatch):
    sc = load_scenario("digits", registry)
    assert not upstream_ready(sc, registry, tmp_path)
    built = []

    def never(*a, **k):
        built.append(a)
        raise AssertionError("asking must not build or load anything")
    monkeypatch.setattr(Runner, "__init__", never)
    monkeypatch.setattr(Env, "data", property(never))
    Store(tmp_path).build(upstream.STAGE, upstream.spec(sc), lambda: (None, {"metrics": {"ca": 1.0}}))
    assert upstream_ready(sc, registry, tmp_path) and not built
