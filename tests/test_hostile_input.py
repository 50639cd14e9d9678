"""Bad values and hostile circumstances end in clear errors, never a traceback or a lost result: a device that does
not exist, numbers as people write them, two runs on one store, a run without a sandbox, a model file's history."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from benchmark import isolation, models, sandbox
from benchmark.config import read_yaml
from benchmark.errors import BenchError
from benchmark.resultfile import validate
from benchmark.scenario import load_scenario
from benchmark.store import Store, file_sha256

from .conftest import REPO

DATA = Path(__file__).parent / "data"


def bdbench(*args, env=None, timeout=600):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, cwd=REPO,
                          env=e, timeout=timeout)


def cli(capsys, *args) -> tuple[int, str]:
    """`bdbench ARGS` in this process: its exit status and what it printed to stderr."""
    from benchmark.cli import main
    rc = main(list(args))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("device", ["foo", "cuda:banana", "mps", "tpu:0", ""])
def test_an_unknown_device_is_a_clear_error(device, tmp_path, capsys):
    for cmd in (["run", str(DATA / "tiny.yaml")], ["grid", str(DATA / "tiny-grid.yaml"), "--isolation", "none"]):
        rc, err = cli(capsys, *cmd, "--device", device, "--workdir", str(tmp_path), "--results", str(tmp_path / "r"))
        assert rc == 2 and "--device" in err and "cpu" in err, err
    assert not (tmp_path / "r").exists()  # nothing ran


def test_a_cuda_device_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for cmd in (["run", str(DATA / "tiny.yaml")], ["grid", str(DATA / "tiny-grid.yaml"), "--isolation", "none"]):
        rc, err = cli(capsys, *cmd, "--device", "cuda", "--workdir", str(tmp_path), "--results", str(tmp_path / "r"))
        assert rc == 2 and "no CUDA device" in err, err


def test_the_cli_says_device_errors_without_a_traceback(tmp_path):
    r = bdbench("run", str(DATA / "tiny.yaml"), "--device", "foo", "--workdir", str(tmp_path))
    assert r.returncode == 2 and "--device 'foo'" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("text,value", [
    ("1e-2", 0.01), ("1E-2", 0.01), ("5e-4", 0.0005), ("1e5", 100000.0), ("+2.5e+3", 2500.0), ("-1e3", -1000.0),
    ("1.0e-3", 0.001), (".5", 0.5), ("3", 3), ("1_000", 1000),
])
def test_numbers_are_read_as_people_write_them(text, value):
    v = read_yaml(f"x: {text}".encode(), "f.yaml")["x"]
    assert v == value and type(v) is type(value)


@pytest.mark.parametrize("text", ["v1e2", "1e", "e5", "1e-2x", "'1e-2'", "0.1.2", "2026-12-07"])
def test_strings_stay_strings(text):
    assert not isinstance(read_yaml(f"x: {text}".encode(), "f.yaml")["x"], float)


def test_a_scenario_with_scientific_notation_loads(tmp_path, registry):
    raw = (DATA / "tiny.yaml").read_text().replace("lr: 0.05", "lr: 5e-2").replace("lr: 0.01", "lr: 1e-2")
    p = tmp_path / "tiny.yaml"
    p.write_text(raw)
    sc = load_scenario(str(p), registry)
    assert sc.upstream.train.lr == 0.05 and sc.downstream.train.lr == 0.01
    ref = load_scenario(str(DATA / "tiny.yaml"), registry)
    assert (sc.upstream, sc.downstream) == (ref.upstream, ref.downstream)  # the same numbers, the same stages


def test_a_manifest_with_scientific_notation_loads(tmp_path):
    from benchmark.registry import load_manifest
    (tmp_path / "submission.yaml").write_text(yaml.safe_dump({
        "name": "x", "kind": "defense", "entry": "m:P", "paper": "p", "authors": ["a"], "licence": "MIT",
        "parameters": {"lr": 0.1}}).replace("lr: 0.1", "lr: 1e-3"))
    assert load_manifest(tmp_path / "submission.yaml").parameters == {"lr": 0.001}


def test_two_runs_of_the_same_cells_on_one_store_lose_nothing(tmp_path):
    """Two `bdbench run`s at once, same scenario, same cells, one store and one results folder: both finish every
    cell, every artifact verifies against its sha256, every result file is whole and valid, no temporary is left."""
    home, results = tmp_path / "home", tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmark", "run", str(DATA / "tiny.yaml"), "--seeds", "0", "--workdir", str(home),
           "--results", str(results), "--quiet", "--threads", "1", "--isolation", "process", "--strict"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    files = sorted(results.rglob("seed-*.json"))
    assert len(files) == 2 * 2 + 1  # 2 attacks x (none + linf-pruning), and linf-pruning on the clean upstream
    for f in files:
        r = json.loads(f.read_text())
        validate(r, str(f))
        assert r["status"] == "ok"
    for meta in home.rglob("meta.json"):
        m = json.loads(meta.read_text())
        for entry in [m.get("model")] + list((m.get("tensors") or {}).values()):
            if entry:
                assert file_sha256(meta.parent / entry["file"]) == entry["sha256"], meta
    left = [p for p in list(home.rglob(".*")) + list(results.rglob(".*")) + list(results.rglob("*.tmp"))]
    assert left == [], left


def test_a_stage_finished_by_another_run_meanwhile_is_kept(tmp_path):
    """The race itself: while this run builds a stage, another run stores the same one; this run keeps theirs."""
    store = Store(tmp_path)
    m = models.Classifier("test_resnet", 3, 1)

    def theirs():
        return m, {"metrics": {"who": "theirs"}}

    def ours():
        Store(tmp_path).build("upstream", {"x": 1}, theirs)  # the other run finishes first
        return m, {"metrics": {"who": "ours"}}
    art = store.build("upstream", {"x": 1}, ours)
    assert art.meta["metrics"]["who"] == "theirs"
    assert [p.name for p in (tmp_path / "upstream").iterdir()] == [art.key]  # no temporary left


def test_a_defense_gets_no_training_history_in_its_model(tmp_path):
    m = models.Classifier("test_resnet", 3, 1)
    for b in m.modules():
        if isinstance(b, torch.nn.BatchNorm2d):
            b.num_batches_tracked += 1234
    models.save(m, tmp_path / "m.safetensors")
    models.for_defense(tmp_path / "m.safetensors", tmp_path / "copy.safetensors")
    with safe_open(str(tmp_path / "copy.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        counters = [k for k in f.keys() if k.endswith("num_batches_tracked")]
        assert counters and all(int(f.get_tensor(k)) == 0 for k in counters)
        same = [k for k in f.keys() if not k.endswith("num_batches_tracked")]
        orig = dict(m.state_dict())
        assert all(torch.equal(f.get_tensor(k), orig[k]) for k in same)
    x = torch.rand(4, 1, 32, 32)
    m.eval()
    assert torch.equal(models.load(tmp_path / "copy.safetensors", m.config).eval()(x), m(x))


def test_a_leaderboard_run_refuses_to_start_without_a_sandbox(tmp_path, monkeypatch, capsys):
    """Where no sandbox starts, `bdbench grid` refuses unless --isolation says otherwise; `bdbench run` warns and
    uses a plain process, unless --isolation sandbox asked for one by name."""
    monkeypatch.setattr(sandbox, "bwrap", lambda: None)
    sandbox.available.cache_clear()
    try:
        with pytest.raises(BenchError, match="no sandbox for defenses.*--isolation process"):
            isolation.resolve_mode("sandbox", refuse=True)
        said = []
        assert isolation.resolve_mode("sandbox", log=said.append) == "process"
        assert "WARNING" in said[0] and "bwrap not found" in said[0]
        assert isolation.resolve_mode("process", refuse=True) == "process"
        rc, err = cli(capsys, "grid", str(DATA / "tiny-grid.yaml"), "--workdir", str(tmp_path), "--results",
                      str(tmp_path / "r"), "--device", "cpu")
        assert rc == 2 and "no sandbox for defenses" in err, err
        rc, err = cli(capsys, "run", str(DATA / "tiny.yaml"), "--isolation", "sandbox", "--workdir", str(tmp_path),
                      "--results", str(tmp_path / "r"), "--device", "cpu")
        assert rc == 2 and "no sandbox for defenses" in err, err
        assert not (tmp_path / "r").exists()
    finally:
        sandbox.available.cache_clear()
    rc, err = cli(capsys, "run", "--isolation", "process", "--no-isolation")
    assert rc == 2 and "contradicts" in err


@pytest.mark.parametrize("mode", ["jail", "", "True"])
def test_an_unknown_isolation_is_a_clear_error(mode):
    with pytest.raises(BenchError, match="use one of sandbox, process, none"):
        isolation.resolve_mode(mode)
