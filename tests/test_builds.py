"""Which build of the clean upstream a result cell descends from (benchmark/builds.py), on the shapes real result
files take: weights recorded or not, controls and failed cells without a clean upstream CA, rebuilds."""
import pytest

from benchmark.builds import upstream_build_labels, upstream_builds
from benchmark.report import left_out_note
from benchmark.results import model_detection_left_out, model_detection_rows

SHA_A, SHA_B = "aaaaaaaa" + "0" * 56, "bbbbbbbb" + "0" * 56


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
    assert labels[0] == "cpu, 2 cores, upstream CA 0.5450"  # same hardware: the CA tells the two apart
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
    assert labels == ["build unknown (cpu, 2 cores)", "H200, 2 cores", "cpu, 2 cores", "upstream aaaaaaaa",
                      "upstream aaaaaaaa", "upstream aaaaaaaa"]
    assert upstream_build_labels(cells[::-1]) == labels[::-1]


def test_a_cell_without_weights_or_accuracy_joins_only_a_build_it_can_be_told_from():
    # its hardware shows one build: that one, whatever the other hardware holds
    assert upstream_build_labels([cell(0.76, gpu="H200"), cell(0.75, SHA_A), cell(gpu="H200", control=True)])[2] \
        == "H200, 2 cores"
    # its hardware shows two builds (two CAs): unknown, not the first one met
    two = [cell(0.76), cell(0.75), cell(control=True)]
    assert upstream_build_labels(two)[2] == "build unknown (cpu, 2 cores)"
    # a failed cell without provenance beside a single build: that build (it still counts, as 0.5)
    one = [cell(0.75, SHA_A, score=3.0), cell(control=True, sha=SHA_A, score=1.0),
           cell(status="failed", provenance=False)]
    assert upstream_build_labels(one)[2] == "upstream aaaaaaaa"
    (r,) = model_detection_rows(one)
    assert r["build"] is None and r["n_backdoored"] == 2 and r["missing"] == 1
    assert r["auroc"] == pytest.approx((1 + 0.5) / 2)
    # beside two builds it stays apart: neither row counts it
    rows = model_detection_rows(one[:2] + [cell(0.70, SHA_B, score=2.0), cell(control=True, sha=SHA_B, score=1.0),
                                           cell(status="failed", provenance=False)])
    assert [(r["build"], r["n_backdoored"], r["missing"]) for r in rows] == [
        ("upstream aaaaaaaa", 1, 0), ("upstream bbbbbbbb", 1, 0)]


def test_detection_names_the_build_of_its_row_and_what_it_left_out():
    """A second build holding only controls and null-attack cells gives no row: the one row names its build (the
    scenario holds two), and the cells left out are counted by kind."""
    cells = [cell(0.75, SHA_A, score=3.0), cell(control=True, sha=SHA_A, score=1.0),
             cell(0.70, SHA_B, attack="null", score=2.0), cell(control=True, sha=SHA_B, score=2.5)]
    cells[2]["attack"]["null"] = True
    (r,) = model_detection_rows(cells)
    assert r["build"] == "upstream aaaaaaaa" and r["auroc"] == 1.0 and r["n_clean"] == 1
    assert model_detection_left_out(cells) == [
        {"defense": "linf", "build": "upstream bbbbbbbb", "backdoored": 0, "negatives": 2,
         "why": "no backdoored transfers"}]
    assert "has no backdoored transfers" in left_out_note(model_detection_left_out(cells)[0])
    # one build: no name, nothing left out
    assert model_detection_rows(cells[:2])[0]["build"] is None and model_detection_left_out(cells[:2]) == []


def test_a_defense_whose_positives_and_negatives_are_in_different_builds_has_no_row_but_a_note():
    cells = [cell(0.75, SHA_A, score=3.0), cell(0.75, SHA_A, score=2.0, seed=1), cell(control=True, sha=SHA_B)]
    assert model_detection_rows(cells) == []
    assert [(x["build"], x["backdoored"], x["negatives"]) for x in model_detection_left_out(cells)] == [
        ("upstream aaaaaaaa", 2, 0), ("upstream bbbbbbbb", 0, 1)]
    # one build without clean transfers: no detection, and nothing to call left out
    assert model_detection_left_out(cells[:2]) == []
    # a defense that never gives a model score is not detection's to leave out
    assert model_detection_left_out([cell(0.75, SHA_A, score=None), cell(control=True, sha=SHA_B, score=None)]) == []


def test_headline_builds_follow_the_same_labels():
    cells = [cell(0.75, SHA_A, defense=None, seed=s) for s in (0, 1)] + [cell(0.76, gpu="H200", defense=None)]
    for c, day in zip(cells, ("2026-11-02", "2026-11-03", "2026-11-01")):
        c["finished"] = day  # the builds come in the order first finished
    builds = upstream_builds(cells)
    assert [(b["label"], b["ca_upstream"], b["hardware"]) for b in builds] == [
        ("H200, 2 cores", 0.76, "H200, 2 cores"), ("upstream aaaaaaaa", 0.75, "cpu, 2 cores")]
    assert builds[1]["ca_transfer"] == [(0, pytest.approx(0.85)), (1, pytest.approx(0.85))]


def test_controls_of_two_events_no_cell_describes_are_two_builds():
    labels = upstream_build_labels([cell(event=10.0, control=True), cell(event=10.0, control=True),
                                    cell(event=20.0, control=True)])
    assert labels[0] == labels[1] != labels[2]
    assert labels == ["cpu, 2 cores, upstream built in 10 s"] * 2 + ["cpu, 2 cores, upstream built in 20 s"]


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
    assert upstream_build_labels(cells) == ["upstream aaaaaaaa"] + ["H200, 2 cores"] * 3
    # a control from hardware no build was seen on is not given the other hardware's build
    assert upstream_build_labels([cell(0.75, SHA_A), cell(control=True, gpu="A100")])[1] == \
        "build unknown (A100, 2 cores)"


def test_labels_are_unique_per_build():
    near = [cell(0.75001), cell(0.75004), cell(event=762.6, control=True), cell(event=763.4, control=True),
            cell(0.7, "ab12cd34" + "1" * 56), cell(0.7, "ab12cd34" + "2" * 56)]
    labels = upstream_build_labels(near)
    assert len(set(labels)) == 6
    assert labels[4:] == ["upstream ab12cd3411111111", "upstream ab12cd3422222222"]
    assert labels[0] == "cpu, 2 cores, upstream CA 0.75001"


def test_builds_do_not_depend_on_file_order():
    import itertools
    cells = [cell(0.75, SHA_A, event=1.0), cell(event=1.0, control=True), cell(0.75, event=2.0),
             cell(event=2.0, control=True), cell(0.74, event=3.0), cell(control=True, gpu="H200"),
             cell(0.8, gpu="H200", event=4.0), cell(status="failed", provenance=False)]
    want = upstream_build_labels(cells)
    assert want[:4] == ["upstream aaaaaaaa"] * 4 and want[5] == want[6] == "H200, 2 cores"
    assert want[7] == "build unknown (?, ? cores)"  # three builds it could belong to
    for order in itertools.islice(itertools.permutations(range(len(cells))), 0, None, 97):
        labels = upstream_build_labels([cells[i] for i in order])
        assert [labels[order.index(i)] for i in range(len(cells))] == want


def test_an_event_on_several_hardware_joins_the_sha_its_ca_was_reported_with_whichever_hardware_sorts_first():
    for sha_on in ("A100", "H200"):
        cells = [cell(0.75, event=5.0, gpu="A100"), cell(0.75, event=5.0, gpu="H200"), cell(0.75, SHA_A, gpu=sha_on)]
        assert upstream_build_labels(cells) == ["upstream aaaaaaaa"] * 3


def test_detection_tells_builds_over_all_cells_and_counts_them_over_the_defended_ones():
    # the control is 'build unknown' over all cells (its hardware holds two builds): no row, and a note
    cells = [cell(0.75, SHA_A, score=3.0), cell(control=True, score=1.0), cell(0.70, SHA_B, defense=None)]
    assert model_detection_rows(cells) == []
    assert [(x["build"], x["backdoored"], x["negatives"]) for x in model_detection_left_out(cells)] == [
        ("build unknown (cpu, 2 cores)", 0, 1), ("upstream aaaaaaaa", 1, 0)]
    # one build over all cells: the row names none (a cell without a defense joins the control's event to sha A)
    cells = [cell(0.75, event=5.0, defense=None), cell(0.75, SHA_A, event=9.0, score=3.0),
             cell(control=True, event=5.0, score=1.0)]
    (r,) = model_detection_rows(cells)
    assert r["build"] is None and r["auroc"] == 1.0 and model_detection_left_out(cells) == []
