"""The real CPU datasets of ../shared served as Hub dataset repositories on loopback, and a real scenario
run through them by repository id and pinned revision."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from benchmark.scenario import SHIPPED

from .conftest import SHARED
from .hubserver import add_repo, serve

pytestmark = [pytest.mark.shared,
              pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets not present")]

SCENARIO = SHIPPED / "smoke-cifar10-chest.yaml"


def test_smoke_scenario_runs_through_the_hub(tmp_path):
    sc = yaml.safe_load(SCENARIO.read_text())
    pinned = {sc["upstream"]["data"]["id"]: sc["upstream"]["data"]["revision"],
              sc["downstream"]["data"]["id"]: sc["downstream"]["data"]["revision"]}
    mirror = tmp_path / "mirror"
    for repo_id, revision in pinned.items():
        src = SHARED / repo_id.split("/")[1]
        files = {str(p.relative_to(src)): p for p in src.rglob("*") if p.is_file()}
        # a deterministic commit of the same files gives the same sha: the scenario pins real content
        assert add_repo(mirror, "datasets", repo_id, files) == revision
    with serve(mirror, tmp_path / "olah") as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"),
               "BDBENCH_HOME": str(tmp_path / "home")}
        r = subprocess.run([sys.executable, "-m", "benchmark", "run", "smoke-cifar10-chest", "--quiet", "--strict",
                            "--results", str(tmp_path / "results")], capture_output=True, text=True, env=env,
                           timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "results/smoke-cifar10-chest-v1/badnets/finetune/seed-0.json").read_text())
    m = res["metrics"]
    assert res["status"] == "ok"
    assert m["upstream"]["clean"]["ca"] > 0.2          # ten classes: chance is 0.1
    assert m["transfer"]["clean"]["ca"] > 0.6          # two classes, ~74% pneumonia
    print(r.stdout)
