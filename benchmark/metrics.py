"""Scores, as defined in REFERENCE.md. Inputs are label tensors; outputs are plain floats."""
from __future__ import annotations

import math

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
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError("labels and scores differ in length")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative samples")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    ranks = stats.rankdata(scores)  # average ranks for ties (Mann-Whitney U)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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
