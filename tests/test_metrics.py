import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from benchmark import metrics


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
