"""The one-off migration of result files to version 2 (ci/migrate_results_v2.py): the fields it adds, and which
build of the clean upstream it finds each version 1 cell descends from, on the shapes real files take: weights
recorded or not, controls and failed cells without a clean upstream CA, rebuilds."""
import copy
import importlib.util
import json

import pytest

from benchmark.resultfile import Result, load

from .conftest import REPO

spec = importlib.util.spec_from_file_location("migrate_results_v2", REPO / "ci" / "migrate_results_v2.py")
mig = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mig)

SHA_A, SHA_B = "aaaaaaaa" + "0" * 56, "bbbbbbbb" + "0" * 56


def upstream_build_labels(cells):
    return [Result.label_of(n) for n in mig.build_names(cells)]


def cell(ca=None, sha=None, event=None, gpu=None, cores=2, control=False, score=1.0, defense="linf", seed=0,
         attack="a", status="ok", provenance=True):
    c = {"attack": {"id": "clean-upstream" if control else attack}, "control": control, "seed": seed,
         "defense": {"id": defense, "name": defense} if defense else None, "status": status,
         "metrics": {"defense": {"model_score": score}} if status == "ok" else None}
    if provenance:
        c["provenance"] = {"hardware": {"device": "cuda" if gpu else "cpu", "gpu": gpu, "cpu_count": cores}}
    if ca is not None:
        c["metrics"]["upstream"] = {"clean": {"ca": ca}}
        c["metrics"]["transfer"] = {"clean": {"ca": ca + 0.1}}
    if sha:
        c["weights"] = {"upstream": sha}
    if event is not None:
        c["wall_time_s"] = {"upstream": event}
    return c


def test_migrating_a_folder_writes_version_2_once(digits_env, tmp_path, registry):
    """A version 1 folder (made from this session's digits results by undoing what version 2 added) reads back,
    after migration, as the same cells: roles, defense positions and the build they descend from recorded; a
    second run changes nothing; a version 1 file is refused with the command that migrates it."""
    import shutil

    from benchmark.errors import BenchError
    home, *_ = digits_env
    shutil.copytree(home / "results", tmp_path / "r")
    want = {r.path: r for r in load(tmp_path / "r")}
    for f in (tmp_path / "r").rglob("*.json"):
        d = json.loads(f.read_text())
        v1 = copy.deepcopy(d)
        v1["schema"] = 1
        for k in ("role", "upstream_build"):
            v1.pop(k)
        if d["role"] == "clean-upstream":
            v1["control"] = True
            v1["attack"] = {"id": "clean-upstream", "name": "clean-upstream", "params": {}, "info": None}
        if d["defense"]:
            v1["defense"].pop("position")
        v1["provenance"]["git"].update(dirty=True, changed=["README.md", "leaderboard/results/x.json"])
        f.write_text(json.dumps(v1))
    with pytest.raises(BenchError, match="a version 1 result file; migrate .* ci/migrate_results_v2.py"):
        load(tmp_path / "r")
    from benchmark.resultfile import read_if_valid
    with pytest.raises(BenchError, match="a version 1 result file"):  # the grid says so, never overwrites it
        read_if_valid(next((tmp_path / "r").rglob("*.json")))
    assert mig.migrate(tmp_path / "r", registry) == {"migrated": len(want), "already version 2": 0}
    got = {r.path: r for r in load(tmp_path / "r")}
    assert set(got) == set(want)
    for p, r in got.items():
        assert (r.role, r.attack, r.defense, r.metrics, r.upstream_build) == \
            (want[p].role, want[p].attack, want[p].defense, want[p].metrics, want[p].upstream_build), p
        assert r.provenance["git"]["changed"] == [] and r.provenance["git"]["dirty"] is False
    assert {r.role for r in got.values()} == {"backdoored", "clean-upstream"}
    before = {f: f.read_bytes() for f in (tmp_path / "r").rglob("*.json")}
    assert mig.migrate(tmp_path / "r", registry)["migrated"] == 0
    assert before == {f: f.read_bytes() for f in (tmp_path / "r").rglob("*.json")}


def test_a_null_attack_and_an_unknown_defense_migrate_by_what_the_file_shows(registry):
    v1 = {"attack": {"id": "no-poison", "name": "no-poison", "params": {}, "null": True, "info": None},
          "defense": {"id": "mine", "name": "not-installed", "params": {}},
          "metrics": {"defense": {"sample_auroc": 0.7}}, "scenario": {"name": "s", "version": 1, "sha256": "x"},
          "provenance": {"git": {"commit": None}}}
    v2 = mig.to_v2(v1, "b" * 64, registry, {"x": "recipe-of-x"}, {})
    assert v2["role"] == "null-attack" and "null" not in v2["attack"] and v2["defense"]["position"] == "data"
    assert v2["scenario"]["recipe"] == "recipe-of-x" and v2["upstream_build"] == "b" * 64
    moved = {("attack", "no-poison"): ("old", "new")}
    assert mig.to_v2({**v1, "attack": {**v1["attack"], "code": "old"}}, None, registry, {}, moved)["attack"][
        "code"] == "new"
    assert mig.to_v2({**v1, "attack": {**v1["attack"], "code": "older"}}, None, registry, {}, moved)["attack"][
        "code"] == "older"  # computed by other code than the move's: stays stale


def test_two_weights_are_two_builds_even_at_an_equal_clean_accuracy():
    cells = [cell(0.75, SHA_A), cell(0.75, SHA_B), cell(0.75)]  # the sha-less cell cannot tell which: its own
    labels = upstream_build_labels(cells)
    assert labels[:2] == ["upstream aaaaaaaa", "upstream bbbbbbbb"] and labels[2] not in labels[:2]


def test_the_build_event_places_controls_of_older_files():
    """Two builds on one machine, no weights recorded (the real gtsrb mobilenet v3 files): the controls carry no
    clean upstream CA, but the upstream stage's wall time, which every cell reusing the stored stage copies."""
    first = [cell(0.545, event=520.5, seed=s) for s in range(3)] + [cell(event=520.5, control=True)]
    rebuilt = [cell(0.530, event=1039.1, attack="no-poison")] + [cell(event=1039.1, control=True) for _ in range(2)]
    labels = upstream_build_labels(first + rebuilt)
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]
    # same hardware: the CA tells the two apart
    assert labels[0] == "cpu, 2 cores, upstream CA 0.5450 (weights not recorded)"
    # the same recipe rebuilt to the same CA (a deterministic rebuild): one build, whichever event
    assert len(set(upstream_build_labels([cell(0.545, event=520.5), cell(0.545, event=625.2),
                                          cell(event=625.2, control=True)]))) == 1
    # an event whose cells name their weights joins them, also for its cells written before weights were recorded
    assert upstream_build_labels([cell(0.75, event=700.0), cell(0.75, SHA_A, event=700.0)]) == ["upstream aaaaaaaa"] * 2


def test_file_order_does_not_change_the_builds():
    # the control comes first, before anything says its hardware (cpu) holds two builds (CA 0.74, weights A)
    cells = [cell(control=True), cell(0.76, gpu="H200"), cell(0.74), cell(0.75, SHA_A), cell(0.75),
             cell(control=True, sha=SHA_A)]
    labels = upstream_build_labels(cells)
    assert labels == ["build unknown (cpu, 2 cores)", "H200, 2 cores, upstream CA 0.7600 (weights not recorded)",
                      "cpu, 2 cores, upstream CA 0.7400 (weights not recorded)", "upstream aaaaaaaa",
                      "upstream aaaaaaaa", "upstream aaaaaaaa"]
    assert upstream_build_labels(cells[::-1]) == labels[::-1]


def test_controls_of_two_events_no_cell_describes_are_two_builds():
    labels = upstream_build_labels([cell(event=10.0, control=True), cell(event=10.0, control=True),
                                    cell(event=20.0, control=True)])
    assert labels[0] == labels[1] != labels[2]
    assert labels == ["upstream built in 10 s (weights not recorded)"] * 2 + [
        "upstream built in 20 s (weights not recorded)"]


def test_an_event_takes_its_sha_beside_a_second_sha_build_on_the_same_hardware():
    cells = [cell(0.75, SHA_A, event=5.0), cell(event=5.0, control=True), cell(0.75, SHA_B, event=6.0),
             cell(event=6.0, control=True)]
    assert upstream_build_labels(cells) == ["upstream aaaaaaaa"] * 2 + ["upstream bbbbbbbb"] * 2


def test_an_event_naming_two_builds_is_no_evidence():
    """Two builds that happened to take the same seconds: the event places nothing, each cell its own evidence."""
    for cells in ([cell(0.75, SHA_A, event=5.0), cell(0.70, SHA_B, event=5.0), cell(0.70, event=5.0),
                   cell(event=5.0, control=True)],
                  [cell(0.75, event=5.0), cell(0.70, event=5.0), cell(event=5.0, control=True)]):
        for order in (cells, cells[::-1], cells[1:] + cells[:1]):
            labels = dict(zip(map(id, order), upstream_build_labels(order)))
            assert labels[id(cells[-1])] == "build unknown (cpu, 2 cores)"  # two builds on its hardware
            assert labels[id(cells[0])] != labels[id(cells[1])]
    assert upstream_build_labels([cell(0.75, SHA_A, event=5.0), cell(0.70, SHA_B, event=5.0),
                                  cell(0.70, event=5.0)])[2] == "upstream bbbbbbbb"  # by its own CA


def test_an_equal_accuracy_joins_builds_only_on_the_same_hardware():
    cells = [cell(0.75, SHA_A), cell(0.75, gpu="H200"), cell(0.75, event=3.0, gpu="H200"),
             cell(event=3.0, control=True, gpu="H200")]
    assert upstream_build_labels(cells) == ["upstream aaaaaaaa"] + [
        "H200, 2 cores, upstream CA 0.7500 (weights not recorded)"] * 3
    # a control from hardware no build was seen on is not given the other hardware's build
    assert upstream_build_labels([cell(0.75, SHA_A), cell(control=True, gpu="A100")])[1] == \
        "build unknown (A100, 2 cores)"


def test_builds_do_not_depend_on_file_order():
    import itertools
    cells = [cell(0.75, SHA_A, event=1.0), cell(event=1.0, control=True), cell(0.75, event=2.0),
             cell(event=2.0, control=True), cell(0.74, event=3.0), cell(control=True, gpu="H200"),
             cell(0.8, gpu="H200", event=4.0), cell(status="failed", provenance=False)]
    want = upstream_build_labels(cells)
    assert want[:4] == ["upstream aaaaaaaa"] * 4
    assert want[5] == want[6] == "H200, 2 cores, upstream CA 0.8000 (weights not recorded)"
    assert want[7] == "build unknown (?, ? cores)"  # three builds it could belong to
    for order in itertools.islice(itertools.permutations(range(len(cells))), 0, None, 97):
        labels = upstream_build_labels([cells[i] for i in order])
        assert [labels[order.index(i)] for i in range(len(cells))] == want


def test_an_event_on_several_hardware_joins_the_sha_its_ca_was_reported_with_whichever_hardware_sorts_first():
    for sha_on in ("A100", "H200"):
        cells = [cell(0.75, event=5.0, gpu="A100"), cell(0.75, event=5.0, gpu="H200"), cell(0.75, SHA_A, gpu=sha_on)]
        assert upstream_build_labels(cells) == ["upstream aaaaaaaa"] * 3


