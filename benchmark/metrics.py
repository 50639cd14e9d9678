"""Scores: CA, ASR, RA, t*, detection AUROC/AUPR/TPR, DER, intervals; each function's docstring is its definition.
Inputs are label tensors; outputs are plain floats."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from scipy import stats


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """CA: top-1 accuracy."""
    return float((pred == y).float().mean()) if len(y) else float("nan")


def attack_success_rate(pred_triggered: torch.Tensor, y: torch.Tensor, target: torch.Tensor | int) -> float:
    """ASR: among triggered inputs whose true label is NOT their target, the share predicted as the target."""
    target = torch.as_tensor(target).expand_as(y) if not torch.is_tensor(target) or target.ndim == 0 else target
    keep = y != target
    return float((pred_triggered[keep] == target[keep]).float().mean()) if keep.any() else float("nan")


def robust_accuracy(pred_triggered: torch.Tensor, y: torch.Tensor, target: torch.Tensor | int) -> float:
    """RA: accuracy of triggered non-target inputs against their TRUE labels."""
    target = torch.as_tensor(target).expand_as(y) if not torch.is_tensor(target) or target.ndim == 0 else target
    keep = y != target
    return float((pred_triggered[keep] == y[keep]).float().mean()) if keep.any() else float("nan")


def transfer_target(pred_triggered_val: torch.Tensor, num_classes: int) -> int:
    """t* after transfer: the class most often predicted for triggered validation images by the
    model as delivered (ties go to the lowest class index)."""
    return int(torch.bincount(pred_triggered_val, minlength=num_classes).argmax())


def auroc(labels, scores) -> float:
    """Area under the ROC curve from continuous scores (label 1 = positive = suspicious, higher
    score = more suspicious); ties count one half. Equals sklearn.metrics.roc_auc_score."""
    labels, scores = _prepared(labels, scores)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    ranks = stats.rankdata(scores)  # average ranks for ties (Mann-Whitney U)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _prepared(labels, scores):
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError("labels and scores differ in length")
    if labels.all() or not labels.any():
        raise ValueError(f"needs both classes; got {int(labels.sum())} positive and "
                         f"{int((~labels).sum())} negative samples")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return labels, scores


def _roc_points(labels, scores):
    """Cumulative (false positives, true positives) at each distinct threshold, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each run of tied scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    return fp, tp


def aupr(labels, scores) -> float:
    """Average precision: sum over thresholds of (recall_n - recall_{n-1}) * precision_n, tied scores
    as one threshold. Equals sklearn.metrics.average_precision_score."""
    labels, scores = _prepared(labels, scores)
    fp, tp = _roc_points(labels, scores)
    recall = tp / labels.sum()
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tpr_at_fpr(labels, scores, fpr: float = 0.05) -> float:
    """The largest true-positive rate among ROC points whose false-positive rate is <= fpr."""
    labels, scores = _prepared(labels, scores)
    fp, tp = _roc_points(labels, scores)
    ok = fp / (~labels).sum() <= fpr + 1e-12
    return float((tp[ok] / labels.sum()).max()) if ok.any() else 0.0


def detection(labels, scores) -> dict:
    """AUROC, AUPR and TPR at 5% FPR of continuous scores (label 1 = positive, higher = more suspicious).

    A NaN or infinite score (or None) says nothing about its input, so it counts 0.5: every (positive, negative)
    pair it is part of is a tie in the AUROC, and for AUPR and TPR at 5% FPR it ranks below every finite score
    (never detected). `nonfinite` counts them; with none, the three equal sklearn's on the same scores."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray([np.nan if x is None else x for x in np.asarray(scores, dtype=object).ravel()],
                        dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError("labels and scores differ in length")
    bad = ~np.isfinite(scores)
    if not bad.any():
        return {"auroc": auroc(labels, scores), "aupr": aupr(labels, scores),
                "tpr_at_5fpr": tpr_at_fpr(labels, scores), "nonfinite": 0}
    _prepared(labels, np.zeros(len(labels)))  # both classes present, or the usual error
    pos, neg = int(labels.sum()), int((~labels).sum())
    fp, fn = int((labels & ~bad).sum()), int((~labels & ~bad).sum())  # finite positives, finite negatives
    wins = auroc(labels[~bad], scores[~bad]) * fp * fn if fp and fn else 0.0
    floor = scores[~bad].min() - 1.0 if (~bad).any() else 0.0
    s = np.where(bad, floor, scores)
    return {"auroc": float((wins + 0.5 * (pos * neg - fp * fn)) / (pos * neg)), "aupr": aupr(labels, s),
            "tpr_at_5fpr": tpr_at_fpr(labels, s), "nonfinite": int(bad.sum())}


def finite_or_none(v) -> Optional[float]:
    """A model-level score as stored: the float, or None for None, NaN or inf (see `nonfinite_label`)."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def nonfinite_label(v) -> Optional[str]:
    """'nan', 'inf' or '-inf' for a non-finite score (recorded in the result file), else None."""
    return None if v is None or math.isfinite(float(v)) else repr(float(v))


def model_detection(positive: list, negative: list) -> dict:
    """Model-level detection over a population: scores of backdoored-upstream models (positive) and
    clean-upstream models (negative). A missing, NaN or infinite score counts 0.5, as TrojAI does (`detection`):
    every pair it is part of counts as a tie in the AUROC; for AUPR and TPR at 5% FPR it ranks below every observed
    score (never detected). `missing` reports how many there were."""
    if not positive or not negative:
        raise ValueError(f"model-level detection needs both populations; got {len(positive)} backdoored and "
                         f"{len(negative)} clean models")
    d = detection([1] * len(positive) + [0] * len(negative), list(positive) + list(negative))
    return {"auroc": d["auroc"], "n_backdoored": len(positive), "n_clean": len(negative), "missing": d["nonfinite"],
            "aupr": d["aupr"], "tpr_at_5fpr": d["tpr_at_5fpr"]}


def der(ca_before: float, ca_after: float, asr_before: float, asr_after: float) -> float:
    """Defense effectiveness rating (BackdoorBench), with the CA term's sign right:
    [max(0, dASR) - max(0, dCA) + 1] / 2, where d = before - after."""
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1) / 2


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (NaN half-width for one value)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)
