"""Time-series evaluation: per-window and per-timestamp anomaly scores, their metrics and CSV files."""
from __future__ import annotations

from typing import TYPE_CHECKING


import numpy as np
import torch

from seqvae_cli.config.rules import one_of, value_error
from seqvae_cli.evaluation.baselines import rolling_zscore_scores
from seqvae_cli.evaluation.ranking import classification_metrics
from seqvae_cli.errors import SeqvaeError

if TYPE_CHECKING:   # evaluate.py calls this module
    from seqvae_cli.evaluation.evaluate import Evaluation

# ---------------------------------------------------------------------- scoring a time-series model

# Per-window anomaly scores (higher = more anomalous), all in nats per window, from evaluate()'s per-example
# values: neg_elbo = -ELBO (one posterior sample) | rec = -log p(x|z) at that sample (the reconstruction term)
# | iw_nll = the importance-weighted NLL (needs iw_samples > 0).
SCORES = ("neg_elbo", "rec", "iw_nll")


# `score`: eval's per-window anomaly score, and sample's anomaly_scores.png (visuals/series.py).
RULES = {"score": one_of(*SCORES)}


def pick_score(per_example: dict, score: str) -> torch.Tensor:
    """The per-example values [N] of `score` out of an Evaluation's per_example."""
    if score not in SCORES:
        raise value_error("score", score, RULES["score"])
    if score not in per_example:
        raise SeqvaeError(f"score={score} needs importance samples: give iw_samples > 0 (seqvae eval "
                          f"iw_samples=100), or use score=neg_elbo or score=rec")
    return per_example[score]


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


def series_evaluation(dm, split: str, result: "Evaluation", score: str = "neg_elbo", out_dir=None) -> dict:
    """What evaluate() adds for time series (dm.kind == "series"), from the per-example values and window columns
    (mse, label, start, series) of its one pass over the split.

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
    per, table = result.per_example, result.columns
    if "neg_elbo" not in per:      # a model without a posterior: nothing to score
        return {}
    values = pick_score(per, score).double()
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
    if not getattr(dm, "windowed", False) or n != dm.num_examples(split) or split in dm.cut_splits:
        return out   # per-timestamp scores need every window of the split
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
