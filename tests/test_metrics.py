import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from benchmark import metrics

from .conftest import result


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y * rng.uniform(0, 2)
    assert metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_ties_count_half():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    s = np.array([1, 2, 2, 3, 3, 3, 1, 0])  # heavy ties across classes
    assert metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert metrics.auroc([0, 1, 0, 1], [5, 5, 5, 5]) == 0.5  # all equal
    assert metrics.auroc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert metrics.auroc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0  # sign matters


def test_auroc_one_class_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="needs both classes"):
        metrics.auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([0, 1], [0.1, float("nan")])


def test_asr_counts_only_non_target_inputs():
    y = torch.tensor([0, 0, 1, 2, 3, 3])
    pred = torch.tensor([0, 0, 0, 2, 0, 3])  # target 0: of the four non-target inputs, two go to 0
    assert metrics.attack_success_rate(pred, y, 0) == 0.5
    assert metrics.robust_accuracy(pred, y, 0) == 0.5  # inputs with labels 2 and 3 (the second) stay right
    # per-sample targets (all-to-all)
    t = (y + 1) % 4
    assert metrics.attack_success_rate(torch.tensor([1, 0, 2, 3, 0, 1]), y, t) == pytest.approx(4 / 6)
    assert math.isnan(metrics.attack_success_rate(torch.tensor([0]), torch.tensor([0]), 0))


def test_transfer_target_is_the_modal_prediction():
    assert metrics.transfer_target(torch.tensor([1, 2, 2, 0, 2, 1]), 3) == 2
    assert metrics.transfer_target(torch.tensor([1, 0]), 3) == 0  # tie: lowest index


def test_der_sign():
    # ASR falls 0.9 -> 0.1 with no CA loss: 0.9; CA loss counts against
    assert metrics.der(0.9, 0.9, 0.9, 0.1) == pytest.approx(0.9)
    assert metrics.der(0.9, 0.7, 0.9, 0.1) == pytest.approx((0.8 - 0.2 + 1) / 2)
    assert metrics.der(0.9, 0.95, 0.5, 0.6) == pytest.approx(0.5)  # CA gain or ASR rise clip at 0


def test_mean_ci_is_student_t():
    v = [0.2, 0.4, 0.9]
    m, h = metrics.mean_ci(v)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
    assert m == pytest.approx(np.mean(v)) and h == pytest.approx((hi - lo) / 2)
    assert math.isnan(metrics.mean_ci([0.5])[1])


@pytest.mark.parametrize("seed", range(4))
def test_aupr_and_tpr_at_fpr_equal_sklearn(seed):
    from sklearn.metrics import average_precision_score, roc_curve
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounded: many ties
    assert metrics.aupr(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert metrics.tpr_at_fpr(y, s, 0.05) == pytest.approx(tpr[fpr <= 0.05].max())
    d = metrics.detection(y, s)
    assert (set(d) == {"auroc", "aupr", "tpr_at_5fpr", "nonfinite"} and d["nonfinite"] == 0
            and d["auroc"] == pytest.approx(roc_auc_score(y, s)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_a_nonfinite_score_counts_one_half(bad):
    """Each NaN, inf or missing score is a tie in every pair it is part of (the pairwise definition of the AUROC,
    computed here by hand), ranks below every finite score for AUPR and TPR, and is counted."""
    from sklearn.metrics import average_precision_score
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = list(rng.normal(size=60) + y)
    for i in (0, 7, 30):
        s[i] = bad
    d = metrics.detection(y, s)
    pairs = [(p, n) for i, p in enumerate(s) if y[i] for j, n in enumerate(s) if not y[j]]
    by_hand = sum(0.5 if p is bad or n is bad else (p > n) + 0.5 * (p == n) for p, n in pairs) / len(pairs)
    assert d["auroc"] == pytest.approx(by_hand) and d["nonfinite"] == 3
    finite = [x for x in s if x is not bad]
    floor = [min(finite) - 1 if x is bad else x for x in s]
    assert d["aupr"] == pytest.approx(average_precision_score(y, floor))
    assert metrics.detection([1, 0, 1, 0], [bad] * 4) == {"auroc": 0.5, "aupr": 0.5, "tpr_at_5fpr": 0.0,
                                                           "nonfinite": 4}


def test_tpr_at_fpr_by_hand():
    y = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # 3 positives, 18 negatives
    s = [9, 5, 1, 8, 4, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    # above 8 only the 9 (TPR 1/3, FPR 0); one negative already costs FPR 1/18 > 0.05
    assert metrics.tpr_at_fpr(y, s, 0.05) == pytest.approx(1 / 3)
    assert metrics.tpr_at_fpr(y, s, 0.06) == pytest.approx(2 / 3)


def test_model_detection_counts_missing_as_a_tie():
    pos, neg = [3.0, 2.0, None], [1.0, float("nan")]
    assert metrics.model_detection([3.0, 2.0, float("inf")], [1.0, float("-inf")])["missing"] == 2
    d = metrics.model_detection(pos, neg)
    # observed pairs: (3,1), (2,1) both won; the 4 pairs with a missing score count 0.5 each
    assert d["auroc"] == pytest.approx((2 + 0.5 * 4) / 6)
    assert d["missing"] == 2 and d["n_backdoored"] == 3 and d["n_clean"] == 2
    full = metrics.model_detection([3.0, 2.0, 1.5], [1.0, 0.5])
    assert full["auroc"] == 1.0 and full["aupr"] == 1.0 and full["tpr_at_5fpr"] == 1.0
    assert full["auroc"] == pytest.approx(roc_auc_score([1, 1, 1, 0, 0], [3.0, 2.0, 1.5, 1.0, 0.5]))
    with pytest.raises(ValueError, match="both populations"):
        metrics.model_detection([1.0], [])


def test_model_detection_rows_pool_attacks_against_controls():
    from benchmark.results import model_detection_rows

    def cell(defense, score, control=False, status="ok"):
        return result("clean-upstream" if control else "backdoored", defense=defense, score=score, status=status)
    cells = [cell("nc", 3.0), cell("nc", 2.5), cell("nc", None, status="failed"),
             cell("nc", 1.0, True), cell("nc", 2.5, True),
             cell("ft", None), cell("ft", None, True),  # no scores at all: no row
             cell("lonely", 1.0)]  # no controls: no row
    rows = model_detection_rows(cells)
    assert [r["defense"] for r in rows] == ["nc"]
    r = rows[0]
    # pairs: (3,1) win, (3,2.5) win, (2.5,1) win, (2.5,2.5) tie, failed x 2 controls = 2 ties
    assert r["auroc"] == pytest.approx((3 + 0.5 + 0.5 * 2) / 6) and r["missing"] == 1
    assert r["n_backdoored"] == 3 and r["n_clean"] == 2
    # a null-attack cell (same injection, no poison) is a negative too, reported on its own as well
    r2 = model_detection_rows(cells + [result("null-attack", attack="null", defense="nc", score=2.8)])[0]
    assert r2["n_clean"] == 3 and r2["by_negative"]["null-attack"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert r2["by_negative"]["clean-upstream"] == pytest.approx(r["auroc"])
    assert r["build"] is None  # one build of the clean upstream: one row per defense, as before


def test_model_detection_compares_models_within_one_build_of_the_clean_upstream():
    """The clean upstream built again on other hardware is another model, and a model score shifts with it: a
    detector must not be credited for telling the builds apart. Each cell names its build (`upstream_build`)."""
    from benchmark.results import model_detection_left_out, model_detection_rows
    A, B = "66accfd0" + "0" * 56, "cpu, 2 cores, upstream CA 0.7600 (weights not recorded)"
    a = [result(score=9.0, build=B), result(score=8.0, build=B), result("clean-upstream", score=7.0, build=B)]
    b = [result(score=5.0, build=A), result("clean-upstream", score=3.0, build=A), result(score=4.0, build=A),
         result("clean-upstream", score=6.0, build=A)]
    rows = {r["build"]: r for r in model_detection_rows(a + b)}
    assert set(rows) == {B, "upstream 66accfd0"}
    assert rows[B]["auroc"] == 1.0 and rows["upstream 66accfd0"]["auroc"] == pytest.approx(0.5)
    # pooled, every build-A positive would outrank every build-B control and the AUROC would read higher
    assert (rows["upstream 66accfd0"]["n_backdoored"], rows["upstream 66accfd0"]["n_clean"]) == (2, 2)
    # one build: the row names none, and nothing is left out
    assert model_detection_rows(b)[0]["build"] is None and model_detection_left_out(b) == []


def test_detection_names_the_build_of_its_row_and_what_it_left_out():
    """A second build holding only controls and null-attack cells gives no row: the one row names its build (the
    scenario holds two), and the cells left out are counted by kind."""
    from benchmark.report import left_out_note
    from benchmark.results import model_detection_left_out, model_detection_rows
    A, B = "a" * 64, "b" * 64
    cells = [result(score=3.0, build=A), result("clean-upstream", score=1.0, build=A),
             result("null-attack", attack="null", score=2.0, build=B), result("clean-upstream", score=2.5, build=B)]
    (r,) = model_detection_rows(cells)
    assert r["build"] == "upstream aaaaaaaa" and r["auroc"] == 1.0 and r["n_clean"] == 1
    assert model_detection_left_out(cells) == [
        {"defense": "linf", "build": "upstream bbbbbbbb", "backdoored": 0, "negatives": 2,
         "why": "no backdoored transfers"}]
    assert "has no backdoored transfers" in left_out_note(model_detection_left_out(cells)[0])
    # positives and negatives in different builds: no row, a note per build
    cells = [result(score=3.0, build=A), result(score=2.0, seed=1, build=A), result("clean-upstream", build=B)]
    assert model_detection_rows(cells) == []
    assert [(x["build"], x["backdoored"], x["negatives"]) for x in model_detection_left_out(cells)] == [
        ("upstream aaaaaaaa", 2, 0), ("upstream bbbbbbbb", 0, 1)]
    # a defense that never gives a model score is not detection's to leave out
    assert model_detection_left_out([result(score=None, build=A), result("clean-upstream", score=None,
                                                                         build=B)]) == []


def test_build_labels_are_unique_and_builds_come_in_the_order_first_finished():
    from benchmark.results import build_labels, upstream_builds
    near = [result(build="ab12cd34" + "1" * 56), result(build="ab12cd34" + "2" * 56), result(build="c" * 64)]
    assert list(build_labels(near).values()) == ["upstream ab12cd3411111111", "upstream ab12cd3422222222",
                                                 "upstream cccccccc"]
    cells = [result(defense=None, ca=0.75, seed=s, build="a" * 64, finished=day)
             for s, day in ((0, "2026-11-02"), (1, "2026-11-03"))]
    cells.append(result(defense=None, ca=0.76, gpu="H200", build="H200 build", finished="2026-11-01"))
    builds = upstream_builds(cells)
    assert [(b["label"], b["ca_upstream"], b["hardware"]) for b in builds] == [
        ("H200 build", 0.76, "H200, 2 cores"), ("upstream aaaaaaaa", 0.75, "cpu, 2 cores")]
    assert builds[1]["ca_transfer"] == [(0, pytest.approx(0.85)), (1, pytest.approx(0.85))]


def test_a_migrated_build_without_weights_is_the_build_its_stored_stage_names():
    """Cells migrated from version 1 name their build by a description; cells added later from the same store
    name it by its weights. They share the stored upstream stage (key and build event): one build, not two."""
    from benchmark.results import build_labels, model_detection_left_out, model_detection_rows
    old = "cpu, 2 cores, upstream CA 0.7500 (weights not recorded)"
    cells = [result(score=3.0, build=old), result("clean-upstream", score=1.0, build=old),
             result(score=2.5, seed=1, build="c" * 64), result("clean-upstream", score=2.0, seed=1, build="c" * 64),
             result(status="failed", build=None)]
    for c in cells[:4]:
        c.artifacts, c.wall_time_s = {"upstream": "k"}, {"upstream": 520.5}
    (r,) = model_detection_rows(cells)
    assert r["build"] is None and (r["n_backdoored"], r["n_clean"], r["missing"]) == (3, 2, 1)
    assert set(build_labels(cells).values()) == {"upstream cccccccc"} and model_detection_left_out(cells) == []
    for c in cells[2:4]:
        c.wall_time_s = {"upstream": 999.0}  # another build event: nothing joins them
    assert len(set(build_labels(cells[:4]).values())) == 2
