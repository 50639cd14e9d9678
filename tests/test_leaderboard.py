"""Result schema, the static site (escaping, determinism, a real browser), compare and validate."""
import copy
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import resultfile, results, site
from benchmark.compare import compare
from benchmark.errors import BenchError
from benchmark.validate import validate

from .conftest import REPO, result, write_submission

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def results_dir(digits_env, tmp_path_factory):
    """The session's digits results, plus a copy under an evil defense name and a second scenario version."""
    home, *_ = digits_env
    out = tmp_path_factory.mktemp("lb") / "results"
    shutil.copytree(home / "results", out)
    cell = json.loads((out / "digits-v1/badnets/finetune/seed-0.json").read_text())
    evil = copy.deepcopy(cell)
    evil["defense"]["id"] = evil["defense"]["name"] = EVIL
    (out / "digits-v1/badnets/evil").mkdir()
    (out / "digits-v1/badnets/evil/seed-0.json").write_text(json.dumps(evil))
    v2 = copy.deepcopy(cell)
    v2["scenario"]["version"] = 2
    v2["metrics"]["defense"]["asr"] = 0.123456
    (out / "digits-v2/badnets/finetune").mkdir(parents=True)
    (out / "digits-v2/badnets/finetune/seed-0.json").write_text(json.dumps(v2))
    return out


def tree_hash(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_schema_failures_are_clear(results_dir, tmp_path):
    cell = json.loads((results_dir / "digits-v1/badnets/finetune/seed-0.json").read_text())
    resultfile.validate(cell)
    bad = copy.deepcopy(cell)
    bad["metrics"]["upstream"]["clean"]["ca"] = "0.99"
    del bad["provenance"]["git"]
    with pytest.raises(BenchError) as e:
        resultfile.validate(bad, "x.json")
    msg = str(e.value)
    assert "x.json" in msg and "metrics/upstream/clean/ca: '0.99' is not of type" in msg
    assert "provenance: 'git' is a required property" in msg
    bad = copy.deepcopy(cell)
    bad["status"] = "failed"
    with pytest.raises(BenchError, match="'error' is a required property"):
        resultfile.validate(bad)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "broken.json").write_text("{not json")
    with pytest.raises(BenchError, match="broken.json: not valid JSON"):
        resultfile.load(tmp_path / "r")


def test_site_escapes_names_and_keeps_versions_apart(results_dir, tmp_path):
    counts = site.build(results_dir, tmp_path / "site")
    index = (tmp_path / "site/index.html").read_text()
    assert EVIL not in index and "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "Scenario digits v1" in index and "Scenario digits v2" in index
    headline = index.split('id="headline-table"')[1].split("</table>")[0]
    assert 'href="#digits-v1"' in headline and ">badnets</th>" in headline  # the cross-scenario transfer table
    v1 = index.split("Scenario digits v2")[0]
    assert "0.123" not in v1.split("Scenario digits v1")[1]  # the v2 number stays in v2's section
    assert counts["scenarios"] == 2
    assert re.search(r"computed on [^<(]+, \d+ cores \(\d+ cells\)", index)  # each scenario says where it ran
    for page in (tmp_path / "site/submissions").glob("*.html"):
        assert EVIL not in page.read_text()
    assert (tmp_path / "site/plots/digits-v1-ca-asr.svg").read_text().startswith("<svg")
    assert "http://" not in index.replace("http://www.w3.org", "") and "https://cdn" not in index
    csv_ = (tmp_path / "site/data/results.csv").read_text().splitlines()
    assert csv_[0].startswith("scenario,version,attack,defense,seed,status") and len(csv_) == counts["cells"] + 1
    attack_page = (tmp_path / "site/submissions/attack-badnets.html").read_text()
    assert "triggers.png" in attack_page and "gradcam.png" in attack_page
    assert (tmp_path / "site/media/digits-v1/badnets/gradcam.png").is_file()


def test_build_is_byte_identical(results_dir, tmp_path):
    site.build(results_dir, tmp_path / "a")
    site.build(results_dir, tmp_path / "b")
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")


def test_compare_reports_differences_and_overlap(results_dir, capsys):
    rows = compare(results_dir, "digits", ["finetune", "linf-pruning"], version=1)
    out = capsys.readouterr().out
    assert "finetune" in out and "linf-pruning" in out and "Δ" in out
    assert {r["name"] for r in rows} == {"finetune", "linf-pruning"}
    with pytest.raises(BenchError, match="not in the results"):
        compare(results_dir, "digits", ["finetune", "nope"], version=1)


def test_intervals_overlap_only_with_two_seeds_or_more():
    """Overlap is a statement about 95% intervals: one seed has none, so the difference is unresolved (None)."""
    def stat(*vs):
        return results.Stat(list(vs))
    assert stat(0.5).overlaps(stat(0.9)) is None and stat(0.5, 0.6).overlaps(stat(0.9)) is None
    close, far = stat(0.50, 0.52, 0.54), stat(0.90, 0.91, 0.92)
    assert close.overlaps(stat(0.51, 0.53, 0.55)) is True and close.overlaps(far) is False


def test_compare_shows_sample_auroc_of_data_inspection_defenses(results_dir, tmp_path):
    """A data-inspection defense's only score is its sample AUROC: compare must show it (mean over seeds)."""
    out = tmp_path / "results"
    shutil.copytree(results_dir, out)
    source = json.loads((out / "digits-v1/badnets/finetune/seed-0.json").read_text())
    for seed, auroc in ((0, 0.75), (1, 0.85)):
        cell = copy.deepcopy(source)
        cell["seed"] = seed
        cell["defense"]["id"] = cell["defense"]["name"] = "inspector"
        cell["metrics"]["defense"]["sample_auroc"] = auroc
        (out / "digits-v1/badnets/inspector").mkdir(exist_ok=True)
        (out / f"digits-v1/badnets/inspector/seed-{seed}.json").write_text(json.dumps(cell))
    rows = compare(out, "digits", ["finetune", "inspector"], version=1)
    assert next(r for r in rows if r["name"] == "inspector")["sample_auroc"] == pytest.approx(0.80)
    assert next(r for r in rows if r["name"] == "finetune")["sample_auroc"] is None


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_browser_sorts_a_table(results_dir, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api") if not os.environ.get("CI") else __import__(
        "playwright.sync_api", fromlist=["sync_playwright"])
    if not _chromium():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium not installed")
    site.build(results_dir, tmp_path / "site")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto((tmp_path / "site/index.html").as_uri())
        table = page.locator("#defenses-digits-v1")
        header = table.locator("th", has_text="ASR").first
        asr = sorted(float(v) for v in table.locator("tbody tr td:nth-child(5)").evaluate_all(
            "cells => cells.map(c => c.getAttribute('data-value'))") if v)  # failed cells have none: sorted last
        header.click()
        first = table.locator("tbody tr").first.locator("td").nth(4).get_attribute("data-value")
        assert float(first) == asr[0] and header.get_attribute("aria-sort") == "ascending"
        header.click()
        first = table.locator("tbody tr").first.locator("td").nth(4).get_attribute("data-value")
        assert float(first) == asr[-1]
        assert table.locator("tbody tr").first.locator("td").nth(4).inner_text().startswith(f"{asr[-1]:.3f}")
        browser.close()


def test_validate_accepts_a_builtin_and_explains_failures(digits_env, tmp_path):
    home, *_ = digits_env
    assert validate(REPO / "submissions/defenses/finetune", workdir=home / "store") == []
    bad = write_submission(tmp_path, "attack", "lazy",
                           "from benchmark import Attack\nclass Plugin(Attack):\n    pass\n")
    assert "must implement apply" in validate(bad)[0]
    out = write_submission(tmp_path, "attack", "outside", """
        from benchmark import Attack
        class Plugin(Attack):
            def apply(self, x):
                return x * 2
        """)
    assert "[0, 1]" in validate(out)[0]
    broken = write_submission(tmp_path, "defense", "noparams", "x = 1\n", manifest="name: noparams\nkind: defense\n")
    assert "manifest" in validate(broken)[0] and "entry" in validate(broken)[0]
    crash = write_submission(tmp_path, "defense", "crashy", """
        from benchmark import Defense
        class Plugin(Defense):
            def run(self, model, clean, ctx):
                raise ValueError("boom")
        """)
    problems = validate(crash, workdir=home / "store")
    assert problems and "ValueError: boom" in problems[0]


def test_cli_builds_the_site(results_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmark", "leaderboard", "build", str(tmp_path / "s"),
                        "--results", str(results_dir)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "built" in r.stdout and (tmp_path / "s/index.html").is_file()
    r = subprocess.run([sys.executable, "-m", "benchmark", "leaderboard", "headline", "--results", str(results_dir),
                        "--scenario", "digits*"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "does the backdoor survive transfer?" in r.stdout and "digits-v1" in r.stdout and "badnets" in r.stdout


def _cell(scenario, attack, seed, asr_tr, asr_base, asr_up=0.9, defense=None, status="ok", role="backdoored",
          ca_up=0.7, build="a" * 64, finished="2026-12-01T00:00:00Z"):
    m = {"upstream": {"clean": {"ca": ca_up, "asr": 0.0, "ra": 0.7},
                      "backdoored": {"ca": 0.7, "asr": asr_up, "ra": 0.1}},
         "transfer": {"clean": {"ca": 0.9 + seed / 100, "asr": asr_base, "ra": 0.9, "target": 0},
                      "backdoored": {"ca": 0.9, "asr": asr_tr, "ra": 0.1, "target": 0}}}
    if defense:
        m["defense"] = {"ca": 0.9, "asr": 0.0, "ra": 0.9, "der": 0.9, "repaired": True, "input_auroc": None,
                        "model_score": None}
    if role == "clean-upstream":
        m = {"defense": m["defense"]}
    return result(role, attack=attack, defense=defense, seed=seed, status=status, build=build, finished=finished,
                  metrics=m if status == "ok" else None, scenario=scenario)


def test_headline_lift_is_paired_by_seed_and_skips_defenses_and_controls():
    from benchmark.metrics import mean_ci
    cells = [_cell("s-big", "badnets", s, tr, b) for s, tr, b in ((0, 0.9, 0.1), (1, 0.5, 0.4), (2, 0.7, 0.0))]
    cells += [_cell("s-big", "badnets", 0, 0.0, 0.0, defense="finetune"),
              _cell("s-big", None, 0, 0.0, 0.0, defense="finetune", role="clean-upstream"),
              _cell("s-big", "badnets", 3, 0.0, 0.0, status="failed"),
              _cell("s-small", "blended", 0, 0.2, 0.25)]
    h = results.headline(cells)
    assert h["attacks"] == ["badnets", "blended"] and [r["key"] for r in h["rows"]] == ["s-big-v1", "s-small-v1"]
    e = h["rows"][0]["entries"]["badnets"]
    lifts = [0.9 - 0.1, 0.5 - 0.4, 0.7 - 0.0]
    assert e["seeds"] == 3 and e["lift"].values == pytest.approx(lifts)
    assert (e["lift"].mean, e["lift"].half) == pytest.approx(mean_ci(lifts))
    assert e["asr_baseline"].values == pytest.approx([0.1, 0.4, 0.0])
    assert h["rows"][0]["ca_transfer"].values == pytest.approx([0.90, 0.91, 0.92])  # one value per seed
    assert "badnets" not in h["rows"][1]["entries"]
    assert h["rows"][1]["entries"]["blended"]["lift"].values == pytest.approx([-0.05])
    assert e["implanted"]


def test_headline_keeps_builds_of_the_clean_upstream_apart():
    """A scenario finished on other hardware (or after its store was lost) holds two builds of the same clean
    upstream, whose clean models differ; their CAs are shown per build, never pooled as if they were seeds."""
    def rebuilt(attack, seed, ca_up, ca_down, finished):
        c = _cell("s", attack, seed, 0.9, 0.1, ca_up=ca_up, build="a" * 64 if ca_up == 0.75 else "b" * 64,
                  finished=finished)
        c.metrics.transfer.clean.ca = ca_down
        return c
    cells = [rebuilt("badnets", s, 0.70, 0.80 + s / 100, "2026-11-28") for s in (0, 1)]
    cells += [rebuilt("blended", s, 0.75, 0.60, "2026-11-27") for s in (0, 1)]
    cells += [rebuilt("sig", 0, 0.75, 0.60, "2026-11-27")]
    cells += [rebuilt("sig", 1, 0.70, 0.81, "2026-11-29")]  # a grid resumed on the new build
    row = results.headline(cells)["rows"][0]
    assert [(b["ca_upstream"], b["attacks"]) for b in row["builds"]] == [(0.75, ["blended", "sig"]),
                                                                            (0.70, ["badnets", "sig"])]
    assert row["builds"][0]["ca_transfer"].values == pytest.approx([0.60, 0.60])  # one per seed, not per cell
    assert row["builds"][1]["ca_transfer"].values == pytest.approx([0.80, 0.81])
    assert row["ca_upstream"].values == pytest.approx([0.75, 0.70])
    out = _headline_text(cells)
    assert "badnets [2]" in out and "blended [1]" in out and "sig [1,2]" in out and "0.750 / 0.700" in out
    assert ("2 builds of the clean upstream" in out
            and "[1] upstream aaaaaaaa on cpu, 2 cores; [2] upstream bbbbbbbb on cpu, 2 cores" in out)
    assert len(results.headline(cells[:2])["rows"][0]["builds"]) == 1 and "[1]" not in _headline_text(cells[:2])


def _headline_text(cells):
    from rich.console import Console
    from benchmark.report import print_headline
    con = Console(record=True, width=250)
    print_headline(cells, console=con)
    return con.export_text()


def test_headline_marks_backdoors_never_implanted_upstream():
    """A lift near 0 reads as 'the victim's fine-tuning removed the backdoor'; when the ASR before transfer is
    under IMPLANTED_ASR there was no backdoor to remove, and the table must say so rather than show a bare lift."""
    lo, hi = results.IMPLANTED_ASR - 0.01, results.IMPLANTED_ASR
    cells = [_cell("s", "weak", s, 0.1, 0.1, asr_up=up) for s, up in ((0, lo - 0.2), (1, lo + 0.2), (2, lo))]
    cells += [_cell("s", "strong", s, 0.9, 0.1, asr_up=hi) for s in (0, 1)]
    h = results.headline(cells)
    entries = h["rows"][0]["entries"]
    assert entries["weak"]["asr_upstream"].mean == pytest.approx(lo) and not entries["weak"]["implanted"]
    assert entries["strong"]["implanted"]  # the threshold itself counts as implanted
    from rich.console import Console
    from benchmark.report import print_headline
    console = Console(width=250, record=True)
    print_headline(cells, console)
    lines = console.export_text().splitlines()
    assert "not implanted" in next(line for line in lines if " weak " in line)
    assert "not implanted" not in next(line for line in lines if " strong " in line)
    from benchmark.report import headline_markdown
    page = headline_markdown(cells).splitlines()
    weak, strong = (next(line for line in page if f"| {a} |" in line) for a in ("weak", "strong"))
    assert weak.endswith("not implanted | 3 |") and strong.endswith("| 0.800 ± 0.000 | 2 |")


def test_the_findings_page_is_generated_from_the_committed_results():
    """docs/findings.md is `bdbench leaderboard headline --markdown` of the committed results, never typed."""
    from benchmark.gridfile import tiers
    from benchmark.report import headline_markdown
    from tests.conftest import REPO
    page = (Path(REPO) / "docs" / "findings.md").read_text()
    assert page == headline_markdown(resultfile.load(Path(REPO) / "leaderboard" / "results"), tiers()), \
        "regenerate it: bdbench leaderboard headline --markdown > docs/findings.md"


def test_build_never_deletes_what_it_did_not_build(results_dir, tmp_path):
    """`build OUT` empties OUT first: only an earlier site may be emptied, never the results or a foreign folder."""
    import shutil
    res = tmp_path / "lb" / "results"
    shutil.copytree(results_dir, res)
    n = len(list(res.rglob("*.json")))
    for out, msg in ((tmp_path / "lb", "holds the result files"), (res, "holds the result files")):
        with pytest.raises(BenchError, match=msg):
            site.build(res, out)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(BenchError, match="not empty and not a site bdbench built"):
        site.build(res, tmp_path / "mine")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BenchError, match="is not a folder"):
        site.build(res, tmp_path / "afile")
    assert len(list(res.rglob("*.json"))) == n and (tmp_path / "mine" / "thesis.tex").is_file()
    site.build(res, tmp_path / "s")
    (tmp_path / "s" / "stale.html").write_text("old")
    site.build(res, tmp_path / "s")  # an earlier site is emptied and rebuilt
    assert not (tmp_path / "s" / "stale.html").exists() and (tmp_path / "s" / "index.html").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="holds no result files"):
        site.build(tmp_path / "empty", tmp_path / "s2")
    with pytest.raises(BenchError, match="no such results folder"):
        site.build(tmp_path / "nope", tmp_path / "s2")


def test_leaderboard_submissions_flag_is_kept_before_or_after_the_action():
    from benchmark.cli import parser
    for argv in (["leaderboard", "--submissions", "X", "build", "o"],
                 ["leaderboard", "build", "o", "--submissions", "X"],
                 ["leaderboard", "--submissions", "X", "headline"]):
        assert parser().parse_args(argv).submissions == ["X"], argv
    assert parser().parse_args(["leaderboard", "build", "o"]).submissions is None


def test_each_scenario_names_the_command_that_reproduces_it(registry, tmp_path):
    """Shipped scenarios run by name, a shipped grid's scenarios through the grid, and an experiment file by
    path: `bdbench run` for a scenario file, `bdbench grid ... --scenario` for a grid file."""
    import yaml

    from benchmark import gridfile
    from benchmark.scenario import load_scenario
    from tests.conftest import REPO
    exp = tmp_path / "ci" / "experiments"
    exp.mkdir(parents=True)
    data = Path(REPO) / "tests" / "data"
    shutil.copy(data / "tiny.yaml", exp / "one.yaml")
    (exp / "many.yaml").write_text(yaml.safe_dump({"name": "many", "scenarios": [str(data / "tiny.yaml")],
                                                   "vary": {"downstream.protocol": ["full", "linear"]}}))
    (exp / "broken.yaml").write_text("name: [")
    runs = gridfile.reproducers(tmp_path)
    assert runs[load_scenario("digits").sha256] == "bdbench run digits"
    _, cpu = gridfile.load_grid("cpu", registry)
    assert runs[cpu[0].sha256] == f"bdbench grid cpu --scenario {cpu[0].name}"
    assert runs[load_scenario(str(exp / "one.yaml")).sha256] == "bdbench run ci/experiments/one.yaml"
    _, many = gridfile.load_grid(exp / "many.yaml", registry)
    assert [runs[s.sha256] for s in many] == [f"bdbench grid ci/experiments/many.yaml --scenario {s.name}"
                                              for s in many]
    assert runs[(many[1].name, many[1].version)] == "bdbench grid ci/experiments/many.yaml --scenario tiny-linear"


def test_a_cells_code_version_names_uncommitted_changes():
    assert site._code({"commit": "a" * 40, "dirty": False}) == "a" * 12
    assert site._code({"commit": "a" * 40, "dirty": True, "changed": ["b.yaml", "c.py"]}) == \
        "aaaaaaaaaaaa + changes to b.yaml, c.py"
    assert site._code({"commit": "a" * 40, "dirty": True}) == "aaaaaaaaaaaa + uncommitted changes"  # older files
    assert site._code({"commit": None, "dirty": None}) == "unknown"
    # what a file lists is what the harness found changed (provenance.git_state leaves out results and docs)
    from benchmark.provenance import code_changes
    written = ["README.md", "benchmark/grid.py", "leaderboard/results/s-v3/wanet/none/seed-0.json"]
    assert code_changes(written) == ["benchmark/grid.py"] and code_changes(written[::2]) == []


def test_hardware_label_names_the_gpu_or_the_cpu():
    from benchmark.provenance import hardware_label
    gpu = {"provenance": {"hardware": {"device": "cuda:0", "gpu": "NVIDIA H200", "cpu_count": 16}}}
    assert hardware_label(gpu) == "NVIDIA H200, 16 cores"
    assert hardware_label({"provenance": {"hardware": {"device": "cpu", "cpu_count": 2}}}) == "cpu, 2 cores"
    assert hardware_label({}) == "?, ? cores"


def test_a_stage_built_into_another_model_is_named_on_the_site(results_dir, tmp_path):
    """Cells sharing a stage key built twice into different models (a clean upstream trained on one machine, then
    again on another after its store was lost) share a recipe, not a model: the scenario says so. Versions differ
    by their weights' sha256, or, in files from before weights were recorded, by the clean accuracy of the stage's
    model."""
    cells = [c for c in resultfile.load(results_dir) if c.scenario.version == 1]
    assert all(c.weights for c in cells if c.ok) and results.retrained(cells) == {}
    up = cells[0].artifacts["upstream"]

    def edit(cells, name, change):
        c = copy.deepcopy(next(c for c in cells if c.path.endswith(name)))
        change(c)
        return [c if x.path.endswith(name) else x for x in cells]
    assert results.retrained(edit(cells, "finetune/seed-0.json", lambda c: c.weights.update(upstream="0" * 64))) \
        == {up: 2}

    def older_build(c):  # no weights recorded; the upstream's clean accuracy differs: another model
        c.weights = {}
        c.metrics.upstream.clean.ca -= 0.01
    assert results.retrained(edit(cells, "finetune/seed-0.json", older_build)) == {up: 2}
    rebuilt = edit(cells, "finetune/seed-0.json", lambda c: c.wall_time_s.update(upstream=1.0))
    assert results.retrained(rebuilt) == {}  # built twice (another wall time) into the same weights: one model
    assert results.retrained(edit(cells, "none/seed-0.json", lambda c: setattr(c, "weights", {}))) == {}

    moved = tmp_path / "results"
    shutil.copytree(results_dir, moved)
    p = moved / "digits-v1/badnets/finetune/seed-0.json"
    r = json.loads(p.read_text())
    r["weights"] = {}
    r["metrics"]["upstream"]["clean"]["ca"] -= 0.01
    r["provenance"]["git"] = {"commit": "b" * 40, "dirty": True, "changed": ["x.py"]}
    p.write_text(json.dumps(r))
    site.build(moved, tmp_path / "site")
    section = (tmp_path / "site/index.html").read_text().split("Scenario digits v1")[1].split("<h3>")[0]
    assert "Some stages differ between cells" in section and f"<code>{up}</code> (2 versions)" in section
    # each code version the cells ran is named with how many cells it computed
    n = len([c for c in cells if c.path.startswith("digits-v1/")])
    code = site._code(cells[0].provenance["git"])
    assert "<code>bbbbbbbbbbbb + changes to x.py</code> (1 cell)" in section
    assert f"<code>{html.escape(code)}</code> ({n - 1} cells)" in section
    site.build(results_dir, tmp_path / "same")
    assert "Some stages differ" not in (tmp_path / "same/index.html").read_text()


def test_nonfinite_scores_are_flagged_on_the_site_and_in_the_terminal(results_dir, tmp_path, capsys, monkeypatch):
    """A cell whose defense returned an infinite model score and NaN input scores: valid against the schema, the
    model score counts 0.5 in model-level detection, and both the site and the terminal table say so."""
    from benchmark.report import print_table
    out = tmp_path / "results"
    shutil.copytree(results_dir, out, ignore=shutil.ignore_patterns("evil"))
    cell = json.loads((out / "digits-v1/badnets/finetune/seed-0.json").read_text())
    cell["defense"]["id"] = cell["defense"]["name"] = "nan-defense"
    cell["metrics"]["defense"].update(model_score=None, input_auroc=0.5,
                                      nonfinite={"model_score": "inf", "input_scores": 12})
    resultfile.validate(cell, "nan-defense cell")
    (out / "digits-v1/badnets/nan-defense").mkdir()
    (out / "digits-v1/badnets/nan-defense/seed-0.json").write_text(json.dumps(cell))
    site.build(out, tmp_path / "site")
    index = (tmp_path / "site/index.html").read_text()
    row = index.split(">nan-defense</a>")[1].split("</tr>")[0]
    assert "(1 NaN/inf)" in row and "counts 0.5" in row
    assert "(1 NaN/inf)" not in index.split(">finetune</a>")[1].split("</tr>")[0]
    monkeypatch.setenv("COLUMNS", "400")  # the note column unwrapped
    print_table([c for c in resultfile.load(out) if c.scenario.version == 1], "digits v1")
    assert "NaN/inf scores in 1 cell(s), counted 0.5" in capsys.readouterr().out
    bad = copy.deepcopy(cell)
    bad["metrics"]["defense"]["nonfinite"] = {"model_score": "big"}
    with pytest.raises(BenchError, match="does not match the result schema"):
        resultfile.validate(bad, "bad cell")


def test_cells_whose_defense_ran_outside_the_sandbox_are_marked(results_dir, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(results_dir, out, ignore=shutil.ignore_patterns("evil"))
    f = out / "digits-v1/badnets/finetune/seed-0.json"
    cell = json.loads(f.read_text())
    index = lambda: (tmp_path / "site/index.html").read_text()  # noqa: E731
    cell["provenance"]["isolation"] = "sandbox"
    f.write_text(json.dumps(cell))
    site.build(out, tmp_path / "site")
    assert "plain process" not in index()  # (the session's digits cells ran in-process: isolation "none")
    cell["provenance"]["isolation"] = "process"
    resultfile.validate(cell, "cell")
    f.write_text(json.dumps(cell))
    site.build(out, tmp_path / "site")
    v1 = index().split("Scenario digits v1")[1]
    note = v1.split("Not sandboxed: ")[1].split("</p>")[0]
    assert "1 cell the defense ran in a plain process of its own" in note, note


def test_scenarios_filed_under_archive_are_labelled(results_dir, tmp_path):
    """leaderboard/results/archive/ holds superseded versions and side experiments: the site says so on their
    section, and only there."""
    out = tmp_path / "results"
    shutil.copytree(results_dir, out, ignore=shutil.ignore_patterns("evil"))
    (out / "archive").mkdir()
    shutil.move(out / "digits-v2", out / "archive" / "digits-v2")
    site.build(out, tmp_path / "site")
    index = (tmp_path / "site/index.html").read_text()
    v1, v2 = index.split("<h2>Scenario digits v1")[1], index.split("<h2>Scenario digits v2")[1]
    assert v2.startswith(' <span class="note">(archive)</span>') and "Archived:" in v2.split("<h3>")[0]
    assert not v1.startswith(" <span") and "Archived:" not in v1.split("<h3>")[0]
    assert (tmp_path / "site/data/cells/archive/digits-v2/badnets/finetune/seed-0.json").is_file()


def test_across_tiers_counts_implanted_attacks_that_survive_transfer():
    """results.by_tier: per application and tier, the implanted attacks (ASR before transfer >= 0.5) whose paired
    lift's 95% interval lies above 0; a scenario version no grid names now (an archived one) is left out."""
    from benchmark.gridfile import tiers
    from benchmark.report import headline_markdown
    cells = [_cell("s-big", "badnets", s, 0.9, 0.1 + s / 100) for s in range(3)]          # survives
    cells += [_cell("s-big", "blended", s, 0.5 + s / 5, 0.5) for s in range(3)]           # interval spans 0
    cells += [_cell("s-big", "wanet", s, 0.9, 0.1, asr_up=0.2) for s in range(3)]         # never implanted
    cells += [_cell("s-small", "badnets", s, 0.3, 0.1 + s / 100) for s in range(3)]       # survives, smaller
    cells += [_cell("s-old", "badnets", s, 0.9, 0.1) for s in range(3)]
    where = {("s-big", 1): ("cpu: big", "chest"), ("s-small", 1): ("cpu: small", "chest")}
    t = results.by_tier(cells, where)
    assert t["tiers"] == ["cpu: big", "cpu: small"] and list(t["applications"]) == ["chest"]
    big = t["applications"]["chest"]["cpu: big"]
    assert (big["attacks"], big["implanted"], big["survive"], big["seeds"]) == (3, 2, 1, 3)
    assert big["median_lift"] == pytest.approx((0.79 + 0.2) / 2)
    assert t["applications"]["chest"]["cpu: small"]["survive"] == 1
    page = headline_markdown(cells, where)
    assert "| chest | 1 of 2 implanted survive (3 attacks; median lift 0.49; s-big-v1, 3+ seeds) |" in page
    shipped = tiers()
    assert ("pre-imagenet-chest", 1) in shipped and shipped[("cpu-cifar10-gtsrb-resnet18", 3)] == \
        ("cpu: resnet18", "gtsrb-13k")
    assert shipped[("gpu-matsuo2022-resnet50-lfw", 2)] == ("matsuo2022: resnet50", "matsuo-lfw-bush")
    assert len(set(shipped.values())) == len(shipped)  # no two scenarios share an application and tier
