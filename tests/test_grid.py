"""Grids: expansion, validation, the task plan, resuming after kill -9, and the Ray executor."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmark import grid, gridfile, tasks
from benchmark.errors import BenchError

from .conftest import REPO

DATA = Path(__file__).parent / "data"


def test_vary_expands_the_cartesian_product_with_labels(registry, tmp_path):
    g, scs = gridfile.load_grid(DATA / "tiny-grid.yaml", registry)
    assert [s.name for s in scs] == ["tiny-full", "tiny-linear"]
    assert [s.downstream.protocol for s in scs] == ["full", "linear"]
    assert len({s.sha256 for s in scs}) == 2 and all(s.version == 1 for s in scs)
    # several keys moving together, and mapping values
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump({"name": "g", "scenarios": [str(DATA / "tiny.yaml")], "vary": {
        "upstream.arch,image.size": {"a": ["test_resnet", 16], "b": ["test_vit", 32]},
        "downstream.data": {"d": {"source": "sklearn-digits", "classes": [5, 6]}}}}, sort_keys=False))
    _, scs = gridfile.load_grid(f, registry)
    assert [(s.name, s.upstream.arch, s.image.size, s.downstream.data.classes) for s in scs] == [
        ("tiny-a-d", "test_resnet", 16, [5, 6]), ("tiny-b-d", "test_vit", 32, [5, 6])]


def test_adjust_sets_a_recipe_for_one_label_and_leaves_the_other_hashes(registry, tmp_path):
    """`adjust` gives the scenarios of one vary label more settings (a recipe per architecture); the other
    scenarios keep the hash they had without it, so their finished results stay finished."""
    base = {"name": "g", "scenarios": [str(DATA / "tiny.yaml")], "vary": {"downstream.protocol": ["full", "linear"]}}
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump(base))
    _, before = gridfile.load_grid(f, registry)
    f.write_text(yaml.safe_dump({**base, "adjust": {"linear": {"upstream.train.epochs": 7, "version": 3}}}))
    _, after = gridfile.load_grid(f, registry)
    assert [s.name for s in after] == ["tiny-full", "tiny-linear"]
    assert after[0].sha256 == before[0].sha256 and after[0].version == before[0].version
    assert after[0].upstream.train.epochs == before[0].upstream.train.epochs != 7
    assert after[1].sha256 != before[1].sha256 and after[1].upstream.train.epochs == 7 and after[1].version == 3
    # a base scenario's own adjustment, by its name, applies to all its variants after the labels' settings
    f.write_text(yaml.safe_dump({**base, "adjust": {"linear": {"version": 3}, "tiny": {"version": 4}}}))
    _, own = gridfile.load_grid(f, registry)
    assert [s.version for s in own] == [4, 4] and all(o.sha256 != b.sha256 for o, b in zip(own, before))
    for adjust, match in (({"lineer": {"version": 2}}, "neither a vary label nor a scenario's name"),
                          ({"linear": {"upstream.nope.x": 1}}, "does not name a setting"),
                          ({"linear": {}}, "give a mapping")):
        f.write_text(yaml.safe_dump({**base, "adjust": adjust}))
        with pytest.raises(BenchError, match=match) as e:
            gridfile.load_grid(f, registry)
        assert "g.yaml" in str(e.value)
    f.write_text(yaml.safe_dump({**base, "vary": {"downstream.protocol": {"tiny": "full"}},
                                 "adjust": {"tiny": {"version": 2}}}))  # a label named as the scenario
    with pytest.raises(BenchError, match="both a vary label and a scenario's name"):
        gridfile.load_grid(f, registry)


def test_a_task_refuses_a_grid_file_changed_after_the_grid_started(registry, tmp_path):
    """Workers read the grid file when a task starts; edited meanwhile, it could run something else than the
    grid planned (or, as happened, no longer load). The task fails with the fix instead, writing nothing."""
    from benchmark.executors import run_task
    base = {"name": "g", "scenarios": [str(DATA / "tiny.yaml")], "vary": {"downstream.protocol": ["full", "linear"]}}
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump(base))
    _, (full, _) = gridfile.load_grid(f, registry)
    job = {"grid": str(f), "roots": [str(r) for r in registry.roots], "home": str(tmp_path / "home"),
           "results": str(tmp_path / "results"), "device": "cpu", "isolate": False, "threads": 1, "only": {},
           "kind": "upstream", "scenario": full.name, "attack": None, "seed": None, "sha256": full.sha256}
    f.write_text(yaml.safe_dump({**base, "adjust": {"full": {"upstream.train.epochs": 7}}}))
    r = run_task(job)
    assert not r["ok"] and "scenario tiny-full changed after the grid started" in r["error"], r
    f.write_text(yaml.safe_dump({**base, "vary": {"downstream.protocol": ["linear"]}}))
    r = run_task(job)
    assert not r["ok"] and "no longer gives scenario tiny-full" in r["error"], r
    f.write_text(yaml.safe_dump({**base, "adjust": {"nolabel": {"version": 2}}}))
    r = run_task(job)
    assert not r["ok"] and "could not load the grid" in r["error"] and "adjust.nolabel" in r["error"], r
    assert not (tmp_path / "home").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("vary,match", [
    ({"upstream.nope.arch": ["x"]}, "does not name a setting"),
    ({"upstream.arch": ["no_such_net"]}, "unknown timm model"),
    ({"upstream.arch,image.size": {"a": ["test_resnet"]}}, "give 2 values"),
])
def test_bad_grids_name_the_file_and_the_fix(registry, tmp_path, vary, match):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"name": "bad", "scenarios": [str(DATA / "tiny.yaml")], "vary": vary}))
    with pytest.raises(BenchError, match=match) as e:
        gridfile.load_grid(f, registry)
    assert "bad.yaml" in str(e.value)


def test_task_plan_has_three_phases(registry):
    _, scs = gridfile.load_grid(DATA / "tiny-grid.yaml", registry)
    ups, cells, controls = tasks.plan_tasks(scs)
    assert len(ups) == 2 and len(cells) == 2 * 2 * 2 and len(controls) == 2 * 2
    assert {t.kind for t in cells} == {"cell"}


def test_shipped_grids_plan(registry, capsys):
    from benchmark.plan import print_plan
    for name, n in (("matsuo2022", 40), ("cpu", 6)):
        _, scs = gridfile.load_grid(name, registry)
        assert len(scs) == n
    _, scs = gridfile.load_grid("matsuo2022", registry)
    est = print_plan(scs[:2], tflops=50.0)
    assert est[0].gflops_up == pytest.approx(30.9, rel=0.02)  # VGG16 at 224 px: 15.5 GMACs
    assert est[0].train_pflop > 0 and est[1].train_pflop is None  # AIDER's size is not given
    assert "vgg16" in capsys.readouterr().out


def test_a_grid_scenario_runs_and_shows_by_the_name_the_leaderboard_prints(registry, capsys):
    """`bdbench run/show cpu-cifar10-gtsrb-resnet18` loads the very scenario the cpu grid runs (same sha256, so
    its result files are the grid's cells); an unknown name still fails, naming where the names are listed."""
    from benchmark.cli import _scenario, main
    _, scs = gridfile.load_grid("cpu", registry)
    want = next(s for s in scs if s.name == "cpu-cifar10-gtsrb-resnet18")
    assert gridfile.grid_expansion(want.name, registry)[0] == "cpu"
    got = _scenario(want.name, registry)
    assert (got.sha256, got.recipe, got.version) == (want.sha256, want.recipe, 3)
    assert got.upstream.train.epochs == 20 and got.downstream.train.epochs == 10
    assert _scenario("digits", registry).name == "digits"  # shipped scenarios first
    assert main(["show", want.name]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == want.name and shown["attack"]["inject"]["lr"] == 0.05
    assert main(["show", "cpu-cifar10-gtsrb-vgg16"]) == 2
    assert "bdbench list scenarios" in capsys.readouterr().err
    assert main(["list", "scenarios"]) == 0
    assert "cpu-cifar10-gtsrb-resnet18" in capsys.readouterr().out


def test_plan_progress_counts_finished_files_and_times_the_rest_from_them(registry, tmp_path):
    """`bdbench plan --results`: files done / total, and the time left as the sum of the measured stage times of
    exactly the stages that no finished file records (the tiny grid at seed 0, clean seeds 0 and 5)."""
    from benchmark.device import pick
    from benchmark.plan import progress
    only = {"seeds": [0], "clean_seeds": [0, 5]}
    _, (sc,) = gridfile.load_grid(DATA / "tiny.yaml", registry)
    sc = gridfile.select(sc, **only)
    results = tmp_path / "results"
    empty = progress(sc, results, registry)
    # nothing timed: upstream, a clean transfer, 2 x (injection, transfer, defense); controls not known yet
    assert (empty.done, empty.total, empty.seconds, empty.unmeasured) == (0, 4, 0.0, 8)
    assert empty.lower_bound and not empty.controls_known
    grid.run(DATA / "tiny.yaml", only=only, home=tmp_path / "home", results=results, registry=registry,
             progress=False, log=lambda m: None, isolate=False)
    full = progress(sc, results, registry)
    assert (full.done, full.total, full.seconds, full.unmeasured) == (6, 6, 0.0, 0)  # 2 cells x 2, 2 controls
    assert full.controls_known and not full.lower_bound
    # spent: each distinct artifact's time once (one upstream shared by 6 files, one clean transfer per seed, ...)
    files = [json.loads(p.read_text()) for p in (results / "tiny-v1").glob("*/*/seed-*.json")]
    stages = {(s, r["artifacts"][s]): t for r in files for s, t in r["wall_time_s"].items()}
    assert len({k for (s, k) in stages if s == "upstream"}) == 1 and empty.spent == 0
    assert full.spent == pytest.approx(sum(stages.values()))
    assert full.spent < sum(sum(r["wall_time_s"].values()) for r in files)
    dev = pick("auto")  # the device the run chose: a GPU by name where present
    assert full.hardware.startswith((torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu") + ", ")
    folder = results / "tiny-v1"
    read = lambda *p: json.loads(folder.joinpath(*p).read_text())["wall_time_s"]  # noqa: E731
    wall, control = (read("badnets", "linf-pruning", "seed-0.json"),
                     read("clean-upstream", "linf-pruning", "seed-0.json"))
    for p in ("badnets/none", "blended/none", "blended/linf-pruning", "clean-upstream/linf-pruning"):
        (folder / p / ("seed-5.json" if "clean" in p else "seed-0.json")).unlink()
    left = progress(sc, results, registry)
    assert (left.done, left.total) == (2, 6)
    # badnets: its injection and transfers are recorded by its defense file, nothing to recompute; blended: its
    # injection was never timed once its files are gone, then its transfer and defense; seed 0's clean transfer is
    # recorded; clean seed 5: its transfer and the defense. Medians over the distinct artifacts left.
    assert left.unmeasured == 1 and left.lower_bound
    transfer = (wall["downstream"] + wall["downstream_clean"]) / 2
    defense = (wall["defense"] + control["defense"]) / 2
    assert control["downstream_clean"] == wall["downstream_clean"]  # one artifact, counted once
    assert left.seconds == pytest.approx(2 * transfer + 2 * defense)


def _results(root):
    return {p: p.stat().st_mtime_ns for p in Path(root).rglob("seed-*.json")}


def test_grid_resumes_after_kill_9_and_never_redoes_finished_cells(registry, tmp_path):
    home, results = tmp_path / "home", tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmark", "grid", str(DATA / "tiny-grid.yaml"), "--workdir", str(home),
           "--results", str(results), "--workers", "1", "--quiet", "--no-isolation"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while len(_results(results)) < 4 and time.time() < deadline:  # two cells finished (2 files each)
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = _results(results)
    assert 4 <= len(finished) < 2 * 2 * 2 * 2 + 4, "kill the grid midway"
    lines = []
    counts = grid.run(DATA / "tiny-grid.yaml", home=home, results=results, registry=registry, progress=False,
                      log=lines.append, isolate=False)
    assert counts["failed_tasks"] == 0 and counts["failed_cells"] == 0
    # the log, all a batch job or nohup gets: what is left, then each task with how far the run is and the time left
    n = counts["ran"]
    assert re.fullmatch(rf"\[grid\] tiny-grid: {counts['tasks']} tasks, \d+ finished before, \d+ to run", lines[0])
    done = [re.match(r"\[done\] \[(\d+)/(\d+), ETA (\d+:\d\d:\d\d)\] ", m) for m in lines if m.startswith("[done]")]
    assert n > 1 and [int(m[1]) for m in done] == list(range(1, n + 1))
    assert all(int(m[2]) >= int(m[1]) for m in done) and (done[-1][2], done[-1][3]) == (str(n), "0:00:00")
    after = _results(results)
    assert all(after[p] == t for p, t in finished.items()), "a finished cell was redone"
    assert counts["skipped"] >= 2 + len(finished) // 2 - 1  # both upstreams and the finished cells
    n_cells = 2 * 2 * 2 * 2  # scenarios x attacks x seeds x (none + linf)
    n_controls = 2 * 2  # linf-pruning gives a model score: a control per scenario and seed
    assert len(after) == n_cells + n_controls
    again = grid.run(DATA / "tiny-grid.yaml", home=home, results=results, registry=registry, progress=False,
                     log=lambda m: None, isolate=False)
    assert again["ran"] == 0 and again["skipped"] == again["tasks"]


def test_ray_executor_runs_the_same_tasks(registry, tmp_path):
    ray = pytest.importorskip("ray")
    home, results = tmp_path / "home", tmp_path / "results"
    only = {"attacks": ["badnets"], "seeds": [0], "scenarios": ["tiny-full"]}
    local = grid.run(DATA / "tiny-grid.yaml", home=home, results=results / "local", registry=registry,
                     progress=False, log=lambda m: None, isolate=False, only=only)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote = grid.run(DATA / "tiny-grid.yaml", home=home, results=results / "ray", registry=registry,
                          executor="ray", threads=1, progress=False, log=lambda m: None, isolate=False, only=only)
    finally:
        ray.shutdown()
    assert local["failed_tasks"] == remote["failed_tasks"] == 0
    assert remote["ran"] == 2 and remote["computed"] == 0  # cell + controls; every stage came from the shared store
    for p in (results / "local").rglob("seed-*.json"):
        a = json.loads(p.read_text())
        b = json.loads((results / "ray" / p.relative_to(results / "local")).read_text())
        assert a["metrics"] == b["metrics"] and a["artifacts"] == b["artifacts"]


def test_a_changed_submission_has_its_cells_redone_and_nothing_else(tmp_path):
    """Result files record each plugin's code hash: after a submission's source changes, the grid redoes the
    cells it is in (recomputing only its own stages) and skips the rest."""
    import shutil

    from benchmark.registry import Registry
    subs = tmp_path / "subs"
    shutil.copytree(REPO / "submissions", subs)
    registry = Registry([subs], entry_points=False)
    kw = dict(home=tmp_path / "home", results=tmp_path / "results", progress=False, log=lambda m: None,
              isolate=False, only={"scenarios": ["tiny-full"], "seeds": [0]})
    first = grid.run(DATA / "tiny-grid.yaml", registry=registry, **kw)
    assert first["failed_tasks"] == 0 and first["ran"] == 4  # upstream, two attacks, the control
    cells = {p: p.read_bytes() for p in (tmp_path / "results").rglob("seed-*.json")}
    r = json.loads(next(p for p in cells if "blended/none" in str(p)).read_text())
    assert r["attack"]["code"] == registry.code_hash("attack", "blended")
    assert grid.run(DATA / "tiny-grid.yaml", registry=registry, **kw)["ran"] == 0
    with open(subs / "attacks" / "blended" / "blended.py", "a") as f:
        f.write("\n# a changed submission\n")
    registry = Registry([subs], entry_points=False)
    again = grid.run(DATA / "tiny-grid.yaml", registry=registry, **kw)
    assert again["ran"] == 1 and again["failed_tasks"] == 0  # the blended cell; badnets and the control skipped
    assert again["computed"] >= 1  # blended's backdoor stage (and what follows it) for the new code
    for p, before in cells.items():
        if "/blended/" not in str(p):
            assert p.read_bytes() == before, p
    r = json.loads(next(p for p in cells if "blended/none" in str(p)).read_text())
    assert r["attack"]["code"] == registry.code_hash("attack", "blended")


def test_adding_an_attack_keeps_the_finished_cells_and_a_null_attack_is_a_control(registry, tmp_path):
    """A cell is finished for a scenario whose recipe (everything but the lists that choose the cells) and whose
    statement of the cell's plugins are those the file records: adding an attack to the scenario file runs only
    its cells; changing a plugin's parameters or the recipe makes the affected cells unfinished. The added
    no-poison attack plants nothing: a control, run with the controls and only by the defenses that gave a model
    score (linf-pruning here, not finetune)."""
    f = tmp_path / "s.yaml"
    base = {**yaml.safe_load((DATA / "tiny.yaml").read_text()), "seeds": [0], "clean_seeds": [0],
            "defenses": ["linf-pruning", "finetune"]}
    f.write_text(yaml.safe_dump({**base, "attacks": ["badnets"]}))
    kw = dict(home=tmp_path / "home", results=tmp_path / "results", progress=False, log=lambda m: None,
              isolate=False, registry=registry)
    assert grid.run(f, **kw)["ran"] == 3  # upstream, the badnets cell, the control
    folder = tmp_path / "results" / "tiny-v1"
    cells = {p: p.read_bytes() for p in folder.rglob("seed-*.json")}
    assert len(cells) == 4  # badnets: none, linf-pruning, finetune; the control: linf-pruning
    _, (before,) = gridfile.load_grid(f, registry)
    f.write_text("# a control\n" + yaml.safe_dump({**base, "attacks": ["badnets", "no-poison"],
                                                   "description": "with a null attack"}))
    _, (after,) = gridfile.load_grid(f, registry)
    assert after.sha256 != before.sha256 and after.recipe == before.recipe
    assert [[(t.kind, t.attack) for t in p] for p in tasks.plan_tasks([after], registry)] == [
        [("upstream", None)], [("cell", "badnets")], [("controls", None), ("cell", "no-poison")]]
    again = grid.run(f, **kw)
    assert again["ran"] == 1 and again["failed_tasks"] == 0  # the no-poison cell only
    assert all(p.read_bytes() == b for p, b in cells.items())
    assert sorted(p.parent.name for p in (folder / "no-poison").rglob("seed-0.json")) == ["linf-pruning", "none"]
    r = json.loads((folder / "no-poison" / "linf-pruning" / "seed-0.json").read_text())
    assert r["scenario"] == {"name": "tiny", "version": 1, "sha256": after.sha256, "recipe": after.recipe}
    assert r["role"] == "null-attack" and r["metrics"]["defense"]["model_score"] is not None
    badnets, control = folder / "badnets" / "linf-pruning" / "seed-0.json", folder / "clean-upstream" / \
        "linf-pruning" / "seed-0.json"
    assert tasks.finished(badnets, after, registry) and tasks.finished(control, after, registry)
    assert not tasks.finished(badnets, after, None)  # the parameter check needs the registry: unsure is unfinished
    for change, stale in (({"attacks": [{"name": "badnets", "params": {"size": 4}}]}, [badnets]),
                          ({"defenses": [{"name": "linf-pruning", "params": {"threshold": 2.5}}]}, [badnets, control]),
                          ({"downstream": {**base["downstream"],
                                           "train": {**base["downstream"]["train"], "epochs": 2}}},
                           [badnets, control])):
        f.write_text(yaml.safe_dump({**base, "attacks": ["badnets"], **change}))
        _, (sc,) = gridfile.load_grid(f, registry)
        assert [p for p in (badnets, control) if not tasks.finished(p, sc, registry)] == stale, change


def test_eta_is_the_rate_so_far_times_the_tasks_left():
    assert grid.eta(120.0, 2, 3) == "ETA 0:03:00"  # 60 s a task
    assert grid.eta(3 * 3600 + 61.0, 1, 1) == "ETA 3:01:01"
    assert grid.eta(10.0, 0, 5) == "ETA unknown" and grid.eta(10.0, 4, 0) == "ETA 0:00:00"
