"""Anomaly-detection metrics from scores and labels: AUROC, AUPRC, best F1 (no sklearn needed).

A split where only one class is left returns NaN rather than raising, so a report can still be written."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 scores and boolean labels, without unknown labels (-1) and NaN scores."""
    s = _numpy(scores).astype(np.float64).ravel()
    y = _numpy(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.size} scores, {y.size} labels")
    keep = (y >= 0) & ~np.isnan(s)
    s, y = s[keep], y[keep]
    if not np.isin(y, (0, 1)).all():
        bad = sorted(set(np.unique(y).tolist()) - {0, 1})
        raise ValueError(f"labels must be 0 (normal), 1 (anomalous) or -1 (unknown); got {bad}")
    return s, y.astype(bool)


def _ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of s in increasing order; tied values share the average of their ranks."""
    order = np.argsort(s, kind="mergesort")
    ordered = s[order]
    new_value = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(new_value) - 1
    first = np.flatnonzero(new_value)
    last = np.r_[first[1:], s.size] - 1
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = ((first + last) / 2.0 + 1.0)[group]
    return ranks


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve = P(score of a random anomaly > score of a random normal), ties count 1/2.

    Computed from ranks (Mann-Whitney U): (sum of the anomalies' ranks - P(P+1)/2) / (P N), ties averaged.
    Example: scores [0.1, 0.4, 0.35, 0.8], labels [0, 0, 1, 1]: the anomaly 0.8 beats both normals, 0.35
    beats only 0.1, so 3 of the 4 pairs are ordered right -> 0.75. Perfect separation -> 1.0, reversed ->
    0.0, all scores equal -> 0.5. NaN when only one class is present.
    """
    s, y = _scores_and_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((_ranks(s)[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _pr_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score, thresholds decreasing (flag = score >= threshold)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(y)[last_of_tie].astype(np.float64)
    flagged = last_of_tie + 1.0
    return tps / flagged, tps / y.sum(), s[last_of_tie]


def auprc(scores: Any, labels: Any) -> float:
    """Average precision, step-wise as sklearn's average_precision_score: AP = sum_n (R_n - R_{n-1}) P_n.

    Thresholds are the distinct scores, highest first (tied scores enter together); R_0 = 0.
    Example: scores [0.1, 0.4, 0.35, 0.8], labels [0, 0, 1, 1]:
      threshold 0.8 : P = 1/1, R = 1/2 -> adds 1/2 * 1
      threshold 0.4 : P = 1/2, R = 1/2 -> adds 0
      threshold 0.35: P = 2/3, R = 2/2 -> adds 1/2 * 2/3
      threshold 0.1 : P = 2/4, R = 1   -> adds 0
    AP = 1/2 + 1/3 = 0.8333. Perfect ranking -> 1.0; a random ranking -> about the anomaly rate.
    NaN when there is no anomaly.
    """
    s, y = _scores_and_labels(scores, labels)
    if not y.any():
        return float("nan")
    precision, recall, _ = _pr_curve(s, y)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class BestF1(NamedTuple):
    f1: float
    precision: float
    recall: float
    threshold: float   # flag an entry as anomalous when its score >= threshold


def best_f1(scores: Any, labels: Any) -> BestF1:
    """The largest F1 = 2PR/(P+R) over all thresholds (each distinct score; flag = score >= threshold).

    Ties between thresholds go to the highest threshold. Example: scores [0.1, 0.4, 0.35, 0.8], labels
    [0, 0, 1, 1]: threshold 0.8 gives P=1, R=1/2, F1=2/3; 0.4 gives P=R=1/2, F1=1/2; 0.35 gives P=2/3,
    R=1, F1=0.8; 0.1 gives P=1/2, R=1, F1=2/3 -> BestF1(f1=0.8, precision=2/3, recall=1.0, threshold=0.35).
    All fields NaN when there is no anomaly. Note: choosing the threshold on the test labels is optimistic
    (an upper bound); pick it on validation data for an honest number.
    """
    s, y = _scores_and_labels(scores, labels)
    if not y.any():
        nan = float("nan")
        return BestF1(nan, nan, nan, nan)
    precision, recall, thresholds = _pr_curve(s, y)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    k = int(np.argmax(f1))
    return BestF1(float(f1[k]), float(precision[k]), float(recall[k]), float(thresholds[k]))


def classification_metrics(scores: Any, labels: Any) -> dict:
    """AUROC, AUPRC and best F1 (with its threshold) when the labels hold both classes, else {} (undefined)."""
    s, y = _scores_and_labels(scores, labels)
    if not y.any() or y.all():
        return {}
    f1 = best_f1(s, y.astype(np.int64))
    return {"auroc": auroc(s, y.astype(np.int64)), "auprc": auprc(s, y.astype(np.int64)), "best_f1": f1.f1,
            "best_f1_threshold": f1.threshold, "num_anomalous": int(y.sum()), "num_labelled": int(y.size)}
