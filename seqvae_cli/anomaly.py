"""Anomaly-detection metrics and simple baselines: pure functions on 1-D scores and labels.

Scores: higher = more anomalous. Labels: 1 anomalous, 0 normal, -1 unknown. Every metric accepts torch
tensors, numpy arrays or lists, ignores entries whose label is -1 (unknown) or whose score is NaN (e.g.
timestamps that no window scored), and returns plain floats. A metric that is undefined because only one
class is left (no anomaly, or nothing but anomalies) returns NaN rather than raising, so a report can
still be written; the caller decides how to show it.

Worked example used throughout the docstrings (checkable by hand)::

    scores = [0.1, 0.4, 0.35, 0.8]
    labels = [0,   0,   1,    1  ]

sorted by decreasing score: 0.8 (1), 0.4 (0), 0.35 (1), 0.1 (0).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from .models import eval_mode


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


def rolling_zscore_scores(values: Any, window: int) -> np.ndarray:
    """The simple NAB baseline: score_t = |x_t - mean(x[t-window:t])| / std(x[t-window:t]).

    Mean and (population, ddof=0) standard deviation of the `window` values strictly before t, so the score
    is causal. The first `window` timestamps get NaN (no full history). A zero std gives 0 when x_t equals
    the mean and +inf otherwise. `values` is [L] or [L, C]; with several channels the score is the largest
    channel score. Returns float64 numpy [L].
    Example: values [0, 2, 0, 2, 4], window 2 -> [nan, nan, 1, 1, 3] (mean 1 and std 1 before each of t=2,3,4).
    """
    x = _numpy(values).astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"values must be [L] or [L, C]; got shape {tuple(x.shape)}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer; got {window!r}")
    length = x.shape[0]
    out = np.full(length, np.nan)
    if length <= window:
        return out
    past = np.lib.stride_tricks.sliding_window_view(x[:-1], window, axis=0)  # [L-window, C, window]
    mean, std = past.mean(-1), past.std(-1)
    dev = np.abs(x[window:] - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, dev / np.where(std > 0, std, 1.0), np.where(dev > 0, np.inf, 0.0))
    out[window:] = z.max(-1)
    return out


def _time_index(prefix: Any, idx: np.ndarray) -> Any:
    """prefix[idx] along the time axis: axis 0 of [T], axis -2 of [T, C] or [B, T, C]."""
    if isinstance(prefix, torch.Tensor):
        idx = torch.as_tensor(idx, device=prefix.device)
    return prefix[idx] if prefix.ndim == 1 else prefix[..., idx, :]


def _check_forecast(prefix: Any, horizon: int) -> int:
    if prefix.ndim < 1:
        raise ValueError("prefix must have a time axis: [T], [T, C] or [B, T, C]")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer; got {horizon!r}")
    length = prefix.shape[0] if prefix.ndim == 1 else prefix.shape[-2]
    if length < 1:
        raise ValueError("prefix is empty: a forecast needs at least one observed step")
    return length


def last_value_forecast(prefix: Any, horizon: int) -> Any:
    """Repeat the last observed value `horizon` times (the naive forecast).

    prefix: [T], [T, C] or [B, T, C] (time = axis 0 of a 1-D prefix, else axis -2), numpy or torch; the
    result has the same type with the time axis of length `horizon`.
    Example: last_value_forecast([1, 2, 3], 2) -> [3, 3].
    """
    if not isinstance(prefix, torch.Tensor):
        prefix = np.asarray(prefix)
    length = _check_forecast(prefix, horizon)
    return _time_index(prefix, np.full(horizon, length - 1))


def seasonal_naive_forecast(prefix: Any, horizon: int, season: int) -> Any:
    """Repeat the last observed season: y_hat[T+h] = y[T+h-season*ceil(h/season)], h = 1..horizon.

    Same shapes and types as last_value_forecast; needs season <= T. season=1 is last_value_forecast.
    Example: seasonal_naive_forecast([1, 2, 3, 4, 5], 3, season=2) -> [4, 5, 4].
    """
    if not isinstance(prefix, torch.Tensor):
        prefix = np.asarray(prefix)
    length = _check_forecast(prefix, horizon)
    if isinstance(season, bool) or not isinstance(season, (int, np.integer)) or not 1 <= season <= length:
        raise ValueError(f"season must be an integer in [1, {length}] (the prefix length); got {season!r}")
    return _time_index(prefix, length - season + np.arange(horizon) % season)


def dominant_period(values: Any, min_lag: int = 2, max_lag: int | None = None) -> int:
    """The season for seasonal_naive_forecast when none is given: among the local maxima of the
    autocorrelation of `values` ([T] or [T, C]; channels averaged) at lags min_lag..max_lag (default T/2),
    the lag of the highest one. 1 (the last-value forecast) when there is none: a series without a repeating
    pattern, too short or constant.
    Example: a sine with a period of 10 steps, 40 steps long -> 10; a straight ramp -> 1."""
    x = _numpy(values).astype(np.float64)
    x = x.mean(-1) if x.ndim == 2 else x.ravel()
    length = x.size
    max_lag = length // 2 if max_lag is None else min(max_lag, length - 2)
    x = x - x.mean()
    denom = float((x * x).sum())
    if max_lag < max(min_lag, 1) or denom <= 0:
        return 1
    lags = np.arange(1, max_lag + 2)
    acf = np.array([float((x[:-lag] * x[lag:]).sum()) / denom for lag in lags])
    peaks = [i for i in range(1, len(lags) - 1)
             if lags[i] >= min_lag and acf[i] > acf[i - 1] and acf[i] >= acf[i + 1] and acf[i] > 0]
    if not peaks:
        return 1
    return int(lags[max(peaks, key=lambda i: acf[i])])


# ---------------------------------------------------------------------- scoring a time-series model

# Per-window anomaly scores (higher = more anomalous), all in nats per window, from evaluate()'s per-example
# values: neg_elbo = -ELBO (one posterior sample) | rec = -log p(x|z) at that sample (the reconstruction term)
# | iw_nll = the importance-weighted NLL (needs iw_samples > 0).
SCORES = ("neg_elbo", "rec", "iw_nll")


def pick_score(per_example: dict, score: str) -> torch.Tensor:
    """The per-example values [N] of `score` out of evaluate()'s "_per_example"."""
    from .errors import SeqvaeError
    if score not in SCORES:
        raise SeqvaeError(f"config error: score={score!r} is not allowed; expected one of: {', '.join(SCORES)}")
    if score not in per_example:
        raise SeqvaeError(f"score={score} needs importance samples: give iw_samples > 0 (seqvae eval "
                          f"iw_samples=100), or use score=neg_elbo or score=rec")
    return per_example[score]


def classification_metrics(scores: Any, labels: Any) -> dict:
    """AUROC, AUPRC and best F1 (with its threshold) when the labels hold both classes, else {} (undefined)."""
    s, y = _scores_and_labels(scores, labels)
    if not y.any() or y.all():
        return {}
    f1 = best_f1(s, y.astype(np.int64))
    return {"auroc": auroc(s, y.astype(np.int64)), "auprc": auprc(s, y.astype(np.int64)), "best_f1": f1.f1,
            "best_f1_threshold": f1.threshold, "num_anomalous": int(y.sum()), "num_labelled": int(y.size)}


@torch.no_grad()
def _window_table(model, dm, split: str, limit, batch_size) -> dict[str, torch.Tensor]:
    """One pass over `split` in eval_batches order: per window its reconstruction MSE (decoder mean at the
    posterior mean vs the input; normalised units, mean over steps and channels), label, start and series."""
    cols: dict[str, list[torch.Tensor]] = {"mse": [], "label": [], "start": [], "series": []}
    for batch in dm.eval_batches(split, batch_size, limit):
        mu, _ = model.encode(batch)
        rec = model.decode_mean(mu)
        cols["mse"].append((rec - batch["x"]).pow(2).mean((-2, -1)).cpu())
        for key in ("label", "start", "series"):
            cols[key].append(batch[key].cpu())
    return {k: torch.cat(v) for k, v in cols.items()}


def _history(dm, part, split: str) -> np.ndarray:
    """The raw values of part's series before part's first timestamp (the earlier splits' parts, in order)."""
    earlier = []
    for other in ("train", "val", "test"):
        if other == split:
            continue
        earlier += [p for p in dm.split_series(other) if p.series == part.series and p.offset < part.offset]
    earlier.sort(key=lambda p: p.offset)
    if not earlier:
        return np.zeros((0,) + part.values.shape[1:])
    return np.concatenate([p.values for p in earlier])


def _write_csv(path, header: list[str], rows) -> None:
    import csv
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _csv_number(v: float) -> str:
    return "" if v != v else repr(float(v))   # NaN (not scored) -> an empty cell


def series_evaluation(model, dm, split: str, metrics: dict, score: str = "neg_elbo", out_dir=None,
                      limit=None, batch_size: int | None = None) -> dict:
    """What evaluate() adds for time series (dm.kind == "series"), from its metrics' "_per_example" values.

    * mse: reconstruction MSE per window (normalised units, mean over steps and channels), averaged.
    * When the windows' labels hold both classes: auroc, auprc, best_f1 (+ threshold) of the per-window
      `score` (SCORES), under the names score, auroc, ... (best_f1 picks its threshold on these labels:
      optimistic).
    * Windowed data (NAB/CSV), when every window of the split was scored: per-timestamp scores
      (dm.timestamp_scores: each timestamp gets the score of the window ending at it) and, for each series
      with both classes, "<data>/<series>/auroc" and "/auprc", and the same for the rolling z-score baseline
      (window = data.window, over the series' raw values, history included) on the same timestamps:
      "<data>/<series>/baseline_auroc" and "/baseline_auprc".
    * out_dir: writes scores_<split>.csv (index, series, start, label, score, then every per-window value) and,
      for windowed data, timestamp_scores_<split>.csv (series, timestamp, value(s), label, score, baseline).
    """
    from pathlib import Path
    per = metrics.get("_per_example", {})
    if "neg_elbo" not in per:      # a model without a posterior: nothing to score
        return {}
    values = pick_score(per, score).double()
    with eval_mode(model):
        table = _window_table(model, dm, split, limit, batch_size)
    n = values.numel()
    if table["mse"].numel() != n:
        raise ValueError(f"{split}: {table['mse'].numel()} windows for {n} scores")
    out: dict = {"mse": float(table["mse"].mean())}
    found = classification_metrics(values, table["label"])
    if found:
        out["score"] = score
        out.update(found)
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        extra = [k for k in ("neg_elbo", "rec", "kl", "iw_nll") if k in per]
        cols = [per[k].double().tolist() for k in extra] + [table["mse"].tolist()]
        series, starts, labels = (table[k].tolist() for k in ("series", "start", "label"))
        score_list = values.tolist()
        rows = ([i, series[i], starts[i], labels[i], _csv_number(score_list[i])] + [_csv_number(c[i]) for c in cols]
                for i in range(n))
        _write_csv(out_dir / f"scores_{split}.csv", ["index", "series", "start", "label", "score"] + extra + ["mse"],
                   rows)
    if not getattr(dm, "windowed", False) or n != dm.num_examples(split):
        return out
    per_timestamp = dm.timestamp_scores(values, split)
    ts_rows = []
    for part, ts in zip(dm.split_series(split), per_timestamp):
        history = _history(dm, part, split)
        base = rolling_zscore_scores(np.concatenate([history, part.values]), int(dm.window))[len(history):]
        both = ~np.isnan(ts) & ~np.isnan(base)
        labels = np.where(both, part.labels, -1)
        model_m, base_m = classification_metrics(ts, labels), classification_metrics(base, labels)
        if model_m:
            key = f"{dm.name}/{part.name}"
            out.update({f"{key}/auroc": model_m["auroc"], f"{key}/auprc": model_m["auprc"],
                        f"{key}/baseline_auroc": base_m["auroc"], f"{key}/baseline_auprc": base_m["auprc"]})
        if out_dir is None:
            continue
        values_2d = np.asarray(part.values).reshape(len(part), -1)
        for j in range(len(part)):
            ts_rows.append([part.name, part.timestamps[j]] + [repr(float(v)) for v in values_2d[j]]
                           + [int(part.labels[j]), _csv_number(ts[j]), _csv_number(base[j])])
    if out_dir is not None:
        channels = list(getattr(dm, "channel_names", []) or [])
        value_cols = ["value"] if len(channels) <= 1 else [f"value_{c}" for c in channels]
        _write_csv(out_dir / f"timestamp_scores_{split}.csv",
                   ["series", "timestamp"] + value_cols + ["label", "score", "baseline"], ts_rows)
    return out
