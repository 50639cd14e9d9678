"""The whole chain on the embedded default scenario: scores, caching, failures, result files."""
import json
import subprocess
import sys

import pytest
import torch

from benchmark import provenance
from benchmark.pipeline import cell_path
from benchmark.registry import Registry
from benchmark.scenario import PluginSpec
from benchmark.store import file_sha256

from .conftest import REPO, Run, write_submission

def test_backdoor_is_planted_upstream_and_the_clean_baseline_is_far_below(digits_env):
    *_, first, _ = digits_env
    m = first.cell(None)["metrics"]
    assert m["upstream"]["backdoored"]["asr"] >= 0.9
    assert m["upstream"]["clean"]["asr"] <= 0.1
    assert m["upstream"]["clean"]["ca"] >= 0.9 and m["upstream"]["backdoored"]["ca"] >= 0.9
    for which in ("clean", "backdoored"):
        t = m["transfer"][which]
        assert t["ca"] >= 0.85 and 0 <= t["asr"] <= 1 and t["target"] in range(5)


def test_first_run_trains_each_stage_once(digits_env):
    *_, first, _ = digits_env
    # finetune gives no model score: no clean-upstream control is needed
    assert sorted(first.computed) == sorted(["upstream", "backdoor", "downstream", "downstream", "defense"]
                                            + ["eval"] * 4)


def test_adding_a_defense_trains_nothing_but_that_defense(digits_env):
    *_, first, second = digits_env
    # linf-pruning and its control; finetune reused; crash stores nothing
    assert second.computed == ["defense", "defense"]
    assert second.cell("finetune")["metrics"] == first.cell("finetune")["metrics"]
    assert second.cell(None)["artifacts"] == first.cell(None)["artifacts"]


def test_a_crashing_defense_is_a_failed_cell_and_the_others_complete(digits_env):
    home, _, sc, _, second = digits_env
    crash = next(c for c in second.cells if (c["defense"] or {}).get("id") == "crash" and c["role"] != "clean-upstream")
    assert crash["status"] == "failed" and crash["error"]["type"] == "RuntimeError"
    assert "deliberate crash" in crash["error"]["message"] and crash["metrics"]["transfer"]
    assert second.cell("finetune")["status"] == "ok" and second.cell("linf-pruning")["status"] == "ok"
    saved = json.loads(cell_path(home / "results", sc, "badnets", "crash", 0).read_text())
    assert saved["status"] == "failed"


def test_defended_scores_and_linf_record(digits_env):
    *_, second = digits_env
    d = second.cell("linf-pruning")
    m = d["metrics"]["defense"]
    assert set(m) >= {"ca", "asr", "ra", "der", "model_score", "input_auroc", "repaired"}
    assert m["repaired"] is True and m["input_auroc"] is None and isinstance(m["model_score"], float)
    assert isinstance(d["info"]["pruned"], list) and d["info"]["channels"] > 0
    before = d["metrics"]["transfer"]["backdoored"]
    expect = (max(0, before["asr"] - m["asr"]) - max(0, before["ca"] - m["ca"]) + 1) / 2
    assert m["der"] == pytest.approx(expect)


def test_result_file_has_provenance(digits_env):
    home, _, sc, *_ = digits_env
    r = json.loads(cell_path(home / "results", sc, "badnets", "finetune", 0).read_text())
    assert r["scenario"] == {"name": "digits", "version": sc.version, "sha256": sc.sha256, "recipe": sc.recipe}
    assert r["seed"] == 0 and r["status"] == "ok" and r["attack"]["params"]["size"] == 3
    assert set(r["wall_time_s"]) == {"upstream", "backdoor", "downstream_clean", "downstream", "defense"}
    assert all(isinstance(v, float) for v in r["wall_time_s"].values())
    prov = r["provenance"]
    assert prov["packages"]["torch"] and prov["hardware"]["device"] == "cpu" and "commit" in prov["git"]
    # CPU numbers differ between machines by their kernels' instruction set: say which ran
    assert prov["hardware"]["cpu"] and prov["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # each stage's key with the sha256 of the weights stored under it (a stage retrained elsewhere keeps its key)
    assert set(r["weights"]) == {"upstream", "backdoor", "downstream_clean", "downstream", "defense"}
    for stage, sha in r["weights"].items():
        folder = next((home / "store").glob(f"*/{r['artifacts'][stage]}"))
        assert sha == json.loads((folder / "meta.json").read_text())["model"]["sha256"]
        assert sha == file_sha256(folder / "model.safetensors")


def test_a_result_that_breaks_the_schema_is_refused_before_it_is_written(digits_env, monkeypatch):
    """Validated at write time: a harness bug stops the first cell instead of leaving files that every later
    leaderboard read rejects; the finished file stays as it was."""
    from benchmark import pipeline
    from benchmark.errors import BenchError

    home, registry, sc, *_ = digits_env
    path = cell_path(home / "results", sc, "badnets", "finetune", 0)
    before = path.read_text()
    good = pipeline.collect

    def broken(device):
        prov = good(device)
        prov["packages"]["bdbench"] = None
        return prov

    monkeypatch.setattr(pipeline, "collect", broken)
    with pytest.raises(BenchError, match=r"seed-0\.json: does not match the result schema[\s\S]*packages/bdbench"):
        Run(home, registry, sc, ["finetune"])
    assert path.read_text() == before


def test_provenance_names_bdbench_when_run_from_a_source_tree(monkeypatch):
    """No installed metadata (the package on PYTHONPATH, as on a GPU machine): the running code's version, not
    None (which the result schema rejects, failing the grid after its cells ran)."""
    import benchmark

    def not_installed(name):
        raise provenance.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(provenance.metadata, "version", not_installed)
    pkgs = provenance.packages()
    assert pkgs["bdbench"] == benchmark.__version__ and pkgs["torch"] is None


def test_git_state_names_the_changed_files(tmp_path):
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = provenance.git_state.__wrapped__(str(tmp_path))
    assert clean["dirty"] is False and "changed" not in clean and len(clean["commit"]) == 40
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "new.py").write_text("")  # untracked: not part of what ran from the repository
    assert provenance.git_state.__wrapped__(str(tmp_path)) == {"commit": clean["commit"], "dirty": True,
                                                              "changed": ["b.py"]}
    # a grid rewriting the committed results, an edited README: nothing that computes a number
    for f in ("leaderboard/results/s-v1/badnets/none/seed-0.json", "README.md", "docs/x.md"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("1")
    run("add", "leaderboard", "README.md", "docs")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    for f in ("leaderboard/results/s-v1/badnets/none/seed-0.json", "README.md", "docs/x.md"):
        (tmp_path / f).write_text("2")
    assert provenance.git_state.__wrapped__(str(tmp_path))["changed"] == ["b.py"]
    run("checkout", "b.py")
    assert provenance.git_state.__wrapped__(str(tmp_path))["dirty"] is False
    (tmp_path / "b.py").write_text("y = 2\n")
    run("mv", "a.py", "a b\u00e9.py")  # a rename, a space, a non-ASCII name: plain paths, no quoting
    assert provenance.git_state.__wrapped__(str(tmp_path))["changed"] == ["a b\u00e9.py", "a.py", "b.py"]


@pytest.mark.parametrize("sign,expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_input_level_auroc_follows_the_score(digits_env, sign, expected):
    home, registry, sc, *_ = digits_env
    run = Run(home, registry, sc, [PluginSpec("corner", params={"sign": sign}, label=f"corner{sign}")])
    m = run.cell(f"corner{sign}")["metrics"]["defense"]
    # clean digits have a black corner, every triggered input a white one
    assert m["input_auroc"] == pytest.approx(expected) and m["repaired"] is False
    assert m["model_score"] == 0.25
    assert m["asr"] == run.cell(None)["metrics"]["transfer"]["backdoored"]["asr"]  # no repair: same model


def test_cli_prints_the_table_from_the_cache(digits_env):
    home, *_ = digits_env
    r = subprocess.run([sys.executable, "-m", "benchmark", "run", "--seeds", "0", "--defense", "finetune",
                        "--workdir", str(home / "store"), "--results", str(home / "cli-results"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "upstream backdoored" in r.stdout and "+ finetune" in r.stdout
    assert "0 stages computed" in r.stdout


def test_control_cells_run_each_scoring_defense_on_the_clean_upstream_transfer(digits_env):
    home, _, sc, _, second = digits_env
    c = second.cell("linf-pruning", control=True)
    assert c["status"] == "ok" and c["attack"] is None
    m = c["metrics"]["defense"]
    assert isinstance(m["model_score"], float) and m["asr"] is None and m["der"] is None and m["repaired"]
    assert c["artifacts"]["downstream_clean"] == second.cell(None)["artifacts"]["downstream_clean"]
    assert not any(c["role"] == "clean-upstream" and c["defense"]["id"] in ("crash", "finetune") for c in second.cells)
    assert cell_path(home / "results", sc, "clean-upstream", "linf-pruning", 0).is_file()


def test_adding_a_defense_leaves_finished_result_files_untouched(digits_env, tmp_path):
    """A finished cell recomputed from the same stages keeps its file (and so the provenance of the code that
    computed it); a cell whose numbers change is rewritten."""
    home, registry, sc, *_ = digits_env
    (tmp_path / "store").symlink_to(home / "store")  # the session's cached stages, results in a fresh folder
    Run(tmp_path, registry, sc, ["finetune"])
    files = {d: cell_path(tmp_path / "results", sc, "badnets", d, 0) for d in (None, "finetune")}
    stamp = {d: (p.stat().st_mtime_ns, p.read_bytes()) for d, p in files.items()}
    r = json.loads(files[None].read_text())
    r["metrics"]["transfer"]["backdoored"]["asr"] = 0.5  # a stale number from older code: must be replaced
    files[None].write_text(json.dumps(r))
    # the same numbers from other weights behind the same keys (retrained elsewhere): the file must name the new ones
    other = {d: cell_path(tmp_path / "results", sc, "badnets", d, 0) for d in ("linf-pruning", "corner")}
    Run(tmp_path, registry, sc, ["linf-pruning", "corner"])
    o = json.loads(other["linf-pruning"].read_text())
    o["weights"]["upstream"] = "0" * 64
    other["linf-pruning"].write_text(json.dumps(o, indent=1, sort_keys=True))
    o = json.loads(other["corner"].read_text())
    o["weights"] = {}  # written before weights were recorded: nothing says they differ, so it is kept
    other["corner"].write_text(json.dumps(o, indent=1, sort_keys=True))
    kept = other["corner"].read_bytes()
    again = Run(tmp_path, registry, sc, ["finetune", "linf-pruning", "corner"])
    assert json.loads(other["linf-pruning"].read_text())["weights"] == again.cell(None)["weights"] | {
        "defense": again.cell("linf-pruning")["weights"]["defense"]}
    assert other["corner"].read_bytes() == kept
    assert (files["finetune"].stat().st_mtime_ns, files["finetune"].read_bytes()) == stamp["finetune"]
    assert json.loads(files[None].read_text())["metrics"] == json.loads(stamp[None][1])["metrics"]  # rewritten
    assert again.cell("finetune")["finished"] == json.loads(stamp["finetune"][1])["finished"]
    assert cell_path(tmp_path / "results", sc, "badnets", "linf-pruning", 0).is_file()


def test_a_defense_that_cannot_be_imported_is_a_failed_cell_and_the_others_complete(digits_env, tmp_path):
    """Its class never loads, so neither its run nor its position can be asked of it: the cell still gets a file
    with the error, and the run goes on."""
    home, registry, sc, *_ = digits_env
    subs = tmp_path / "subs"
    write_submission(subs, "defense", "unimportable", "raise ImportError('a dependency is missing')\n")
    reg = Registry([REPO / "submissions", home / "subs", subs], entry_points=False)
    (tmp_path / "store").symlink_to(home / "store")
    run = Run(tmp_path, reg, sc, ["unimportable", "finetune"])
    bad = run.cell("unimportable")
    assert bad["status"] == "failed" and "a dependency is missing" in bad["error"]["message"]
    assert bad["defense"]["position"] == "model" and run.cell("finetune")["status"] == "ok"
    assert cell_path(tmp_path / "results", sc, "badnets", "unimportable", 0).is_file()
